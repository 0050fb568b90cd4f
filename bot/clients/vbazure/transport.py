"""The VBAzure client's transport: sign-in and token renewal, retried requests, and every
failure as a scrubbed `ApplianceError` (the protocol is described in the package's docstring)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from bot.clients.vbazure.problems import (
    _errors_text,
    _json,
    _oauth_reason,
    _problem_fields,
    _problem_text,
    _retry_after,
    _scrub,
    _tls_failure,
    _tls_reason,
)
from bot.core.errors import ApplianceError

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
#: Paths whose 404 most likely means the API version is wrong for the appliance.
_COLLECTION_PATHS = frozenset({"accounts/azure/service", "accounts/azure/service/saveByApp"})




class Transport:
    """One appliance, signed in as ``username``: authenticated requests with retries."""

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

    def login(self) -> None:
        """Sign in now (``doctor`` uses it to check the settings)."""
        self._bearer()

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
