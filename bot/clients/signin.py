"""Device-code sign-in (OAuth 2.0 device authorization grant) through MSAL.

One `PublicClientApplication` per flow: MSAL keeps its token cache and its 429/5xx
throttling cache per application object, so a shared object would mix users' tokens and
let one throttled poll hold back everybody else's. The application lives in memory for
the length of one flow and is dropped with it; refresh tokens are never persisted.

`poll()` makes exactly one request to the token endpoint and classifies the answer; the
caller (bot.flows.create) schedules the next poll.

The device code is for Azure management (ARM), and the Graph token follows silently: a
Conditional Access policy that requires MFA for "Windows Azure Service Management API" (as
Microsoft recommends) is then met on the sign-in page, where the person can do MFA — a
silent ARM token after a Graph sign-in would fail with AADSTS50076 instead. Azure CLI signs
in the same way round. When a silent token still needs the person (`needs_interaction`), the
caller asks them for one more code for that resource. MSAL's flow dict is plain JSON, so it is
persisted (encrypted: it holds the device code) and a restarted bot resumes polling.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msal
import msal.exceptions

from bot.core.config import Config
from bot.core.errors import SignInError
from bot.core.logs import quiet_routine_polls, routine_poll

log = logging.getLogger(__name__)

PERSONAL_TENANTS = frozenset(
    {"9188040d-6c67-4c5b-b112-36a304b66dad", "f8cdef31-a31e-4b4a-93e4-5f571e91255a"}
)

#: AADSTS code → (kind, what happened and what to do). Shown in the flow's thread.
AADSTS_KINDS: dict[int, str] = {
    70016: "pending",
    70019: "expired",
    70018: "bad_code",
    53003: "conditional_access",
    530033: "conditional_access_device",
    50076: "mfa",
    50079: "mfa",
    50020: "not_in_tenant",
    90002: "tenant_not_found",
    700016: "client_not_found",
    65001: "consent",
    65002: "consent",
    700022: "invalid_scope",
}

_ERROR_KINDS = {
    "authorization_declined": "declined",
    "access_denied": "declined",
    "expired_token": "expired",
    "bad_verification_code": "bad_code",
}


@dataclass
class Poll:
    """The outcome of one poll: still pending (maybe slower), or signed in."""

    pending: bool
    interval: int
    identity: Identity | None = None


@dataclass
class Identity:
    """Who signed in, from the id token (never the tokens themselves)."""

    upn: str
    name: str
    tenant_id: str
    object_id: str
    idp: str | None = None
    tenant_name: str | None = None
    #: MSAL's `home_account_id` ("{home oid}.{home tenant}", from client_info): the same for
    #: one person in every tenant they reach, where `object_id` is per directory (a guest
    #: has an object of its own in the resource tenant).
    home_account_id: str | None = None

    @property
    def personal(self) -> bool:
        return self.tenant_id in PERSONAL_TENANTS or bool(self.idp and "live.com" in self.idp)


@dataclass
class Session:
    """A flow's MSAL application and signed-in account: the tokens, in memory only."""

    app: msal.PublicClientApplication
    account: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _aadsts(result: dict[str, Any]) -> int | None:
    codes = result.get("error_codes") or []
    if codes:
        try:
            return int(codes[0])
        except (TypeError, ValueError):
            return None
    description = str(result.get("error_description") or "")
    if description.startswith("AADSTS"):
        digits = description[6:].split(":", 1)[0]
        if digits.isdigit():
            return int(digits)
    return None


#: Silent-token failures that one more sign-in by the same person can clear: MFA or consent
#: demanded for that resource alone (Conditional Access per resource).
INTERACTION_KINDS = frozenset({"mfa", "consent"})


def needs_interaction(error: SignInError) -> bool:
    return error.kind in INTERACTION_KINDS or error.error == "interaction_required"


def classify(result: dict[str, Any]) -> SignInError:
    """Turn an MSAL error dict into a `SignInError` (the description is not kept: it may
    echo request data)."""
    error = str(result.get("error") or "unknown_error")
    code = _aadsts(result)
    kind = (
        _ERROR_KINDS.get(error) or (AADSTS_KINDS.get(code) if code is not None else None) or "other"
    )
    summary = str(result.get("error_description") or error).split("\n", 1)[0]
    if code is not None and summary.startswith(f"AADSTS{code}:"):
        summary = summary[len(f"AADSTS{code}:") :].strip()
    summary = summary.split(" Trace ID:", 1)[0][:300]
    return SignInError(
        kind,
        summary,
        aadsts=f"AADSTS{code}" if code is not None else None,
        correlation_id=result.get("correlation_id"),
        error=error,
    )


#: How long a discovery answer is reused (MSAL keeps its own copies as long, per application).
DISCOVERY_TTL_S = 24 * 3600


class DiscoveryCache:
    """The HTTP client handed to MSAL: discovery GETs (the authority's OpenID configuration,
    instance discovery) are answered from one cache for the whole process, everything else
    goes straight to the shared `httpx.Client`.

    Each flow has its own MSAL application (tokens and throttling kept apart), and MSAL reads
    the OpenID configuration once per application: without this every sign-in would start
    with an extra round trip to Microsoft. Only 200 answers are kept; an unknown tenant's
    400 is asked again each time.
    """

    def __init__(self, http: httpx.Client, ttl: float = DISCOVERY_TTL_S) -> None:
        self._http = http
        self._ttl = ttl
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str], tuple[float, httpx.Response]] = {}

    @staticmethod
    def _is_discovery(url: str) -> bool:
        path = url.split("?", 1)[0]
        return path.endswith("/.well-known/openid-configuration") or path.endswith(
            "/discovery/instance"
        )

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        if not self._is_discovery(url):
            return self._http.get(url, params=params, headers=headers, **kwargs)
        key = (url, json.dumps(params, sort_keys=True, default=str))
        now = time.monotonic()
        with self._lock:
            found = self._answers.get(key)
        if found is not None and found[0] > now:
            return found[1]
        response = self._http.get(url, params=params, headers=headers, **kwargs)
        if response.status_code == 200:
            response.read()
            with self._lock:
                self._answers[key] = (now + self._ttl, response)
        return response

    def post(self, url: str, **kwargs: Any) -> Any:
        data = kwargs.get("data")
        if isinstance(data, dict) and any(isinstance(v, bytes) for v in data.values()):
            # MSAL hands a signed client assertion over as bytes; httpx would send the
            # text "b'eyJ…'" for it, which Entra refuses (AADSTS50027). Send the JWT itself.
            kwargs["data"] = {
                k: v.decode("ascii") if isinstance(v, bytes) else v for k, v in data.items()
            }
        return self._http.post(url, **kwargs)

    def close(self) -> None:  # MSAL may close its client; the shared one is not its to close
        pass

#: RFC 7523's client assertion type, as the Microsoft identity platform takes it.
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class DeviceSignIn:
    """Starts and polls device-code sign-ins against the configured authority."""

    def __init__(
        self,
        config: Config,
        http: httpx.Client,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self.http = http
        self._msal_http = DiscoveryCache(http)
        self._sleep = sleep
        quiet_routine_polls()
        #: How long a silent token may keep failing on the network (or 429/5xx) before the
        #: flow is failed as unreachable.
        self.transient_budget = 30.0

    @property
    def sign_in_scope(self) -> str:
        """What the device code is for: Azure management first (see the module docstring)."""
        return self._config.arm_scope

    @property
    def scopes(self) -> tuple[str, ...]:
        """Every resource a flow needs a token for."""
        return (self._config.arm_scope, self._config.graph_scope)

    def resource_name(self, scope: str) -> str:
        return "Azure management" if scope == self._config.arm_scope else "Microsoft Graph"

    def authority_for(self, tenant: str | None = None) -> str:
        """The authority a sign-in goes to: the configured one, or a given tenant's (the
        device code of a guest then signs the person in to that tenant, not their home)."""
        if not tenant:
            return self._config.authority
        return f"{self._config.authority_host}/{tenant}"

    def new_session(self, tenant: str | None = None) -> Session:
        """A fresh MSAL application (against `tenant`'s authority when given); reads the
        authority's OpenID configuration (network)."""
        authority = self.authority_for(tenant)
        try:
            app = msal.PublicClientApplication(
                self._config.client_id,
                authority=authority,
                instance_discovery=self._config.authority_host.endswith(
                    (
                        "login.microsoftonline.com",
                        "login.microsoftonline.us",
                        "login.chinacloudapi.cn",
                    )
                ),
                http_client=self._msal_http,
            )
        except httpx.HTTPError as exc:
            raise TransientError(type(exc).__name__) from None
        except ValueError as exc:
            if "authority configuration" in str(exc):
                # MSAL drops the AADSTS90002 body here; an unknown tenant is what it means.
                raise SignInError(
                    "tenant_not_found",
                    f"the authority {authority} has no OpenID configuration",
                ) from None
            raise TransientError(type(exc).__name__) from None
        return Session(app=app)

    def initiate(self, session: Session, scope: str | None = None) -> dict[str, Any]:
        """Ask for a device code for `scope` (default: Azure management); returns MSAL's
        flow dict (holds the device code). A network failure, 429 or 5xx raises
        `TransientError`; use `begin` to retry those."""
        try:
            flow = session.app.initiate_device_flow(scopes=[scope or self.sign_in_scope])
        except (httpx.HTTPError, ValueError, msal.exceptions.MsalError) as exc:
            raise TransientError(str(exc)[:80] or type(exc).__name__) from None
        if "user_code" not in flow:
            if flow.get("error") in ("temporarily_unavailable", "server_error") or _throttled(flow):
                raise TransientError(str(flow.get("error") or "no answer"))
            raise classify(flow)
        return flow

    def begin(
        self,
        scope: str | None = None,
        session: Session | None = None,
        tenant: str | None = None,
    ) -> tuple[Session, dict[str, Any]]:
        """A device code for `scope` (with a fresh MSAL application, against `tenant`'s
        authority when given, unless `session` is given), retrying network failures, 429
        and 5xx within `transient_budget`: a blip while hundreds of sign-ins start must not
        fail one of them. Then `SignInError`."""
        deadline = time.monotonic() + self.transient_budget
        delay = 0.5
        while True:
            try:
                current = session or self.new_session(tenant)
                return current, self.initiate(current, scope)
            except TransientError as exc:
                problem = str(exc)
            if time.monotonic() + delay > deadline:
                raise SignInError(
                    "unreachable", f"could not reach Microsoft sign-in ({problem})"
                )
            log.info("starting a sign-in failed (%s); retrying", problem)
            self._sleep(delay)
            delay = min(delay * 2, 8.0)

    def poll(self, session: Session, flow: dict[str, Any]) -> Poll:
        """One request to the token endpoint. Raises `SignInError` on a terminal answer,
        `TransientError` on a network problem or a 429/5xx."""
        if time.time() > float(flow.get("expires_at", 0)):
            raise SignInError("expired", "The sign-in code expired before it was used.")
        try:
            with routine_poll():  # a pending poll's 400 is no news: httpx logs it at DEBUG
                result = session.app.acquire_token_by_device_flow(
                    flow, exit_condition=lambda f: True
                )
        except (httpx.HTTPError, ValueError, msal.exceptions.MsalServiceError) as exc:
            # network errors, 5xx (MSAL raises "HTTP Error: 5xx"), non-JSON bodies
            raise TransientError(str(exc)[:80] or type(exc).__name__) from None
        interval = int(flow.get("interval", 5))
        if "access_token" in result:
            claims = result.get("id_token_claims") or {}
            accounts = session.app.get_accounts()
            session.account = accounts[0] if accounts else None
            identity = Identity(
                upn=str(
                    claims.get("preferred_username")
                    or claims.get("upn")
                    or claims.get("email")
                    or ""
                ),
                name=str(claims.get("name") or ""),
                tenant_id=str(claims.get("tid") or ""),
                object_id=str(claims.get("oid") or ""),
                idp=claims.get("idp"),
                home_account_id=(
                    str(session.account.get("home_account_id") or "") or None
                    if session.account
                    else None
                ),
            )
            return Poll(pending=False, interval=interval, identity=identity)
        error = result.get("error")
        if error in ("authorization_pending", "slow_down"):
            return Poll(pending=True, interval=interval)
        if error in ("temporarily_unavailable", "server_error") or _throttled(result):
            raise TransientError(str(error))
        ended = classify(result)
        log.info("a device-code sign-in ended: %s (%s)", error, ended.aadsts or "no AADSTS code")
        raise ended

    def prove_secret(
        self,
        tenant_id: str,
        client_id: str,
        secret: str,
        budget: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> str | None:
        """The client-credentials grant with a new client secret, retried while it
        propagates (a new secret takes seconds to work). None when a token came back, else
        what the last attempt answered."""
        config = self._config
        url = f"{config.authority_host}/{tenant_id}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": config.arm_scope,
        }
        deadline = time.monotonic() + budget
        delay = 1.0
        last = "no answer"
        while True:
            try:
                response = self.http.post(url, data=form)
                if response.status_code == 200 and "access_token" in response.json():
                    return None
                body = (
                    response.json()
                    if response.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                codes = body.get("error_codes") or []
                last = (
                    f"{body.get('error', response.status_code)} (AADSTS{codes[0]})"
                    if codes
                    else str(body.get("error", response.status_code))
                )
            except (httpx.HTTPError, ValueError) as exc:
                last = type(exc).__name__
            if time.monotonic() + delay > deadline:
                return last
            sleep(delay)
            delay = min(delay * 2, 10.0)

    def prove_certificate(
        self,
        tenant_id: str,
        client_id: str,
        private_key_pem: str,
        thumbprint: str,
        budget: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> str | None:
        """The client-credentials grant with a signed client assertion (MSAL's
        `ConfidentialClientApplication`, RS256 with the certificate's SHA-1 thumbprint as
        `x5t`), retried while a new certificate propagates. None when a token came back, else
        what the last attempt answered. A fresh application each time: nothing is cached."""
        config = self._config
        deadline = time.monotonic() + budget
        delay = 1.0
        last = "no answer"
        while True:
            try:
                app = msal.ConfidentialClientApplication(
                    client_id,
                    client_credential={"private_key": private_key_pem, "thumbprint": thumbprint},
                    authority=f"{config.authority_host}/{tenant_id}",
                    instance_discovery=config.authority_host.endswith(
                        (
                            "login.microsoftonline.com",
                            "login.microsoftonline.us",
                            "login.chinacloudapi.cn",
                        )
                    ),
                    http_client=self._msal_http,
                )
                result = app.acquire_token_for_client(scopes=[config.arm_scope])
                if "access_token" in result:
                    return None
                codes = result.get("error_codes") or []
                last = (
                    f"{result.get('error')} (AADSTS{codes[0]})"
                    if codes
                    else str(result.get("error") or "no token")
                )
            except (httpx.HTTPError, ValueError, msal.exceptions.MsalError) as exc:
                last = type(exc).__name__
            if time.monotonic() + delay > deadline:
                return last
            sleep(delay)
            delay = min(delay * 2, 10.0)

    def app_token(
        self,
        tenant_id: str,
        client_id: str,
        secret: str | None,
        *,
        assertion: Callable[[str], str] | None = None,
        before: Callable[[], None] | None = None,
        hold: Callable[[float], None] | None = None,
        attempts: int = 3,
        max_wait: float = 60.0,
    ) -> AppToken:
        """One client-credentials grant for Azure management, as the application itself:
        what the health check proves a stored secret with. Calls `before()` ahead of every
        request (a rate limiter); a 429 or 5xx is retried after its `Retry-After` (also
        passed to `hold`), at most `attempts` times. Never raises for what Microsoft answers.
        A certificate account passes `assertion` instead of a secret: given the token
        endpoint's URL, it returns a freshly signed client assertion (RS256 JWT)."""
        config = self._config
        url = f"{config.authority_host}/{tenant_id}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "scope": config.arm_scope,
        }
        if secret is not None:
            form["client_secret"] = secret
        problem = "no answer"
        for attempt in range(1, attempts + 1):
            if before is not None:
                before()
            if assertion is not None:  # a new one each time: it carries its own expiry
                form["client_assertion_type"] = JWT_BEARER
                form["client_assertion"] = assertion(url)
            wait = min(2.0**attempt, max_wait)
            try:
                response = self.http.post(url, data=form)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                try:
                    body = response.json()
                except ValueError:
                    body = {}
                if not isinstance(body, dict):
                    body = {}
                if response.status_code == 200 and body.get("access_token"):
                    return AppToken(token=str(body["access_token"]))
                if response.status_code != 429 and response.status_code < 500:
                    error = classify(body)
                    return AppToken(
                        aadsts=_aadsts(body),
                        error=str(body.get("error") or response.status_code),
                        summary=str(error),
                        correlation_id=error.correlation_id,
                    )
                problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("Retry-After")
                if retry_after is not None:
                    try:
                        wait = max(0.0, float(retry_after))
                    except ValueError:
                        pass
                    if hold is not None:
                        hold(wait)
            if attempt == attempts or wait > max_wait:
                break
            self._sleep(wait)
        return AppToken(transient=problem)

    def token_in(self, session: Session, scope: str, tenant: str) -> str:
        """An access token for `scope` in another tenant the signed-in account reaches, silently:
        an application against that tenant's authority, sharing the session's token cache,
        redeems the refresh token there (MSAL finds refresh tokens by home account, not by
        tenant). Raises a classified `SignInError` when that tenant wants the person (MFA,
        consent) or refuses; one attempt, no retries: it only informs a choice."""
        if session.account is None:
            raise SignInError("no_session", "The sign-in session is gone; sign in again.")
        try:
            app = msal.PublicClientApplication(
                self._config.client_id,
                authority=self.authority_for(tenant),
                instance_discovery=self._config.authority_host.endswith(
                    (
                        "login.microsoftonline.com",
                        "login.microsoftonline.us",
                        "login.chinacloudapi.cn",
                    )
                ),
                http_client=self._msal_http,
                token_cache=session.app.token_cache,
            )
            with session.lock:
                result = app.acquire_token_silent_with_error([scope], account=session.account)
        except (httpx.HTTPError, ValueError, msal.exceptions.MsalError) as exc:
            raise SignInError("unreachable", str(exc)[:80] or type(exc).__name__) from None
        if result and "access_token" in result:
            return str(result["access_token"])
        if not result:
            raise SignInError("no_session", "no token for that tenant")
        raise classify(result)

    def token(self, session: Session, scope: str) -> str:
        """An access token for `scope` for the signed-in account (from memory, else silently
        with the refresh token). Network failures, 429 and 5xx are retried within
        `transient_budget`, then raised as `SignInError("unreachable")`; a refusal is raised
        as a classified `SignInError` (see `needs_interaction`)."""
        if session.account is None:
            raise SignInError("no_session", "The sign-in session is gone; sign in again.")
        deadline = time.monotonic() + self.transient_budget
        delay = 0.5
        while True:
            try:
                result = session.app.acquire_token_silent_with_error(
                    [scope], account=session.account
                )
                problem = None
            except (httpx.HTTPError, ValueError, msal.exceptions.MsalServiceError) as exc:
                result, problem = None, type(exc).__name__
            if result and "access_token" in result:
                return str(result["access_token"])
            if result is None and problem is None:
                raise SignInError("no_session", "no token in the cache; sign in again")
            if result is not None and not (
                result.get("error") in ("temporarily_unavailable", "server_error")
                or _throttled(result)
            ):
                raise classify(result)
            problem = problem or str(result.get("error") if result else "error")
            if time.monotonic() + delay > deadline:
                raise SignInError(
                    "unreachable",
                    f"could not get a token for {self.resource_name(scope)} ({problem})",
                )
            log.info("silent token for %s failed (%s); retrying", self.resource_name(scope), problem)
            self._sleep(delay)
            delay = min(delay * 2, 8.0)


@dataclass
class AppToken:
    """What the token endpoint answered a client-credentials grant: a token, a refusal (its
    AADSTS code and summary), or nothing known (`transient`: network, 429, 5xx)."""

    token: str | None = None
    aadsts: int | None = None
    error: str | None = None
    summary: str = ""
    correlation_id: str | None = None
    transient: str | None = None


class TransientError(Exception):
    """A poll failed for a reason worth retrying (network, 429, 5xx)."""


def _throttled(result: dict[str, Any]) -> bool:
    # MSAL hands back non-JSON 429/5xx bodies as an error dict without an AADSTS code.
    return "error" not in result or str(result.get("error")).startswith(("http_", "throttled"))


def dump_flow(flow: dict[str, Any]) -> str:
    return json.dumps(flow, separators=(",", ":"))
