"""Service accounts on the VBAzure appliance: save, update, list and read them
(`VBAzureClient`), over the transport of `bot.clients.vbazure.transport`."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from bot.clients.vbazure.problems import _errors_text, _json, _problem_fields
from bot.clients.vbazure.transport import (
    DONE_STATES,
    RUNNING_STATES,
    Transport,
)
from bot.core.config import Config
from bot.core.errors import ApplianceError
from bot.core.purposes import AZURE_ACCOUNT_PURPOSES, DEFAULT_PURPOSES

log = logging.getLogger(__name__)



class VBAzureClient(Transport):
    """Talks to one VBAzure appliance as ``username``; safe to share between threads."""

    def save_by_app(self, settings: AccountSettings) -> str:
        """Add a service account for an existing application; returns the account id."""
        body = _account_body(settings)
        secret = settings.masked()
        name, application_id = settings.name, settings.application_id
        path = "accounts/azure/service/saveByApp"
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._api("POST", path, json=body, secret=secret, idempotent=False)
            except ApplianceError as exc:
                if not exc.retryable or attempt == self._attempts:
                    raise
                self._sleep(self._backoff(attempt, exc.retry_after))
                existing = self._find(name, application_id, secret)
                if existing is not None:
                    # The lost answer was a success: make sure the secret is the one we hold.
                    log.info("VBAzure: account %s exists after a lost answer; updating", name)
                    self.update_by_app(existing, settings)
                    return existing
                continue
            account_id = self._write_result(response, secret)
            if not account_id:
                account_id = self._find(name, application_id, secret) or ""
            if not account_id:
                raise ApplianceError(
                    f"the appliance accepted service account {name!r} but gave no account id",
                    kind="problem",
                )
            return account_id
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def update_by_app(self, account_id: str, settings: AccountSettings) -> None:
        """Replace the account's settings, its client secret (or certificate) included."""
        body = _account_body(settings)
        secret = settings.masked()
        path = f"accounts/azure/service/updateByApp/{quote(account_id, safe='')}"
        try:
            response = self._api("PUT", path, json=body, secret=secret)
        except ApplianceError as exc:
            if exc.status == 404:
                raise _no_account(account_id, exc) from None
            raise
        self._write_result(response, secret)

    def list_accounts(self) -> list[dict[str, Any]]:
        """Every service account on the appliance (no secrets), following the paging."""
        items: list[dict[str, Any]] = []
        offset = 0
        for _ in range(10_000):
            body = self._read(
                "accounts/azure/service",
                params={"Offset": str(offset), "Limit": str(self._page_size)},
            )
            if isinstance(body, list):
                items.extend(body)
                break
            if not isinstance(body, dict):
                break
            results = [r for r in body.get("results") or [] if isinstance(r, dict)]
            items.extend(results)
            total = body.get("totalCount")
            if not results:
                break
            if isinstance(total, int):
                if len(items) >= total:
                    break
            else:  # totalCount is nullable: a page shorter than asked for is the last one
                limit = body.get("limit")
                asked = limit if isinstance(limit, int) and limit > 0 else self._page_size
                if len(results) < min(asked, self._page_size):
                    break
            offset += len(results)
        return [_normalise(item) for item in items]

    def get_account(self, account_id: str) -> dict[str, Any] | None:
        """One service account, or None when the appliance does not know the id."""
        try:
            body = self._read(f"accounts/azure/service/{quote(account_id, safe='')}")
        except ApplianceError as exc:
            if exc.status == 404:
                return None
            raise
        return _normalise(body) if isinstance(body, dict) else None

    def export_permissions_by_app(
        self,
        *,
        subscription: str,
        application_id: str,
        tenant_id: str,
        client_secret: str,
        subscriptions: Sequence[str],
        purposes: Sequence[str] = DEFAULT_PURPOSES,
        environment: str = "Global",
    ) -> Any:
        """The permissions VBAzure needs for `purposes` on `subscription`, as the JSON file its
        "Export Permissions" button saves (parsed). ``POST …/exportPermissionsByApp``
        (``subscriptionId`` query, a ``ClientLoginParameters`` body) answers 200 with the file
        as ``application/octet-stream``."""
        login = _account_body(
            AccountSettings(
                name="export",
                description="",
                application_id=application_id,
                tenant_id=tenant_id,
                client_secret=client_secret,
                subscriptions=tuple(subscriptions),
                purposes=tuple(purposes),
                environment=environment,
            )
        )["clientLoginParameters"]
        query = urlencode({"subscriptionId": subscription})
        response = self._api(
            "POST",
            f"accounts/azure/service/exportPermissionsByApp?{query}",
            json=login,
            secret=client_secret,
        )
        try:
            return json.loads(response.content.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            raise self._error(
                "the appliance's permission export is not a JSON file",
                status=response.status_code,
                secret=client_secret,
            ) from None

    def check_permissions(
        self, account_id: str, *, subscriptions: Sequence[str], purposes: Sequence[str]
    ) -> dict[str, Any]:
        """Have the appliance check the account's Azure permissions: ``POST …/{accountId}/
        checkPermissions`` (``subscriptionId`` and ``purposes`` query arrays) answers 200 with
        a ``SubscriptionsListingResult`` (or 202 with an operation whose result it is): per
        subscription ``permissionsState``, ``missingPermissions``, ``missingDataActions``,
        ``resourceProvidersState``, ``missingResourceProviders``, ``missingPurposes``."""
        query = urlencode(
            [("subscriptionId", s) for s in subscriptions] + [("purposes", p) for p in purposes]
        )
        path = f"accounts/azure/service/{quote(account_id, safe='')}/checkPermissions?{query}"
        try:
            response = self._api("POST", path)
        except ApplianceError as exc:
            if exc.status == 404:
                raise _no_account(account_id, exc) from None
            raise
        body = self._wait(_json(response), None) if response.status_code == 202 else _json(response)
        if not isinstance(body, dict):
            raise self._error("the appliance answered a permission check with no result")
        return body

    def _read(self, path: str, params: dict[str, str] | None = None) -> Any:
        """A GET whose answer is 200 with the body, or 202 with an operation whose
        ``result`` is the body."""
        response = self._api("GET", path, params=params)
        if response.status_code == 202:
            return self._wait(_json(response), None)
        return _json(response)

    def _write_result(self, response: httpx.Response, secret: str) -> str:
        if response.status_code == 202:
            return _account_id(self._wait(_json(response), secret))
        body = _json(response)
        found = _account_id(body)
        if found:
            return found
        if response.status_code == 204 or body is None:
            return ""
        raise self._error(
            "the appliance answered without an account id",
            status=response.status_code,
            secret=secret,
        )

    def _wait(self, operation: Any, secret: str | None) -> Any:
        """Poll an asynchronous operation until it is done; returns its ``result``."""
        if not isinstance(operation, dict) or not operation.get("id"):
            raise self._error("the appliance answered 202 without an operation", secret=secret)
        op_id = str(operation["id"])
        deadline = self._clock() + self._operation_timeout
        interval = self.poll_interval
        while str(operation.get("status") or "Pending") in RUNNING_STATES:
            if self._clock() >= deadline:
                raise ApplianceError(
                    f"the appliance did not finish operation {op_id} within "
                    f"{self._operation_timeout:.0f}s; it may still complete, so check the "
                    "appliance before trying again",
                    kind="timeout",
                )
            self._sleep(interval)
            interval = min(interval * 2, max(5.0, self.poll_interval))
            operation = self._api(
                "GET", f"operations/{quote(op_id, safe='')}", secret=secret
            ).json()
            if not isinstance(operation, dict):
                raise self._error("the appliance answered an operation poll with no operation")
        status = str(operation.get("status"))
        if status in DONE_STATES:
            if status == "Warning":
                log.warning("VBAzure operation %s finished with a warning", op_id)
            return operation.get("result")
        error = operation.get("error") if isinstance(operation.get("error"), dict) else {}
        assert isinstance(error, dict)
        title, detail, errors, trace_id = _problem_fields(error)
        message = f"the appliance operation ended in {status}"
        if title:
            message += f" {title}"
        if detail:
            message += f": {detail}"
        if errors:
            message += f" ({_errors_text(errors)})"
        raise self._error(
            message,
            kind="operation",
            status=error.get("status") if isinstance(error.get("status"), int) else None,
            title=title,
            detail=detail,
            errors=errors,
            trace_id=trace_id,
            secret=secret,
        )

    def _find(self, name: str, application_id: str, secret: str) -> str | None:
        """The id of an account with this name and application, if the appliance has one."""
        try:
            accounts = self.list_accounts()
        except ApplianceError:
            return None
        for account in accounts:
            if (
                str(account.get("name", "")).lower() == name.lower()
                and str(account.get("applicationId", "")).lower() == application_id.lower()
                and account.get("id")
            ):
                return str(account["id"])
        return None


@dataclass(frozen=True)
class CertificateUpload:
    """A certificate for the appliance: the PKCS#12 file in base64, the password it is
    protected with, and the name VBAzure shows for it (v8.1 `ClientLoginParameters`
    `applicationCertificate`, `certificatePassword`, `applicationCertificateName`)."""

    pkcs12_b64: str = field(repr=False)  # the private key, protected by `password`
    password: str = field(repr=False)
    name: str


def _no_account(account_id: str, exc: ApplianceError) -> ApplianceError:
    """The appliance's 404 for an account id, said as such."""
    return ApplianceError(
        f"the appliance has no service account {account_id!r}"
        + (f" ({exc.detail})" if exc.detail else ""),
        kind="not_found",
        status=404,
        title=exc.title,
        detail=exc.detail,
    )


@dataclass(frozen=True)
class AccountSettings:
    """What a service account is, as `saveByApp` and `updateByApp` take it (v8.1
    `AccountInfo` and `ClientLoginParameters`): a client secret or a certificate."""

    name: str
    description: str
    application_id: str
    tenant_id: str
    subscriptions: Sequence[str]
    client_secret: str | None = field(default=None, repr=False)
    purposes: Sequence[str] = DEFAULT_PURPOSES
    environment: str = "Global"
    certificate: CertificateUpload | None = None

    def masked(self) -> str:
        """What an error from the appliance must never echo."""
        if self.certificate is not None:
            return self.certificate.password
        if not self.client_secret:
            raise ValueError("a client secret or a certificate is needed")
        return self.client_secret


def _account_body(settings: AccountSettings) -> dict[str, Any]:
    purposes = list(settings.purposes)
    unknown = [p for p in purposes if p not in AZURE_ACCOUNT_PURPOSES]
    if unknown:
        log.warning("VBAzure: sending account purposes this client does not know: %s", unknown)
    login: dict[str, Any] = {
        "azureEnvironment": settings.environment,
        "applicationId": settings.application_id,
        "tenantId": settings.tenant_id,
    }
    certificate = settings.certificate
    if certificate is not None:
        login["applicationCertificate"] = certificate.pkcs12_b64
        login["certificatePassword"] = certificate.password
        login["applicationCertificateName"] = certificate.name
    else:
        login["clientSecret"] = settings.client_secret
    login["azureAccountPurposes"] = purposes
    login["subscriptions"] = list(settings.subscriptions)
    return {
        "accountInfo": {"name": settings.name, "description": settings.description},
        "clientLoginParameters": login,
    }


_SECRET_FIELDS = ("clientSecret", "applicationCertificate", "certificatePassword")


def _normalise(account: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in account.items() if k not in _SECRET_FIELDS}
    if not out.get("id") and out.get("accountId"):
        out["id"] = out["accountId"]
    return out


def _account_id(value: Any) -> str:
    """The account id in a write's answer: a JSON string (v8.1), or an object naming it."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        found = value.get("accountId") or value.get("id") or value.get("result")
        if isinstance(found, str):
            return found
    return ""


def from_config(config: Config, http: httpx.Client) -> VBAzureClient | None:
    """The appliance client `VEEAM_URL` asks for; None when no appliance is configured."""
    if not (config.veeam_url and config.veeam_username and config.veeam_password):
        return None
    return VBAzureClient(
        config.veeam_url,
        config.veeam_username,
        config.veeam_password,
        http,
        api_version=config.veeam_api_version,
    )
