"""Microsoft Graph v1.0: the calls the bot makes, each a method returning plain data."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from bot.errors import MicrosoftError
from bot.msapi import MicrosoftApi

#: Directory roles that may register applications whatever the tenant setting says.
APP_REGISTRATION_ROLES: dict[str, str] = {
    "cf1c38e5-3621-4004-a7cb-879624dced7c": "Application Developer",
    "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3": "Application Administrator",
    "158c047a-c907-4556-b7ef-446551a6b5f7": "Cloud Application Administrator",
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
}

#: Graph error codes that mean "this new object has not replicated yet".
NOT_YET_VISIBLE = ("Request_ResourceNotFound", "NoBackingApplicationObject", "ResourceNotFound")


def _not_yet_visible(error: MicrosoftError) -> bool:
    text = f"{error.code} {error}"
    return error.status in (400, 404) and any(code in text for code in NOT_YET_VISIBLE)


class GraphClient(MicrosoftApi):
    service = "Microsoft Graph"
    metric_label = "graph"

    #: How long to wait for a just-created object to become visible.
    replication_budget = 60.0

    def organization_name(self) -> str | None:
        orgs = self.get_json("/v1.0/organization").get("value", [])
        return str(orgs[0].get("displayName")) if orgs else None

    # -- rights ------------------------------------------------------------------------------

    def allowed_to_create_apps(self) -> bool | None:
        """The tenant setting "Users can register applications"; None when it can't be read."""
        try:
            policy = self.get_json("/v1.0/policies/authorizationPolicy")
        except MicrosoftError as exc:
            if exc.status in (401, 403):
                return None
            raise
        if isinstance(policy.get("value"), list):  # some tenants answer with a collection
            policy = policy["value"][0] if policy["value"] else {}
        permissions = policy.get("defaultUserRolePermissions") or {}
        value = permissions.get("allowedToCreateApps")
        return bool(value) if value is not None else None

    def app_registration_roles(self) -> list[str]:
        """Names of the signed-in user's directory roles that allow registering apps."""
        members = self.paged("/v1.0/me/transitiveMemberOf", "@odata.nextLink")
        names = []
        for item in members:
            template = str(item.get("roleTemplateId") or "").lower()
            if template in APP_REGISTRATION_ROLES:
                names.append(APP_REGISTRATION_ROLES[template])
        return sorted(set(names))

    # -- applications ------------------------------------------------------------------------

    def upsert_application(
        self, unique_name: str, display_name: str, description: str | None
    ) -> dict[str, Any]:
        """Create the application keyed by `unique_name`, or return it if this key exists."""
        body: dict[str, Any] = {"displayName": display_name, "signInAudience": "AzureADMyOrg"}
        if description:
            body["description"] = description[:1024]
        path = f"/v1.0/applications(uniqueName='{quote(unique_name, safe='')}')"
        response = self.request("PATCH", path, json=body, headers={"Prefer": "create-if-missing"})
        if response.status_code == 201 and response.content:
            return dict(response.json())
        return dict(self._retry_visible(lambda: self.get_json(path)))

    def find_application(self, unique_name: str) -> dict[str, Any] | None:
        path = f"/v1.0/applications(uniqueName='{quote(unique_name, safe='')}')"
        try:
            return dict(self.get_json(path))
        except MicrosoftError as exc:
            if exc.status == 404:
                return None
            raise

    def get_application(self, object_id: str) -> dict[str, Any]:
        return dict(self.get_json(f"/v1.0/applications/{object_id}"))

    def delete_application(self, object_id: str) -> None:
        try:
            self.request("DELETE", f"/v1.0/applications/{object_id}")
        except MicrosoftError as exc:
            if exc.status != 404:
                raise

    def ensure_service_principal(self, app_id: str) -> dict[str, Any]:
        """The application's service principal, created if missing (waits out replication)."""

        def create() -> dict[str, Any]:
            # Create first (the usual case: a fresh application); a 409 means it exists.
            try:
                return dict(
                    self.request("POST", "/v1.0/servicePrincipals", json={"appId": app_id}).json()
                )
            except MicrosoftError as exc:
                if exc.status != 409:
                    raise
            existing = self.get_json(
                "/v1.0/servicePrincipals", params={"$filter": f"appId eq '{app_id}'"}
            ).get("value", [])
            if not existing:
                raise MicrosoftError(
                    self.service,
                    404,
                    "Request_ResourceNotFound",
                    "service principal not visible yet",
                )
            return dict(existing[0])

        return self._retry_visible(create)

    def add_password(self, object_id: str, display_name: str, end: datetime) -> dict[str, Any]:
        body = {
            "passwordCredential": {
                "displayName": display_name,
                "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        }
        return self._retry_visible(
            lambda: dict(
                self.request(
                    "POST", f"/v1.0/applications/{object_id}/addPassword", json=body
                ).json()
            )
        )

    def remove_password(self, object_id: str, key_id: str) -> None:
        try:
            self.request(
                "POST", f"/v1.0/applications/{object_id}/removePassword", json={"keyId": key_id}
            )
        except MicrosoftError as exc:
            if exc.status == 404 or "No password credential" in str(exc):
                return
            raise

    def find_by_app_id(self, app_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.get_json(f"/v1.0/applications(appId='{quote(app_id, safe='')}')"))
        except MicrosoftError as exc:
            if exc.status == 404:
                return None
            raise

    def passwords(self, object_id: str) -> list[dict[str, Any]]:
        app = self._retry_visible(lambda: self.get_application(object_id))
        return [dict(p) for p in app.get("passwordCredentials") or []]

    def password_key_ids(self, object_id: str) -> list[str]:
        app = self._retry_visible(lambda: self.get_application(object_id))
        return [str(p.get("keyId")) for p in app.get("passwordCredentials") or []]

    # -- replication -------------------------------------------------------------------------

    def _retry_visible(self, call: Callable[[], Any]) -> Any:
        """Retry `call` while Graph says a just-created object does not exist yet."""
        deadline = time.monotonic() + self.replication_budget
        delay = 0.5
        while True:
            try:
                return call()
            except MicrosoftError as exc:
                if not _not_yet_visible(exc) or time.monotonic() + delay > deadline:
                    raise
            self._sleep(delay)
            delay = min(delay * 2, 8.0)
