"""Static checks of the production Dockerfile (no Docker engine is needed to run them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return result


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text(encoding="utf-8"))


def _stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            stages.append([])
        assert stages, "instruction before the first FROM"
        stages[-1].append((keyword, args))
    return stages


def _args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def test_is_multi_stage_with_pinned_bases(instructions: list[tuple[str, str]]) -> None:
    bases = [args.split()[0] for kw, args in instructions if kw == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        name, _, tag = base.partition(":")
        assert tag, f"{base} has no tag"
        assert tag != "latest", f"{base} is not pinned"
        assert re.search(r"\d", tag), f"{base} tag carries no version"
        assert name == "python"


def test_final_stage_runs_as_non_root(instructions: list[tuple[str, str]]) -> None:
    final = _stages(instructions)[-1]
    users = _args(final, "USER")
    assert users, "final stage sets no USER"
    assert users[-1] not in {"root", "0", "0:0", "root:root"}
    assert users[-1] == "veeam"
    assert any("10001" in run for run in _args(final, "RUN"))


def test_final_stage_copies_only_the_venv(instructions: list[tuple[str, str]]) -> None:
    final = _stages(instructions)[-1]
    copies = _args(final, "COPY")
    assert copies
    assert all(c.startswith("--from=") and "/opt/venv" in c for c in copies)
    # No compilers or package managers' build deps in the runtime image.
    for run in _args(final, "RUN"):
        assert "apt-get install" not in run
        assert "pip install" not in run


def test_healthcheck_hits_healthz(instructions: list[tuple[str, str]]) -> None:
    final = _stages(instructions)[-1]
    checks = _args(final, "HEALTHCHECK")
    assert len(checks) == 1
    assert "/healthz" in checks[0]
    assert "127.0.0.1" in checks[0]
    assert "curl" not in checks[0] and "wget" not in checks[0]


def test_volume_env_and_port(instructions: list[tuple[str, str]]) -> None:
    final = _stages(instructions)[-1]
    volumes = " ".join(_args(final, "VOLUME"))
    assert "/data" in volumes
    env = " ".join(_args(final, "ENV"))
    assert "VEEAM_SA_DB=/data/veeam-sa.db" in env
    assert "PORT=3000" in env
    assert _args(final, "EXPOSE") == ["3000"]
    assert _args(final, "STOPSIGNAL") == ["SIGTERM"]


def test_entrypoint_is_the_console_script(instructions: list[tuple[str, str]]) -> None:
    final = _stages(instructions)[-1]
    entrypoints = _args(final, "ENTRYPOINT")
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["veeam-sa-bot"]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^veeam-sa-bot\s*=\s*"bot\.cli:main"', pyproject, re.M)


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", ".env", "*.db"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
