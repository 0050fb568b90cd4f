"""The layers, read from the source: who may import whom, no import circle, SQL only in storage.

    bot.core  ◀─  storage, bot.clients, bot.slack  ◀─  bot.flows  ◀─  bot.ops, handlers
              ◀─  the process files (bot.__main__, bot.cli, bot.runtime, bot.server, bot.app,
                  bot.scheduler) on top

Imports are read with `ast` (every import that runs: at module level or inside a function);
an import under `if TYPE_CHECKING:` never runs and is allowed anywhere. The checks are plain
functions over an import map, so the tests at the bottom feed them deliberate violations.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "handlers", "storage")

#: What each layer may import (besides itself). Process files may import anything.
ALLOWED: dict[str, tuple[str, ...]] = {
    "bot.core": (),
    "storage": ("bot.core",),
    "bot.clients": ("bot.core",),
    "bot.slack": ("bot.core",),
    "bot.flows": ("bot.core", "storage", "bot.clients", "bot.slack"),
    "bot.ops": ("bot.core", "storage", "bot.clients", "bot.slack", "bot.flows"),
    "handlers": ("bot.core", "bot.slack", "bot.flows"),
}
#: The one module that builds the flows; no flow may import it.
COMPOSITION_ROOT = "bot.flows.root"
#: SQL text: a statement keyword followed later by the word that makes it a statement.
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET|WHERE)\b", re.S)


def modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the packages under `root`."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import that runs, skipping TYPE_CHECKING blocks."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_map(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module → the project modules it imports at run time (`from a import b` names `a.b`
    when that is a module, else `a`)."""
    known = modules(root, packages)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for module, names in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] not in packages:
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
            targets.update(subs)
            if len(subs) < len(names) or not names:
                # names from the module itself (its deepest part that is a module)
                parts = module.split(".")
                deepest = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
                targets.update([m for m in deepest if m in known][:1])
        targets.discard(name)
        graph[name] = targets
    return graph


def layer_of(module: str) -> str | None:
    """The layer a module belongs to; None for the process files (they sit on top)."""
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def _is_package_init(module: str) -> bool:
    return module in ("bot", "handlers", "storage")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a layer to one it may not use, and every flow importing the root."""
    problems: list[str] = []
    for module, targets in sorted(graph.items()):
        layer = layer_of(module)
        for target in sorted(targets):
            if _is_package_init(target):
                continue
            if layer is not None:
                other = layer_of(target)
                if other != layer and other not in ALLOWED[layer]:
                    problems.append(f"{module} ({layer}) imports {target} ({other or 'process'})")
            if layer == "bot.flows" and module != COMPOSITION_ROOT and target == COMPOSITION_ROOT:
                problems.append(f"{module} imports the composition root {target}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (one path per strongly connected group of modules, Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def sql_literals(source: str) -> list[str]:
    """String literals of `source` (f-string parts included) that read as SQL statements."""
    found: list[str] = []
    tree = ast.parse(source)
    parts = {id(p) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for p in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            if SQL.search(node.value):
                found.append(node.value.strip()[:80])
        elif isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
            )
            if SQL.search(text):
                found.append(text.strip()[:80])
    return found


def sql_outside_storage(root: Path, packages: Iterable[str] = PACKAGES) -> list[str]:
    return [
        f"{name}: {literal}"
        for name, path in modules(root, packages).items()
        if layer_of(name) != "storage"
        for literal in sql_literals(path.read_text())
    ]


# -- the project -------------------------------------------------------------------------------


def test_every_import_respects_the_layers() -> None:
    assert layer_violations(import_map(ROOT)) == []


def test_no_import_circle() -> None:
    assert cycles(import_map(ROOT)) == []


def test_no_sql_outside_storage() -> None:
    assert sql_outside_storage(ROOT) == []


def test_every_folder_is_a_package() -> None:
    for package in PACKAGES:
        for folder in [ROOT / package, *(ROOT / package).rglob("*")]:
            if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
                assert (folder / "__init__.py").exists(), f"{folder} has no __init__.py"


def test_the_map_sees_the_known_edges() -> None:
    graph = import_map(ROOT)
    assert "bot.core.errors" in graph["storage.db"]
    assert "handlers.commands" in graph["bot.app"]
    assert all(target.split(".")[0] in PACKAGES for targets in graph.values() for target in targets)


# -- the checks bite -----------------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_lower_layer_importing_a_higher_one_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "bot/__init__.py": "",
            "bot/core/__init__.py": "",
            "bot/core/config.py": "from storage import queries\n",
            "bot/clients/__init__.py": "",
            "bot/clients/graph.py": "def f():\n    from bot.slack import blocks\n",
            "bot/slack/__init__.py": "",
            "bot/slack/blocks.py": "import bot.core.config\n",
            "bot/flows/__init__.py": "",
            "bot/flows/root.py": "from bot.flows import create\n",
            "bot/flows/create.py": "from bot.flows.root import build\n",
            "handlers/__init__.py": "",
            "handlers/commands.py": "from bot.clients.graph import f\nfrom storage.queries import x\n",
            "storage/__init__.py": "",
            "storage/queries.py": "from bot.flows import create\n",
        },
    )
    problems = layer_violations(import_map(root))
    assert "bot.core.config (bot.core) imports storage.queries (storage)" in problems
    assert "bot.clients.graph (bot.clients) imports bot.slack.blocks (bot.slack)" in problems
    assert "bot.flows.create imports the composition root bot.flows.root" in problems
    assert "handlers.commands (handlers) imports bot.clients.graph (bot.clients)" in problems
    assert "handlers.commands (handlers) imports storage.queries (storage)" in problems
    assert "storage.queries (storage) imports bot.flows.create (bot.flows)" in problems
    assert not [p for p in problems if p.startswith("bot.slack.blocks")]  # core is allowed
    assert not [p for p in problems if p.startswith("bot.flows.root")]  # its own layer


def test_a_type_checking_import_is_allowed(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "bot/__init__.py": "",
            "bot/core/__init__.py": "",
            "bot/core/config.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from storage.db import Store\n"
                "else:\n    from storage import queries\n"
            ),
            "storage/__init__.py": "",
            "storage/db.py": "",
            "storage/queries.py": "",
        },
    )
    graph = import_map(root)
    assert graph["bot.core.config"] == {"storage.queries"}
    assert layer_violations(graph) == ["bot.core.config (bot.core) imports storage.queries (storage)"]


def test_an_import_circle_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "bot/__init__.py": "",
            "bot/flows/__init__.py": "",
            "bot/flows/a.py": "from bot.flows import b\n",
            "bot/flows/b.py": "def later():\n    import bot.flows.c\n",
            "bot/flows/c.py": "from bot.flows.a import x\n",
            "bot/flows/d.py": "from bot.flows import a\n",
        },
    )
    assert cycles(import_map(root)) == [["bot.flows.a", "bot.flows.b", "bot.flows.c"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_sql_outside_storage_is_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "bot/__init__.py": "",
            "bot/flows/__init__.py": "",
            "bot/flows/expiry.py": (
                'ROWS = "SELECT id FROM secrets"\n'
                'def f(t):\n    return f"UPDATE {t} SET x = 1"\n'
                'SAFE = "Select a subscription from the list"\n'
            ),
            "storage/__init__.py": "",
            "storage/queries.py": 'Q = "DELETE FROM flows WHERE id = ?"\n',
        },
    )
    assert sql_outside_storage(root) == [
        "bot.flows.expiry: SELECT id FROM secrets",
        "bot.flows.expiry: UPDATE {} SET x = 1",
    ]
