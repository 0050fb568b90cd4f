"""Microsoft Graph v1.0: the calls the bot makes, each a method returning plain data."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from bot.clients.msapi import MicrosoftApi
from bot.core.errors import MicrosoftError

#: Built-in directory roles that may register applications whatever the tenant setting says:
#: those holding microsoft.directory/applications/create or createAsOwner (Global
#: Administrator through applications/allProperties/allTasks), per Microsoft's Entra
#: built-in roles reference.
APP_REGISTRATION_ROLES: dict[str, str] = {
    "cf1c38e5-3621-4004-a7cb-879624dced7c": "Application Developer",
    "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3": "Application Administrator",
    "158c047a-c907-4556-b7ef-446551a6b5f7": "Cloud Application Administrator",
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
    "8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2": "Hybrid Identity Administrator",
}

#: Graph error codes that mean "this new object has not replicated yet".
NOT_YET_VISIBLE = ("Request_ResourceNotFound", "NoBackingApplicationObject", "ResourceNotFound")


#: The tenant default app management policy's id.
DEFAULT_APP_POLICY_ID = "00000000-0000-0000-0000-000000000000"

_DURATION = re.compile(
    r"^P(?:(?P<y>\d+(?:\.\d+)?)Y)?(?:(?P<mo>\d+(?:\.\d+)?)M)?(?:(?P<w>\d+(?:\.\d+)?)W)?"
    r"(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<mi>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def iso_duration(value: object) -> timedelta | None:
    """An ISO-8601 duration (`P90D`, `P4DT12H30M5S`, `P1Y`) as a timedelta; years count 365
    days and months 30, so a cap is never overestimated by more than a day."""
    found = _DURATION.match(str(value or ""))
    if not found or not any(found.groupdict().values()):
        return None
    n = {k: float(v) if v else 0.0 for k, v in found.groupdict().items()}
    return timedelta(
        days=n["y"] * 365 + n["mo"] * 30 + n["w"] * 7 + n["d"],
        hours=n["h"],
        minutes=n["mi"],
        seconds=n["s"],
    )


def _not_yet_visible(error: MicrosoftError) -> bool:
    text = f"{error.code} {error}"
    return error.status in (400, 404) and any(code in text for code in NOT_YET_VISIBLE)


#: What creating a service principal answers while its application is not replicated yet;
#: Azure CLI's create_service_principal_for_rbac retries the same three (the 403 form too).
_SP_NOT_YET = (" does not reference ", " does not exist ", "must in the local tenant")


def _principal_not_yet_possible(error: MicrosoftError) -> bool:
    text = str(error)
    return _not_yet_visible(error) or (
        error.status in (400, 403, 404) and any(part in text for part in _SP_NOT_YET)
    )


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

    def password_max_lifetime(self, policy: str | None = None) -> timedelta | None:
        """The longest client secret an app management policy allows: the policy named (a
        custom one assigned to the application) or the tenant default. None when there is no
        such cap or the signed-in account may not read the policy (403: privileged roles
        only)."""
        return self._max_lifetime(policy, "passwordCredentials", "passwordLifetime")

    def _max_lifetime(
        self, policy: str | None, credentials: str, restriction: str
    ) -> timedelta | None:
        """The `restriction`'s `maxLifetime` among the policy's `credentials` restrictions."""
        if policy and policy != DEFAULT_APP_POLICY_ID:
            path, key = f"/v1.0/policies/appManagementPolicies/{policy}", "restrictions"
        else:
            path, key = "/v1.0/policies/defaultAppManagementPolicy", "applicationRestrictions"
        try:
            found = self.get_json(path)
        except MicrosoftError as exc:
            if exc.status in (400, 401, 403, 404):
                return None
            raise
        if not isinstance(found, dict) or found.get("isEnabled") is False:
            return None
        for item in (found.get(key) or {}).get(credentials) or []:
            if (
                isinstance(item, dict)
                and item.get("restrictionType") == restriction
                and item.get("state", "enabled") == "enabled"
            ):
                return iso_duration(item.get("maxLifetime"))
        return None

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

        return self._retry_visible(create, _principal_not_yet_possible)

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

    # -- certificates (keyCredentials) ----------------------------------------------------

    def key_max_lifetime(self, policy: str | None = None) -> timedelta | None:
        """The longest certificate an app management policy allows (`keyCredentials`
        restriction `asymmetricKeyLifetime`); None when there is no cap or it cannot be read."""
        return self._max_lifetime(policy, "keyCredentials", "asymmetricKeyLifetime")

    def set_first_key(self, object_id: str, credential: dict[str, Any]) -> None:
        """Put the application's first certificate on it: `PATCH keyCredentials` replaces the
        whole collection (so a certificate a crash left behind unknown goes too). `addKey`
        cannot do this: it needs a proof signed by a certificate the application already has."""
        self._retry_visible(
            lambda: self.request(
                "PATCH", f"/v1.0/applications/{object_id}", json={"keyCredentials": [credential]}
            )
        )

    def add_key(self, object_id: str, credential: dict[str, Any], proof: str) -> dict[str, Any]:
        """Add a certificate beside the current ones; `proof` is signed by a current one."""
        body = {"keyCredential": credential, "passwordCredential": None, "proof": proof}
        return dict(
            self.request("POST", f"/v1.0/applications/{object_id}/addKey", json=body).json()
        )

    def remove_key(self, object_id: str, key_id: str, proof: str) -> None:
        try:
            self.request(
                "POST",
                f"/v1.0/applications/{object_id}/removeKey",
                json={"keyId": key_id, "proof": proof},
            )
        except MicrosoftError as exc:
            if exc.status == 404 or "No key credential" in str(exc):
                return
            raise

    def key_credentials(self, object_id: str) -> list[dict[str, Any]]:
        app = self._retry_visible(lambda: self.get_application(object_id))
        return [dict(k) for k in app.get("keyCredentials") or []]

    # -- replication -------------------------------------------------------------------------

    def _retry_visible(
        self,
        call: Callable[[], Any],
        not_yet: Callable[[MicrosoftError], bool] = _not_yet_visible,
    ) -> Any:
        """Retry `call` while Graph says a just-created object does not exist yet."""
        deadline = time.monotonic() + self.replication_budget
        delay = 0.5
        while True:
            try:
                return call()
            except MicrosoftError as exc:
                if not not_yet(exc) or time.monotonic() + delay > deadline:
                    raise
            self._sleep(delay)
            delay = min(delay * 2, 8.0)
