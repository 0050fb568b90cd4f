"""Client for the Veeam Backup for Microsoft Azure (VBAzure) appliance REST API.

The bot hands a new or renewed client secret straight to the appliance, so the secret never
has to be typed into VBAzure's UI. What the client speaks (REST API v8 / v8.1):

- ``POST /api/oauth2/token`` (form ``grant_type=Password&username=&password=``) gives an
  access token, its lifetime and a refresh token; ``grant_type=Refresh_token`` renews them.
  The access token is renewed 60 s before it expires, and once on a 401; when the refresh
  token is refused the client signs in with the password again.
  The answer names the user's role in ``roleName`` (kept as ``role_name``).
- ``POST /api/{ver}/accounts/azure/service/saveByApp`` and
  ``PUT /api/{ver}/accounts/azure/service/updateByApp/{accountId}`` answer 200 with the
  account id as a JSON string, or 202 with an asynchronous operation.
- ``GET /api/{ver}/accounts/azure/service[/{accountId}]`` answer 200 with the page / the
  account, or 202 with an asynchronous operation whose ``result`` is the page / the account.
  Paging is ``Offset`` / ``Limit`` (query parameters are case-sensitive) over ``results``;
  ``totalCount`` may be null, and then pages are read until a short or empty one. Items
  carry ``accountId``, ``subscriptionIds`` and ``purposes``; the client adds an ``id`` alias.
- An operation (``{"id", "startTime", "status", "result", "error", "_links"}``) is polled
  at ``GET /api/{ver}/operations/{id}`` while its v8.1 ``JobStatus`` is ``Pending``,
  ``Running``, ``RunningWithWarning``, ``RunningWithError`` or ``Canceling``. ``Success``
  and ``Warning`` are done (a warning is logged, not a failure); ``Error``, ``Canceled``,
  ``NeverExecuted``, ``Unknown`` (or anything else) failed, and ``error`` is a problem.

Timeouts, connection errors, 429 and 5xx are retried a bounded number of times with backoff
(``Retry-After`` honoured). ``saveByApp`` is not idempotent: after an answer that may have
been lost (read timeout, 5xx) the client looks for the account by name and application id
before posting again, so a retry never creates a second account.

Errors: every failure is an ``ApplianceError`` (a ``bot.core.errors.VeeamSAError``)::

    VeeamSAError
    └── ApplianceError     the appliance refused, failed or could not be reached
                           (``kind``, ``status``, ``title``, ``detail``)

Its text never carries the request body, the password, a token or a client secret: problem
documents contribute only their ``title``, ``detail``, per-field ``errors`` and ``traceId``,
and those are scrubbed of every secret the call knew about.

TLS: the caller passes an ``httpx.Client`` with certificate verification on (see
``bot.flows.root.make_http_client``; ``SSL_CERT_FILE`` adds a private CA). A verification
failure is reported as such and never retried or bypassed.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from bot.core.config import Config
from bot.core.errors import ApplianceError
from bot.core.purposes import AZURE_ACCOUNT_PURPOSES, DEFAULT_PURPOSES

log = logging.getLogger(__name__)

DEFAULT_API_VERSION = "v8.1"

#: ``azureEnvironment`` for each ``VEEAM_SA_CLOUD`` value.
AZURE_ENVIRONMENTS: dict[str, str] = {
    "AzureCloud": "Global",
    "AzureUSGovernment": "USGovernment",
    "AzureChinaCloud": "China",
}

#: v8.1 ``JobStatus`` values of an operation that is still going.
RUNNING_STATES = frozenset(
    {"Pending", "Running", "RunningWithWarning", "RunningWithError", "Canceling"}
)
#: v8.1 ``JobStatus`` values of an operation that finished and did its work.
DONE_STATES = frozenset({"Success", "Warning"})

#: ``accountOrigin`` values of the v8.1 ``AzureAccountOrigin`` enum (note the spaces).
ORIGIN_DEVICE = "Device Authentication"
ORIGIN_CERTIFICATE = "Imported Certificate"
ORIGIN_SECRET = "Imported Secret"

_CREDENTIALS = "the appliance rejected VEEAM_USERNAME/VEEAM_PASSWORD"
_FORBIDDEN = "the appliance user lacks the right to manage service accounts"
_REDACTED = "[redacted]"
_MAX_TEXT = 300
_MAX_FIELDS = 10


class VBAzureClient:
    """Talks to one VBAzure appliance as ``username``; safe to share between threads."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        http: httpx.Client,
        *,
        api_version: str = DEFAULT_API_VERSION,
        attempts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_wait: float = 30.0,
        operation_timeout: float = 600.0,
        page_size: int = 100,
        poll_interval: float = 1.0,
    ) -> None:
        url = base_url.strip().rstrip("/")
        if url.lower().endswith("/api"):
            url = url[: -len("/api")]
        if not url.lower().startswith("https://"):
            raise ValueError("the appliance URL must be https:// (the password is sent to it)")
        self.base_url = url
        self.api_version = api_version.strip("/") or DEFAULT_API_VERSION
        self._username = username
        self._password = password
        self._http = http
        self._attempts = max(1, attempts)
        self._sleep = sleep
        self._clock = clock
        self._max_wait = max_wait
        self._operation_timeout = operation_timeout
        self._page_size = max(1, page_size)
        #: First wait between polls of an operation (doubling up to 5 s).
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._access: str | None = None
        self._refresh: str | None = None
        self._renew_at = 0.0
        self._source = ""  # "password" or "refresh": how the current access token was got
        self._serial = 0  # counts sign-ins, to tell whether one happened during a call
        #: The appliance user's role, as the token answer names it (``roleName``).
        self.role_name: str | None = None
        #: Number of HTTP requests made.
        self.calls = 0

    # ------------------------------------------------------------------ public API

    def login(self) -> None:
        """Sign in now (``doctor`` uses it to check the settings)."""
        self._bearer()

    def save_by_app(
        self,
        *,
        name: str,
        description: str,
        application_id: str,
        tenant_id: str,
        client_secret: str,
        subscriptions: Sequence[str],
        purposes: Sequence[str] = DEFAULT_PURPOSES,
        environment: str = "Global",
    ) -> str:
        """Add a service account for an existing application; returns the account id."""
        body = _account_body(
            name,
            description,
            application_id,
            tenant_id,
            client_secret,
            subscriptions,
            purposes,
            environment,
        )
        path = "accounts/azure/service/saveByApp"
        for attempt in range(1, self._attempts + 1):
            try:
                response = self._api(
                    "POST", path, json=body, secret=client_secret, idempotent=False
                )
            except ApplianceError as exc:
                if not exc.retryable or attempt == self._attempts:
                    raise
                self._sleep(self._backoff(attempt, exc.retry_after))
                existing = self._find(name, application_id, client_secret)
                if existing is not None:
                    # The lost answer was a success: make sure the secret is the one we hold.
                    log.info("VBAzure: account %s exists after a lost answer; updating", name)
                    self.update_by_app(
                        existing,
                        name=name,
                        description=description,
                        application_id=application_id,
                        tenant_id=tenant_id,
                        client_secret=client_secret,
                        subscriptions=subscriptions,
                        purposes=purposes,
                        environment=environment,
                    )
                    return existing
                continue
            account_id = self._write_result(response, client_secret)
            if not account_id:
                account_id = self._find(name, application_id, client_secret) or ""
            if not account_id:
                raise ApplianceError(
                    f"the appliance accepted service account {name!r} but gave no account id",
                    kind="problem",
                )
            return account_id
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def update_by_app(
        self,
        account_id: str,
        *,
        name: str,
        description: str,
        application_id: str,
        tenant_id: str,
        client_secret: str,
        subscriptions: Sequence[str],
        purposes: Sequence[str] = DEFAULT_PURPOSES,
        environment: str = "Global",
    ) -> None:
        """Replace the account's settings, its client secret included."""
        body = _account_body(
            name,
            description,
            application_id,
            tenant_id,
            client_secret,
            subscriptions,
            purposes,
            environment,
        )
        path = f"accounts/azure/service/updateByApp/{quote(account_id, safe='')}"
        try:
            response = self._api("PUT", path, json=body, secret=client_secret)
        except ApplianceError as exc:
            if exc.status == 404:
                raise ApplianceError(
                    f"the appliance has no service account {account_id!r}"
                    + (f" ({exc.detail})" if exc.detail else ""),
                    kind="not_found",
                    status=404,
                    title=exc.title,
                    detail=exc.detail,
                ) from None
            raise
        self._write_result(response, client_secret)

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

    # ------------------------------------------------------------------ reads and writes

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

    # ------------------------------------------------------------------ authenticated calls

    def _api(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        secret: str | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        url = f"{self.base_url}/api/{self.api_version}/{path}"
        serial = self._serial
        renewed = 0
        while True:
            token = self._bearer()
            response = self._send(
                method,
                url,
                idempotent=idempotent,
                secret=secret,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            )
            status = response.status_code
            if status == 401:
                signed_in_now = self._serial != serial and self._source == "password"
                if signed_in_now or renewed >= 2:
                    raise self._error(
                        f"{_CREDENTIALS}: it refused the session it had just granted",
                        kind="credentials",
                        response=response,
                        secret=secret,
                    )
                self._renew_after_401(token, password=renewed > 0)
                renewed += 1
                continue
            if status == 403:
                role = f", role {self.role_name!r}" if self.role_name else ""
                raise self._error(
                    f"{_FORBIDDEN} (user {self._username!r}{role}; in VBAzure give it an "
                    "administrator role, such as Portal Administrator)",
                    kind="forbidden",
                    response=response,
                    secret=secret,
                )
            if status >= 400:
                raise self._problem(response, path, secret)
            return response

    def _problem(self, response: httpx.Response, path: str, secret: str | None) -> ApplianceError:
        status = response.status_code
        title, detail, errors, trace_id = _problem_fields(_json(response))
        message = f"the appliance answered {status}"
        if title:
            message += f" {title}"
        if detail:
            message += f": {detail}"
        if errors:
            message += f" ({_errors_text(errors)})"
        if status == 404 and path in _COLLECTION_PATHS:
            message += f" (is API version {self.api_version!r} right for this appliance?)"
        return self._error(
            message,
            kind="not_found" if status == 404 else "problem",
            status=status,
            title=title,
            detail=detail,
            errors=errors,
            trace_id=trace_id,
            secret=secret,
        )

    # ------------------------------------------------------------------ tokens

    def _bearer(self) -> str:
        with self._lock:
            if self._access is None or self._clock() >= self._renew_at:
                self._renew(use_refresh=True)
            assert self._access is not None
            return self._access

    def _renew_after_401(self, stale: str, *, password: bool) -> None:
        with self._lock:
            if self._access != stale:
                return  # another thread already renewed it
            self._access = None
            self._renew(use_refresh=not password)

    def _renew(self, *, use_refresh: bool) -> None:
        if use_refresh and self._refresh:
            try:
                self._grant(
                    {"grant_type": "Refresh_token", "refresh_token": self._refresh}, "refresh"
                )
                return
            except ApplianceError as exc:
                if exc.kind in ("unreachable", "tls"):
                    raise
                log.info("VBAzure refused the refresh token; signing in again")
                self._refresh = None
        self._grant(
            {"grant_type": "Password", "username": self._username, "password": self._password},
            "password",
        )

    def _grant(self, form: dict[str, str], source: str) -> None:
        response = self._send(
            "POST",
            f"{self.base_url}/api/oauth2/token",
            idempotent=True,
            secret=None,
            data=form,
            headers={"Accept": "application/json"},
        )
        status = response.status_code
        if status in (400, 401, 403):
            reason = _oauth_reason(response)
            if source == "refresh":
                raise self._error(f"refresh refused ({reason})", kind="credentials", status=status)
            raise self._error(
                f"{_CREDENTIALS} (user {self._username!r}: {reason})",
                kind="credentials",
                status=status,
            )
        if status >= 400:
            raise self._problem(response, "oauth2/token", None)
        body = _json(response)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            if isinstance(body, dict) and (body.get("mfa_token") or body.get("mfa_enabled")):
                raise ApplianceError(
                    f"multi-factor authentication is on for VEEAM_USERNAME ({self._username!r});"
                    " the bot needs a VBAzure user without MFA",
                    kind="mfa",
                )
            raise ApplianceError("the appliance answered the sign-in without an access token")
        refresh = body.get("refresh_token")
        try:
            lifetime = float(body.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._access = token
        self._refresh = refresh if isinstance(refresh, str) and refresh else None
        self._renew_at = self._clock() + lifetime - min(60.0, lifetime / 2)
        self._source = source
        self._serial += 1
        role = body.get("roleName")
        self.role_name = role if isinstance(role, str) and role else self.role_name

    # ------------------------------------------------------------------ transport

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_wait)
        return min(2.0 ** (attempt - 1), self._max_wait)

    def _send(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        secret: str | None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request, retried on timeouts, connection errors, 429 and 5xx.

        A request that is not idempotent is retried only where it surely did not run (the
        connection was never made, or 429); otherwise the retryable error is raised for the
        caller to decide. Any other response is returned as is."""
        where = url.split("?")[0].replace(self.base_url, "")
        for attempt in range(1, self._attempts + 1):
            retry_after: float | None = None
            self.calls += 1
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                if _tls_failure(exc):
                    raise ApplianceError(
                        f"could not verify the appliance's TLS certificate at {self.base_url} "
                        f"({_tls_reason(exc)}); if it uses a private CA, point SSL_CERT_FILE "
                        "at a bundle that includes it",
                        kind="tls",
                    ) from None
                safe = isinstance(
                    exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
                )
                error = ApplianceError(
                    f"the appliance at {self.base_url} did not answer {method} {where} "
                    f"({type(exc).__name__})",
                    kind="unreachable",
                    retryable=True,
                )
            else:
                status = response.status_code
                if status != 429 and status < 500:
                    return response
                safe = status == 429
                retry_after = _retry_after(response)
                title, detail = _problem_text(response)
                error = self._error(
                    f"the appliance answered {method} {where} with {status}"
                    + (f" {title}" if title else "")
                    + (f": {detail}" if detail else ""),
                    kind="unreachable",
                    status=status,
                    title=title,
                    detail=detail,
                    secret=secret,
                    retryable=True,
                    retry_after=retry_after,
                )
            if not idempotent and not safe:
                raise error
            if attempt == self._attempts:
                raise error
            wait = self._backoff(attempt, retry_after)
            log.info("VBAzure %s %s: %s; retrying in %.1fs", method, where, error, wait)
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ errors

    def _error(
        self,
        message: str,
        *,
        kind: str = "problem",
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
        response: httpx.Response | None = None,
        secret: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        errors: dict[str, list[str]] | None = None,
        trace_id: str | None = None,
    ) -> ApplianceError:
        if response is not None:
            status = response.status_code if status is None else status
            if title is None and detail is None:
                title, detail, errors, trace_id = _problem_fields(_json(response))
        hidden = [self._password, self._access, self._refresh, secret]
        return ApplianceError(
            _scrub(message, hidden) or message,
            kind=kind,
            status=status,
            title=_scrub(title, hidden),
            detail=_scrub(detail, hidden),
            retryable=retryable,
            retry_after=retry_after,
            errors={
                str(_scrub(k, hidden)): [str(_scrub(m, hidden)) for m in v]
                for k, v in (errors or {}).items()
            },
            trace_id=_scrub(trace_id, hidden),
        )


# --------------------------------------------------------------------------- helpers


def _account_body(
    name: str,
    description: str,
    application_id: str,
    tenant_id: str,
    client_secret: str,
    subscriptions: Iterable[str],
    purposes: Iterable[str],
    environment: str,
) -> dict[str, Any]:
    purposes = list(purposes)
    unknown = [p for p in purposes if p not in AZURE_ACCOUNT_PURPOSES]
    if unknown:
        log.warning("VBAzure: sending account purposes this client does not know: %s", unknown)
    return {
        "accountInfo": {"name": name, "description": description},
        "clientLoginParameters": {
            "azureEnvironment": environment,
            "applicationId": application_id,
            "tenantId": tenant_id,
            "clientSecret": client_secret,
            "azureAccountPurposes": purposes,
            "subscriptions": list(subscriptions),
        },
    }


_COLLECTION_PATHS = frozenset({"accounts/azure/service", "accounts/azure/service/saveByApp"})
_SECRET_FIELDS = ("clientSecret", "applicationCertificate", "certificatePassword")


def _normalise(account: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in account.items() if k not in _SECRET_FIELDS}
    if not out.get("id") and out.get("accountId"):
        out["id"] = out["accountId"]
    return out


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:_MAX_TEXT] if text else None


def _problem_text(response: httpx.Response) -> tuple[str | None, str | None]:
    """``title`` and ``detail`` of an RFC 7807 problem document (nothing else of the body)."""
    body = _json(response)
    title, detail, _, _ = _problem_fields(body)
    if title is None and detail is None and isinstance(body, dict) and body.get("error"):
        return _text(body.get("error")), _text(body.get("error_description"))
    return title, detail


def _problem_fields(
    body: Any,
) -> tuple[str | None, str | None, dict[str, list[str]], str | None]:
    """``title``, ``detail``, per-field ``errors`` and ``traceId`` of a problem document
    (v8.1 ``ProblemDetails400`` and its kin); nothing else of the body is read."""
    if not isinstance(body, dict):
        return None, None, {}, None
    errors: dict[str, list[str]] = {}
    raw = body.get("errors")
    if isinstance(raw, dict):
        for field, messages in list(raw.items())[:_MAX_FIELDS]:
            texts = messages if isinstance(messages, list) else [messages]
            kept = [t for t in (_text(m) for m in texts[:3]) if t]
            if kept:
                errors[str(_text(field) or "request")] = kept
    return _text(body.get("title")), _text(body.get("detail")), errors, _text(body.get("traceId"))


def _errors_text(errors: dict[str, list[str]]) -> str:
    """Per-field problems as one line: ``field: message; other: message``."""
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())


def _account_id(value: Any) -> str:
    """The account id in a write's answer: a JSON string (v8.1), or an object naming it."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        found = value.get("accountId") or value.get("id") or value.get("result")
        if isinstance(found, str):
            return found
    return ""


def _oauth_reason(response: httpx.Response) -> str:
    body = _json(response)
    if isinstance(body, dict):
        code = _text(body.get("error") or body.get("title"))
        text = _text(body.get("error_description") or body.get("detail"))
        if code and text:
            return f"{code}: {text}"
        if code or text:
            return str(code or text)
    return f"HTTP {response.status_code}"


def _scrub(text: str | None, hidden: Iterable[str | None]) -> str | None:
    if text is None:
        return None
    for value in hidden:
        if value and len(value) >= 4 and value in text:
            text = text.replace(value, _REDACTED)
    return text


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _tls_reason(exc: BaseException) -> str:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or "certificate verify failed"
        current = current.__cause__ or current.__context__
    return "certificate verify failed"


__all__ = [
    "AZURE_ACCOUNT_PURPOSES",
    "DONE_STATES",
    "ORIGIN_CERTIFICATE",
    "ORIGIN_DEVICE",
    "ORIGIN_SECRET",
    "RUNNING_STATES",
    "AZURE_ENVIRONMENTS",
    "ApplianceError",
    "DEFAULT_API_VERSION",
    "DEFAULT_PURPOSES",
    "VBAzureClient",
]


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
