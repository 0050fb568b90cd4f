"""What a least-privilege service account may do: the Azure actions and data actions VBAzure
needs for the account's purposes, as one custom role's permission block.

Two sources, in order of preference:

- the appliance itself (`POST …/exportPermissionsByApp`), which answers with the JSON file
  VBAzure's "Export Permissions" button saves — a role-definition-like document
  (`{"permissions": [{"actions", "notActions", "dataActions", "notDataActions"}]}`, or the
  Azure CLI / PowerShell spelling with `Actions`, `DataActions`, …); `from_export` reads it;
- without an appliance, the list the bot ships (`vbazure_permissions.json`, which states its
  source and the VBAzure version it follows); `shipped` reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from bot.core.errors import PermissionListError

#: Most actions plus data actions one role definition may hold before ARM refuses it as too
#: large is far above what VBAzure needs; a document past this is refused as not a role.
MAX_ENTRIES = 5000


@dataclass(frozen=True)
class Permissions:
    """One permission block: sorted, de-duplicated (case-insensitively, first spelling kept)."""

    actions: tuple[str, ...]
    data_actions: tuple[str, ...]
    source: str

    def block(self) -> dict[str, list[str]]:
        """The `permissions[0]` of an ARM role definition."""
        return {
            "actions": list(self.actions),
            "notActions": [],
            "dataActions": list(self.data_actions),
            "notDataActions": [],
        }

    def union(self, other: Permissions) -> Permissions:
        return Permissions(
            _unique([*self.actions, *other.actions]),
            _unique([*self.data_actions, *other.data_actions]),
            self.source if self.source == other.source else f"{self.source}; {other.source}",
        )


def _unique(items: list[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for item in items:
        seen.setdefault(item.lower(), item)
    return tuple(sorted(seen.values(), key=str.lower))


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PermissionListError(f"the permission list's {what} is not a list of action names")
    return [v.strip() for v in value]


def _field(doc: dict[str, Any], *names: str) -> Any:
    lowered = {k.lower(): v for k, v in doc.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def from_export(document: Any, source: str = "the Veeam appliance") -> Permissions:
    """Read VBAzure's exported permission file (parsed JSON). Refuses anything that is not
    an allow-list: `notActions` / `notDataActions` would need a role the bot cannot vouch for."""
    if isinstance(document, dict) and isinstance(document.get("properties"), dict):
        document = document["properties"]
    if not isinstance(document, dict):
        raise PermissionListError("the permission list is not a JSON object")
    blocks = _field(document, "permissions")
    if blocks is None:
        blocks = [document]
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        raise PermissionListError("the permission list holds no permission block")
    actions: list[str] = []
    data_actions: list[str] = []
    for block in blocks:
        actions += _strings(_field(block, "actions"), "actions")
        data_actions += _strings(_field(block, "dataActions"), "dataActions")
        denied = _strings(_field(block, "notActions"), "notActions") + _strings(
            _field(block, "notDataActions"), "notDataActions"
        )
        if denied:
            raise PermissionListError(
                "the permission list excludes actions (notActions / notDataActions), which a "
                "least-privilege role made from it would not honour"
            )
    if not actions and not data_actions:
        raise PermissionListError("the permission list names no action")
    if len(actions) + len(data_actions) > MAX_ENTRIES:
        raise PermissionListError("the permission list is implausibly long")
    return Permissions(_unique(actions), _unique(data_actions), source)


@cache
def _shipped_document() -> dict[str, Any]:
    text = resources.files("bot.core").joinpath("vbazure_permissions.json").read_text("utf-8")
    doc = json.loads(text)
    assert isinstance(doc, dict)
    return doc


def shipped_version() -> str:
    return str(_shipped_document().get("vbazure_version", "?"))


def shipped(purposes: tuple[str, ...] | list[str]) -> Permissions:
    """The shipped list's union over `purposes`; raises for a purpose it does not cover."""
    doc = _shipped_document()
    table = doc["purposes"]
    missing = [p for p in purposes if p not in table]
    if missing:
        raise PermissionListError(
            "the bot's permission list (VBAzure "
            + shipped_version()
            + ") does not cover the purposes "
            + ", ".join(missing)
            + "; configure the Veeam appliance (VEEAM_URL) so it can say what they need"
        )
    source = f"the bot's permission list for VBAzure {shipped_version()}"
    result = Permissions((), (), source)
    for purpose in purposes:
        entry = table[purpose]
        result = result.union(
            Permissions(
                _unique(_strings(entry.get("actions"), "actions")),
                _unique(_strings(entry.get("dataActions"), "dataActions")),
                source,
            )
        )
    return result
