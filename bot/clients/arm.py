"""Azure Resource Manager: subscriptions, the caller's permissions, role assignments, and
the custom role definitions of least-privilege accounts.

Custom roles (Microsoft's "Azure custom roles" and the REST reference "Role Definitions -
Create Or Update", api-version 2022-04-01): `PUT {scope}/providers/Microsoft.Authorization/
roleDefinitions/{guid}` with `roleName` (unique in the tenant), `type: CustomRole`,
`permissions` and `assignableScopes`. The same GUID with the same body is an update, so a
retried creation with a stable GUID is idempotent; another GUID with a taken name is refused
with 409 `RoleDefinitionWithSameNameExists`. A new definition replicates for a while: an
assignment that names it can meet 400 `RoleDefinitionDoesNotExist`, retried like
`PrincipalNotFound`. A definition with assignments cannot be deleted, so assignments go first.

Scopes: the methods that take a `subscription` take either a subscription id or a full
scope that starts with `/` — a management group's is `/providers/Microsoft.Management/
managementGroups/{id}` ("Azure management groups": role assignments there are inherited by
every subscription in the group, and by the groups and subscriptions below it).
Management groups (REST "Management Groups", api-version 2021-04-01): `GET /providers/
Microsoft.Management/managementGroups` lists those the caller can see; `GET …/{id}?$expand=
children` answers `properties.children[]` with `type` `/subscriptions` or
`Microsoft.Management/managementGroups`, `name` and `displayName`.
"""

from __future__ import annotations

import re
import time
import uuid
from functools import lru_cache
from typing import Any

from bot.clients.msapi import MicrosoftApi
from bot.core.errors import MicrosoftError

ROLE_ASSIGNMENT_WRITE = "Microsoft.Authorization/roleAssignments/write"
ROLE_DEFINITION_WRITE = "Microsoft.Authorization/roleDefinitions/write"
SUBSCRIPTIONS_API = "2022-12-01"
AUTHORIZATION_API = "2022-04-01"
MANAGEMENT_GROUPS_API = "2021-04-01"
GROUP_PREFIX = "/providers/Microsoft.Management/managementGroups/"
#: A management group's child of this `type` is a subscription.
CHILD_SUBSCRIPTION = "/subscriptions"
CHILD_GROUP = "Microsoft.Management/managementGroups"


def group_scope(group_id: str) -> str:
    return f"{GROUP_PREFIX}{group_id}"


def scope_path(target: str) -> str:
    """The ARM scope of `target`: a full scope (it starts with `/`) or a subscription id."""
    return target if target.startswith("/") else f"/subscriptions/{target}"


def scope_label(target: str) -> str:
    """`target` in words: "management group `x`" or "subscription `x`"."""
    if target.lower().startswith(GROUP_PREFIX.lower()):
        return f"management group `{target[len(GROUP_PREFIX):]}`"
    return f"subscription `{target}`"

#: Names role assignments deterministically, so a retried creation reuses the same names.
ASSIGNMENT_NAMESPACE = uuid.UUID("5d1f0f64-0f8e-4d0c-9a43-7a1b7e0c9a11")
#: Names custom role definitions deterministically (per creation and set of subscriptions).
DEFINITION_NAMESPACE = uuid.UUID("0c6b3f5e-7d64-4c1e-8a63-2f0f6a9d51c4")
#: Answers that mean "not replicated yet": retried within `principal_budget`.
_REPLICATION_CODES = frozenset({"PrincipalNotFound", "RoleDefinitionDoesNotExist"})


@lru_cache(maxsize=512)
def _pattern(action: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(action).replace(r"\*", ".*") + "$", re.IGNORECASE)


def action_allowed(permissions: list[dict[str, Any]], action: str) -> bool:
    """ARM's rule: some entry's `actions` match and that entry's `notActions` do not."""
    for entry in permissions:
        if any(_pattern(a).match(action) for a in entry.get("actions") or []) and not any(
            _pattern(n).match(action) for n in entry.get("notActions") or []
        ):
            return True
    return False


def assignment_name(key: str, subscription: str, role_definition_id: str) -> str:
    return str(
        uuid.uuid5(
            ASSIGNMENT_NAMESPACE, f"{key}/{subscription.lower()}/{role_definition_id.lower()}"
        )
    )


def role_definition_name(key: str, subscriptions: list[str]) -> str:
    """The stable GUID of the custom role a creation (`key`) makes for its subscriptions."""
    scope = ",".join(sorted(s.lower() for s in subscriptions))
    return str(uuid.uuid5(DEFINITION_NAMESPACE, f"{key}/{scope}"))


class ArmClient(MicrosoftApi):
    service = "Azure Resource Manager"
    metric_label = "arm"

    #: How long to retry PrincipalNotFound for a just-created service principal.
    principal_budget = 180.0

    def subscriptions(self) -> list[dict[str, Any]]:
        return self.paged("/subscriptions", "nextLink", params={"api-version": SUBSCRIPTIONS_API})

    def tenants(self) -> list[dict[str, Any]]:
        """The tenants the signed-in account can reach (ARM "Tenants - List": `tenantId`,
        `displayName`, `defaultDomain`, `domains`, `tenantCategory`), whichever tenant the
        token is for."""
        return self.paged("/tenants", "nextLink", params={"api-version": SUBSCRIPTIONS_API})

    def management_groups(self) -> list[dict[str, Any]]:
        """The management groups the caller can see: `name` (the id) and
        `properties.displayName`."""
        return self.paged(
            GROUP_PREFIX.rstrip("/"), "nextLink", params={"api-version": MANAGEMENT_GROUPS_API}
        )

    def management_group(self, group_id: str) -> dict[str, Any]:
        """One group with its direct children (`$recurse=false`): `{"id", "name",
        "subscriptions": [{"id", "name"}], "groups": [{"id", "name"}]}`. Raises
        `MicrosoftError` (403 `AuthorizationFailed` for a group the caller cannot read —
        ARM does not say whether it exists)."""
        body = self.get_json(
            group_scope(group_id),
            params={
                "api-version": MANAGEMENT_GROUPS_API,
                "$expand": "children",
                "$recurse": "false",
            },
        )
        props = (body or {}).get("properties") or {}
        subscriptions: list[dict[str, Any]] = []
        groups: list[dict[str, Any]] = []
        for child in props.get("children") or []:
            kind = str(child.get("type") or "")
            entry = {"id": str(child.get("name") or ""), "name": child.get("displayName")}
            if kind.lower() == CHILD_SUBSCRIPTION:
                entry["id"] = entry["id"].lower()
                subscriptions.append(entry)
            elif kind.lower() == CHILD_GROUP.lower():
                groups.append(entry)
        return {
            "id": str(body.get("name") or group_id),
            "name": props.get("displayName"),
            "subscriptions": subscriptions,
            "groups": groups,
        }

    def permissions(self, subscription: str) -> list[dict[str, Any]]:
        return self.paged(
            f"{scope_path(subscription)}/providers/Microsoft.Authorization/permissions",
            "nextLink",
            params={"api-version": AUTHORIZATION_API},
        )

    def can_assign_roles(self, subscription: str) -> bool:
        return action_allowed(self.permissions(subscription), ROLE_ASSIGNMENT_WRITE)

    def allowed(self, subscription: str, actions: list[str]) -> dict[str, bool]:
        """Whether the caller may perform each of `actions` on the subscription."""
        granted = self.permissions(subscription)
        return {action: action_allowed(granted, action) for action in actions}

    def put_role_definition(
        self,
        subscription: str,
        definition_id: str,
        *,
        role_name: str,
        description: str,
        permissions: dict[str, list[str]],
        assignable_subscriptions: list[str],
    ) -> str:
        """Create (201) or update (200) a custom role at `/subscriptions/{subscription}`.
        Returns "created" or "updated"; raises `MicrosoftError` (e.g. 409
        `RoleDefinitionWithSameNameExists`, 403 `AuthorizationFailed`)."""
        scope = scope_path(subscription)
        body = {
            "properties": {
                "roleName": role_name,
                "description": description,
                "type": "CustomRole",
                "permissions": [permissions],
                "assignableScopes": [scope_path(s) for s in assignable_subscriptions],
            }
        }
        response = self.request(
            "PUT",
            f"{scope}/providers/Microsoft.Authorization/roleDefinitions/{definition_id}",
            json=body,
            params={"api-version": AUTHORIZATION_API},
        )
        return "created" if response.status_code == 201 else "updated"

    def get_role_definition(self, subscription: str, definition_id: str) -> dict[str, Any] | None:
        path = (
            f"{scope_path(subscription)}/providers/Microsoft.Authorization/roleDefinitions/"
            f"{definition_id}"
        )
        try:
            body = self.get_json(path, params={"api-version": AUTHORIZATION_API})
        except MicrosoftError as exc:
            if exc.status == 404:
                return None
            raise
        return body if isinstance(body, dict) else None

    def delete_role_definition(self, subscription: str, definition_id: str) -> None:
        """Delete a custom role (gone already is fine). Its assignments must go first."""
        path = (
            f"{scope_path(subscription)}/providers/Microsoft.Authorization/roleDefinitions/"
            f"{definition_id}"
        )
        try:
            self.request("DELETE", path, params={"api-version": AUTHORIZATION_API})
        except MicrosoftError as exc:
            if exc.status != 404:
                raise

    def assign_role(
        self, subscription: str, role_definition_id: str, principal_id: str, name: str
    ) -> str:
        """Assign the role; returns "created", "exists". Waits out the replication of a new
        principal or a new custom role definition. `subscription` may be a full scope."""
        scope = scope_path(subscription)
        # at a management group, the definition is named by its tenant-wide id
        definition_scope = "" if subscription.startswith("/") else scope
        body = {
            "properties": {
                "roleDefinitionId": (
                    f"{definition_scope}/providers/Microsoft.Authorization/roleDefinitions/"
                    f"{role_definition_id}"
                ),
                "principalId": principal_id,
                "principalType": "ServicePrincipal",
            }
        }
        path = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        deadline = time.monotonic() + self.principal_budget
        delay = 1.0
        while True:
            try:
                self.request("PUT", path, json=body, params={"api-version": AUTHORIZATION_API})
                return "created"
            except MicrosoftError as exc:
                if exc.code == "RoleAssignmentExists":
                    return "exists"
                if exc.code not in _REPLICATION_CODES or time.monotonic() + delay > deadline:
                    raise
            self._sleep(delay)
            delay = min(delay * 1.5, 10.0)

    def assignments_of(self, subscription: str, principal_id: str) -> list[dict[str, Any]]:
        """The role assignments of one principal that apply on the subscription
        (`$filter=principalId eq '…'`: at, above or below the scope). Needs
        `Microsoft.Authorization/roleAssignments/read` there; without it ARM answers 403
        `AuthorizationFailed`, raised as a `MicrosoftError`."""
        return self.paged(
            f"{scope_path(subscription)}/providers/Microsoft.Authorization/roleAssignments",
            "nextLink",
            params={
                "api-version": AUTHORIZATION_API,
                "$filter": f"principalId eq '{principal_id}'",
            },
        )

    def delete_role_assignment(self, subscription: str, name: str) -> None:
        path = f"{scope_path(subscription)}/providers/Microsoft.Authorization/roleAssignments/{name}"
        try:
            self.request("DELETE", path, params={"api-version": AUTHORIZATION_API})
        except MicrosoftError as exc:
            if exc.status != 404:
                raise
