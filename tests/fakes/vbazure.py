"""An in-process double of a Veeam Backup for Microsoft Azure (VBAzure) appliance.

One real HTTPS server on loopback speaks the parts of the appliance REST API the bot uses,
closely enough that a client written from Veeam's reference works against it::

    ca = TestCA()
    with VBAzureDouble(ca) as dbl:
        http = ca.httpx_client()
        token = http.post(f"{dbl.url}/api/oauth2/token",
                          data={"grant_type": "Password", "username": "veeam-admin",
                                "password": "P@ss"}).json()["access_token"]
        http.get(f"{dbl.url}/api/v8.1/accounts/azure/service",
                 headers={"Authorization": f"Bearer {token}"})

Endpoints
    ``POST /api/oauth2/token``  form ``grant_type=Password&username=&password=`` or
    ``grant_type=Refresh_token&refresh_token=`` (grant types are matched case-insensitively).
    ``POST /api/{ver}/accounts/azure/service/saveByApp``
    ``PUT  /api/{ver}/accounts/azure/service/updateByApp/{accountId}``
    ``GET  /api/{ver}/accounts/azure/service`` (``Offset``/``Limit`` paging)
    ``GET  /api/{ver}/accounts/azure/service/{accountId}``
    ``GET  /api/{ver}/operations/{operationId}``
    ``POST /api/{ver}/accounts/azure/service/exportPermissionsByApp`` (``subscriptionId``)
    ``POST /api/{ver}/accounts/azure/service/{accountId}/checkPermissions``
    (``subscriptionId`` and ``purposes`` query arrays)

The wire formats follow the vendor's v8.1 OpenAPI document ("Veeam Backup for Microsoft
Azure REST API", v8.1; operations ``AzureServiceAccount_GetAccounts``, ``_GetAccount``,
``_SaveByApp``, ``_UpdateByApp``, ``AsyncOperation_GetOperation``, ``Login_Authenticate``;
schemas ``PageOfAzureAccount``, ``AzureAccount``, ``AsyncOperationOf…``, ``JobStatus``,
``Login``, ``ProblemDetails400`` / ``401`` / ``403`` / ``404`` / ``409`` / ``415``):

- every GET of the account collection or of one account may answer 202 with an operation
  whose ``result`` is the page / the account (``async_reads``); writes answer 200 with the
  account id as a JSON string or 202 with an operation (``async_save``);
- an operation passes through ``operation_statuses`` (one per poll; by default ``Pending``,
  ``Running``, ``RunningWithWarning``) and ends in ``operation_outcome`` (``Success``,
  ``Warning`` — done, the work happened — or ``Error`` with a ``ProblemDetails``);
- ``_links`` are objects of ``{"href"}``; errors are problem documents with exactly the
  fields the document lists for their status (400 carries per-field ``errors`` and a
  ``traceId``; 403 has no ``detail``);
- query parameters are case-sensitive ("All query parameters are case-sensitive", section
  Query Parameters): ``offset`` / ``limit`` in lower case are ignored like any unknown one;
- ``totalCount`` is nullable (``total_count_null``);
- accounts carry ``subscriptionIds``, ``purposes`` and ``accountOrigin`` spelled as the
  ``AzureAccountOrigin`` enum does (``Device Authentication``, ``Imported Secret``, …);
- the token answer names the user's role in ``roleName``.
``tests/schemas/vbazure/`` holds JSON Schemas of these shapes; ``tests/test_fake_vbazure.py``
checks the double's answers against them.

Knobs: ``users`` ({"veeam-admin": "P@ss"}), ``mfa_users`` (users whose password grant only
yields an MFA token), ``role_name`` ("Portal Administrator"), ``token_lifetime`` (3600 s),
``refresh_lifetime`` (14 days), ``versions`` ({"v8", "v8.1"}), ``async_save``,
``async_reads``, ``operation_statuses``, ``operation_outcome``, ``warning_result``,
``total_count_null``,
``required_permissions`` (purpose -> {"actions", "dataActions"}: what the export names and the
check requires), ``azure_permissions`` (callable (application id, subscription id) -> the
permission blocks the application holds there, e.g. ``MicrosoftDouble.blocks_of_application``;
None: the check finds everything present), ``missing_providers`` (subscription id -> resource
provider namespaces not registered there),
``page_size`` (most accounts per page, 100), ``expiration_date`` (given to new accounts).

Scripting: ``fault`` (optionally ``after_processing``: the request is carried out and the
fault is what comes back, as from a proxy that lost the answer), ``hang``, ``set_cloud_state``, ``set_expiration_date``,
``revoke_access_tokens``, ``revoke_refresh_tokens``, ``advance`` / ``now``.

State: ``accounts`` (id -> dict with the secret, for assertions), ``operations``,
``events`` (``Event(time, method, path, account_id, client_secret)``, times from
``time.monotonic()`` so they can be ordered against other doubles), ``grants`` (grant types
seen by the token endpoint, lower-cased), ``internal_errors``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.fakes.tls import TestCA, TLSHandler, TLSServer

DEFAULT_USERNAME = "veeam-admin"
DEFAULT_PASSWORD = "P@ss"

#: ``AzureAccountPurpose`` values of the v8 / v8.1 REST API.
ACCOUNT_PURPOSES = frozenset(
    {
        "None",
        "WorkerManagement",
        "Repository",
        "Unknown",
        "VirtualMachineBackup",
        "VirtualMachineRestore",
        "AzureSqlBackup",
        "AzureSqlRestore",
        "AzureFiles",
        "VnetBackup",
        "VnetRestore",
        "CosmosBackup",
        "CosmosRestore",
    }
)
ENVIRONMENTS = frozenset({"Global", "China", "USGovernment", "Germany"})

_GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
#: v8.1 ``ClientLoginParameters`` properties ("additionalProperties": false).
_LOGIN_FIELDS = frozenset(
    {
        "azureEnvironment",
        "applicationId",
        "clientSecret",
        "tenantId",
        "applicationCertificate",
        "applicationCertificateName",
        "certificatePassword",
        "azureAccountPurposes",
        "subscriptions",
    }
)
_PROBLEM_TYPES = {
    400: "https://tools.ietf.org/html/rfc7231#section-6.5.1",
    401: "https://tools.ietf.org/html/rfc7235#section-3.1",
    403: "https://tools.ietf.org/html/rfc7231#section-6.5.3",
    404: "https://tools.ietf.org/html/rfc7231#section-6.5.4",
    409: "https://tools.ietf.org/html/rfc7231#section-6.5.8",
    415: "https://tools.ietf.org/html/rfc7231#section-6.5.13",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: "https://tools.ietf.org/html/rfc7231#section-6.6.1",
    502: "https://tools.ietf.org/html/rfc7231#section-6.6.3",
    503: "https://tools.ietf.org/html/rfc7231#section-6.6.4",
    504: "https://tools.ietf.org/html/rfc7231#section-6.6.5",
}
#: The fields of the problem document the v8.1 document gives each status
#: (``ProblemDetails400``, ``ProblemDetails401``, …; statuses it does not list get the
#: common ones).
_PROBLEM_FIELDS: dict[int, tuple[str, ...]] = {
    400: ("type", "title", "status", "detail", "traceId", "errors"),
    401: ("type", "title", "status", "detail"),
    403: ("type", "title", "status"),
    404: ("type", "title", "status", "detail", "instance", "traceId"),
    405: ("type", "title", "status", "detail", "instance", "traceId"),
    409: ("type", "title", "status", "detail", "instance", "traceId"),
    415: ("type", "title", "status", "traceId"),
    429: ("title", "status", "detail", "traceId"),
}
_COMMON_PROBLEM_FIELDS = ("type", "title", "status", "detail", "traceId")
#: ``JobStatus`` (v8.1): still going, and finished.
RUNNING_STATUSES = ("Pending", "Running", "RunningWithWarning", "RunningWithError", "Canceling")
FINAL_STATUSES = ("Success", "Warning", "Error", "Canceled", "NeverExecuted", "Unknown")
ORIGINS = ("Device Authentication", "Imported Certificate", "Imported Secret", "Unknown")
CLOUD_STATES = (
    "Unknown",
    "Valid",
    "InvalidClientSecret",
    "ExpiredClientSecret",
    "CertificateMismatch",
    "ExpiredCertificate",
    "NotFound",
    "Invalid",
    "NoSubscriptions",
)

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- records


class Event(NamedTuple):
    """One request as the appliance saw it."""

    time: float  # time.monotonic() when the request arrived
    method: str
    path: str
    account_id: str | None
    client_secret: str | None


@dataclass
class Fault:
    method: str | None
    path_regex: re.Pattern
    status: int
    body: Any
    times: int
    retry_after: float | None = None
    after_processing: bool = False
    hits: int = 0


@dataclass
class Hang:
    path_regex: re.Pattern
    seconds: float
    times: int
    after_processing: bool
    hits: int = 0


@dataclass
class _Token:
    value: str
    username: str
    expires: float


@dataclass
class _Operation:
    id: str
    started: float
    statuses: list[str]  # in-progress statuses still to show, one per poll
    outcome: str  # the JobStatus it ends in
    apply: Any  # callable() -> result, run once when it ends in Success / Warning
    account_id: str | None
    status: str = "Pending"
    result: Any = None
    error: dict | None = None


@dataclass
class _Resp:
    status: int
    body: Any = None
    headers: dict = field(default_factory=dict)


@dataclass
class _Req:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    content_type: str
    match: re.Match | None = None
    user: str | None = None
    account_id: str | None = None
    client_secret: str | None = None
    certificate: Any = None
    #: Every value of each query parameter (``query`` keeps the last one).
    query_all: dict[str, list[str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- HTTP plumbing


_Handler = TLSHandler


_Server = TLSServer


# --------------------------------------------------------------------------- the double


class VBAzureDouble:
    """A VBAzure appliance on one loopback HTTPS port; see the module docstring."""

    def __init__(self, ca: TestCA) -> None:
        self.ca = ca
        self.lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.url = ""

        # knobs
        self.users: dict[str, str] = {DEFAULT_USERNAME: DEFAULT_PASSWORD}
        self.mfa_users: set[str] = set()
        self.token_lifetime: int = 3600
        self.refresh_lifetime: int = 14 * 86400
        self.versions: set[str] = {"v8", "v8.1"}
        self.role_name: str | None = "Portal Administrator"
        self.async_save = False
        self.async_reads = False
        self.operation_statuses: list[str] = ["Pending", "Running", "RunningWithWarning"]
        self.operation_outcome = "Success"
        self.warning_result = True  # False: an operation ending in Warning carries no result
        self.total_count_null = False
        self.page_size = 100
        self.expiration_date: str | None = None
        self.required_permissions: dict[str, dict[str, list[str]]] = {
            purpose: {"actions": list(actions), "dataActions": list(data)}
            for purpose, (actions, data) in DEFAULT_REQUIRED_PERMISSIONS.items()
        }
        self.azure_permissions: Any = None
        self.missing_providers: dict[str, list[str]] = {}

        # clock offset (see now/advance)
        self._offset = 0.0

        # state
        self.accounts: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, _Operation] = {}
        self.events: list[Event] = []
        self.grants: list[str] = []
        self.faults: list[Fault] = []
        self.hangs: list[Hang] = []
        self.internal_errors: list[str] = []
        self._access: dict[str, _Token] = {}
        self._refresh: dict[str, _Token] = {}

        api = r"^/api/(?P<ver>[^/]+)"
        self._routes: list[tuple[str, re.Pattern, Any]] = [
            ("POST", re.compile(r"^/api/oauth2/token$", re.I), self._token),
            (
                "POST",
                re.compile(api + r"/accounts/azure/service/saveByApp$", re.I),
                self._save,
            ),
            (
                "PUT",
                re.compile(api + r"/accounts/azure/service/updateByApp/(?P<id>[^/]+)$", re.I),
                self._update,
            ),
            ("GET", re.compile(api + r"/accounts/azure/service$", re.I), self._list),
            ("GET", re.compile(api + r"/accounts/azure/service/(?P<id>[^/]+)$", re.I), self._get),
            ("GET", re.compile(api + r"/operations/(?P<id>[^/]+)$", re.I), self._operation),
            (
                "POST",
                re.compile(api + r"/accounts/azure/service/exportPermissionsByApp$", re.I),
                self._export_permissions,
            ),
            (
                "POST",
                re.compile(api + r"/accounts/azure/service/(?P<id>[^/]+)/checkPermissions$", re.I),
                self._check_permissions,
            ),
        ]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> VBAzureDouble:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self, self.ca.server_context())
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="vbazure-double",
            daemon=True,
        )
        self._thread.start()
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes hanging handlers
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=5)
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> VBAzureDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        """The double's clock for token expiry: ``time.monotonic()`` plus ``advance``s."""
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self._offset += seconds

    # ------------------------------------------------------------------ scripting

    def fault(
        self,
        method: str | None,
        path_regex: str,
        status: int,
        times: int = 1,
        body: Any = None,
        retry_after: float | None = None,
        after_processing: bool = False,
    ) -> Fault:
        """The next ``times`` requests whose method matches (None or "*" = any) and whose
        path matches ``path_regex`` (re.search, query excluded) get ``status`` with ``body``
        (default: an RFC 7807 problem document). Faults apply before authentication, unless
        ``after_processing``: then the request is carried out and only its answer is
        replaced (a gateway that lost the appliance's answer)."""
        f = Fault(
            None if method in (None, "*") else method.upper(),
            re.compile(path_regex),
            status,
            body,
            times,
            retry_after,
            after_processing,
        )
        with self.lock:
            self.faults.append(f)
        return f

    def hang(
        self, path_regex: str, seconds: float, times: int = 1, after_processing: bool = False
    ) -> Hang:
        """The next ``times`` requests matching ``path_regex`` stall for ``seconds`` and then
        lose their connection without an answer. With ``after_processing`` the request is
        carried out first and only the answer is lost (the ambiguous kind of timeout)."""
        h = Hang(re.compile(path_regex), seconds, times, after_processing)
        with self.lock:
            self.hangs.append(h)
        return h

    def set_cloud_state(self, account_id: str, state: str) -> None:
        with self.lock:
            self.accounts[account_id]["cloudState"] = state

    def set_expiration_date(self, account_id: str, value: str | None) -> None:
        with self.lock:
            self.accounts[account_id]["expirationDate"] = value

    def revoke_access_tokens(self) -> None:
        """Forget every access token (the next API call with one gets 401)."""
        with self.lock:
            self._access.clear()

    def revoke_refresh_tokens(self) -> None:
        with self.lock:
            self._refresh.clear()

    def events_for(self, path_regex: str, method: str | None = None) -> list[Event]:
        rx = re.compile(path_regex)
        with self.lock:
            return [
                e
                for e in self.events
                if rx.search(e.path) and (method is None or e.method == method.upper())
            ]

    def add_account(self, name: str, **fields: Any) -> str:
        """Put an account straight into the appliance (as if added through its UI)."""
        account_id = str(uuid.uuid4())
        record = {
            "id": account_id,
            "name": name,
            "description": "",
            "applicationId": str(uuid.uuid4()),
            "tenantId": str(uuid.uuid4()),
            "clientSecret": "",
            "environment": "Global",
            "purposes": ["VirtualMachineBackup"],
            "subscriptions": [],
            "origin": "Device Authentication",
            "cloudState": "Valid",
            "expirationDate": self.expiration_date,
        }
        record.update(fields)
        assert record["origin"] in ORIGINS, record["origin"]
        assert record["cloudState"] in CLOUD_STATES, record["cloudState"]
        with self.lock:
            self.accounts[account_id] = record
        return account_id

    # ------------------------------------------------------------------ request handling

    def _serve(self, h: _Handler) -> None:
        arrived = time.monotonic()
        split = urlsplit(h.path)
        path = unquote(split.path)
        query_all = parse_qs(split.query, keep_blank_values=True)
        query = {k: v[-1] for k, v in query_all.items()}
        headers = {k.lower(): v for k, v in h.headers.items()}
        length = int(headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        ctype = headers.get("content-type", "").lower()
        body: Any = None
        if raw:
            text = raw.decode("utf-8", errors="replace")
            if "application/x-www-form-urlencoded" in ctype:
                body = {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
            elif "json" in ctype:
                try:
                    body = json.loads(text)
                except ValueError:
                    body = _BAD_JSON
            else:
                body = text
        req = _Req(h.command, path, query, headers, body, ctype, query_all=query_all)

        hang = self._take_hang(path)
        if hang is not None and not hang.after_processing:
            self._record(arrived, req)
            self._stopping.wait(hang.seconds)
            self._drop(h)
            return

        try:
            with self.lock:
                resp = self._fault_response(req, after=False)
                if resp is None:
                    resp = self._route(req)
                    resp = self._fault_response(req, after=True) or resp
        except Exception:  # a bug in the double: keep it for the test to see
            tb = traceback.format_exc()
            with self.lock:
                self.internal_errors.append(tb)
            resp = self._problem(500, "The double failed; see internal_errors.", req)
        self._record(arrived, req)

        if hang is not None:
            self._stopping.wait(hang.seconds)
            self._drop(h)
            return
        self._write(h, resp)

    def _record(self, arrived: float, req: _Req) -> None:
        with self.lock:
            self.events.append(
                Event(arrived, req.method, req.path, req.account_id, req.client_secret)
            )

    def _take_hang(self, path: str) -> Hang | None:
        with self.lock:
            for hg in self.hangs:
                if hg.times > 0 and hg.path_regex.search(path):
                    hg.times -= 1
                    hg.hits += 1
                    return hg
        return None

    @staticmethod
    def _drop(h: _Handler) -> None:
        h.close_connection = True
        try:
            h.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @staticmethod
    def _write(h: _Handler, resp: _Resp) -> None:
        headers = dict(resp.headers)
        ctype = headers.pop("Content-Type", None)
        if resp.body is None:
            payload = b""
        elif isinstance(resp.body, bytes):
            payload = resp.body
        else:
            payload = json.dumps(resp.body).encode()
            ctype = ctype or "application/json; charset=utf-8"
        try:
            h.send_response(resp.status)
            if ctype:
                h.send_header("Content-Type", ctype)
            for k, v in headers.items():
                h.send_header(k, str(v))
            h.send_header("Content-Length", str(len(payload)))
            if payload:
                # one write for head and body: no Nagle / delayed-ACK stall between them
                h._headers_buffer.append(b"\r\n" + payload)
                h.flush_headers()
            else:
                h.end_headers()
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    def _fault_response(self, req: _Req, *, after: bool) -> _Resp | None:
        for f in self.faults:
            if (
                f.times > 0
                and f.after_processing == after
                and (f.method is None or f.method == req.method)
                and f.path_regex.search(req.path)
            ):
                f.times -= 1
                f.hits += 1
                if f.body is None:
                    resp = self._problem(f.status, f"Injected fault {f.status}.", req)
                else:
                    resp = _Resp(f.status, f.body)
                    if isinstance(f.body, dict) and "title" in f.body:
                        resp.headers["Content-Type"] = "application/problem+json; charset=utf-8"
                if f.retry_after is not None:
                    resp.headers["Retry-After"] = str(f.retry_after)
                return resp
        return None

    def _route(self, req: _Req) -> _Resp:
        path_matched = False
        for method, rx, handler in self._routes:
            m = rx.match(req.path)
            if m is None:
                continue
            path_matched = True
            if method != req.method:
                continue
            req.match = m
            if "ver" in m.groupdict():
                if m.group("ver") not in self.versions:
                    return self._problem(
                        404, f"API version {m.group('ver')} is not supported.", req
                    )
                denied = self._authenticate(req)
                if denied is not None:
                    return denied
            return handler(req)
        if path_matched:
            return self._problem(405, f"{req.method} is not allowed here.", req)
        return self._problem(404, "The requested resource was not found.", req)

    @staticmethod
    def _problem(
        status: int,
        detail: str,
        req: _Req | None,
        title: str | None = None,
        errors: dict[str, list[str]] | None = None,
        fields: tuple[str, ...] | None = None,
    ) -> _Resp:
        """A problem document with the fields the v8.1 document gives this status."""
        full = {
            "type": _PROBLEM_TYPES.get(status, "about:blank"),
            "title": title or _TITLES.get(status, "Error"),
            "status": status,
            "detail": detail,
            "instance": req.path if req is not None else None,
            "traceId": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00",
            "errors": errors if errors is not None else {},
        }
        keep = fields or _PROBLEM_FIELDS.get(status, _COMMON_PROBLEM_FIELDS)
        return _Resp(
            status,
            {k: full[k] for k in keep},
            {"Content-Type": "application/problem+json; charset=utf-8"},
        )

    def _invalid(self, req: _Req, field: str, message: str) -> _Resp:
        """A 400 for one bad request field, with the field named in ``errors``."""
        return self._problem(
            400,
            message,
            req,
            title="One or more validation errors occurred.",
            errors={field: [message]},
        )

    def _authenticate(self, req: _Req) -> _Resp | None:
        auth = req.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return self._problem(401, "The Authorization header does not contain a token.", req)
        tok = self._access.get(auth[7:].strip())
        if tok is None or tok.expires <= self.now():
            return self._problem(401, "The access token is invalid or has expired.", req)
        req.user = tok.username
        return None

    # ------------------------------------------------------------------ token endpoint

    def _token_error(self, description: str, req: _Req) -> _Resp:
        # Login_Authenticate answers 401 with ``ProblemDetailsTraceId``.
        return self._problem(
            401,
            description,
            req,
            fields=("type", "title", "status", "detail", "instance", "traceId"),
        )

    def _token(self, req: _Req) -> _Resp:
        if "application/x-www-form-urlencoded" not in req.content_type or not isinstance(
            req.body, dict
        ):
            return self._problem(415, "Send the token request as a form.", req)
        form: dict[str, str] = req.body
        grant = (form.get("grant_type") or "").lower()
        self.grants.append(grant)
        if grant == "password":
            username = form.get("username") or form.get("Username") or ""
            password = form.get("password") or form.get("Password") or ""
            if username not in self.users or self.users[username] != password:
                return self._token_error("The user name or password is incorrect.", req)
            if username in self.mfa_users:
                return _Resp(
                    200,
                    {
                        "mfa_enabled": True,
                        "mfa_token": secrets.token_urlsafe(24),
                        "username": username,
                    },
                )
            return _Resp(200, self._issue(username), {"Cache-Control": "no-store"})
        if grant == "refresh_token":
            old = self._refresh.pop(form.get("refresh_token") or "", None)
            if old is None or old.expires <= self.now():
                return self._token_error("The refresh token is invalid or has expired.", req)
            if old.username not in self.users:
                return self._token_error("The user no longer exists.", req)
            return _Resp(200, self._issue(old.username), {"Cache-Control": "no-store"})
        return self._invalid(
            req, "grant_type", f"Grant type '{form.get('grant_type')}' is not supported."
        )

    def _issue(self, username: str) -> dict:
        now = self.now()
        access = _Token(secrets.token_urlsafe(32), username, now + self.token_lifetime)
        refresh = _Token(secrets.token_urlsafe(32), username, now + self.refresh_lifetime)
        self._access[access.value] = access
        self._refresh[refresh.value] = refresh
        wall = time.time()
        return {
            "access_token": access.value,
            "token_type": "bearer",
            "refresh_token": refresh.value,
            "expires_in": int(self.token_lifetime),
            ".issued": _iso(wall),
            ".expires": _iso(wall + self.token_lifetime),
            "userId": str(uuid.uuid5(uuid.NAMESPACE_URL, username)),
            "username": username,
            "roleName": self.role_name,
            "userType": "Internal",
            "mfa_enabled": False,
            "shortLived": False,
        }

    # ------------------------------------------------------------------ service accounts

    def _validate(self, req: _Req) -> tuple[dict, dict] | _Resp:
        if "json" not in req.content_type:
            return self._problem(415, "The request body must be application/json.", req)
        body = req.body
        if body is _BAD_JSON or not isinstance(body, dict):
            return self._invalid(req, "body", "The request body is not a JSON object.")
        info = body.get("accountInfo")
        login = body.get("clientLoginParameters")
        if not isinstance(info, dict):
            return self._invalid(req, "accountInfo", "The accountInfo field is required.")
        if not isinstance(login, dict):
            return self._invalid(
                req, "clientLoginParameters", "The clientLoginParameters field is required."
            )
        if isinstance(login.get("clientSecret"), str):
            req.client_secret = login["clientSecret"]
        name = info.get("name")
        if not isinstance(name, str) or not name:
            return self._invalid(req, "accountInfo.name", "The accountInfo.name field is required.")
        if not _NAME_RE.match(name):
            return self._invalid(
                req,
                "accountInfo.name",
                "The account name may hold at most 255 Latin letters, digits, '_' and '-'.",
            )
        if info.get("description") is not None and not isinstance(info["description"], str):
            return self._invalid(
                req,
                "accountInfo.description",
                "The accountInfo.description field must be a string.",
            )
        for key in ("applicationId", "tenantId"):
            value = login.get(key)
            if not isinstance(value, str) or not value:
                return self._invalid(
                    req,
                    f"clientLoginParameters.{key}",
                    f"The clientLoginParameters.{key} field is required.",
                )
            if not _GUID_RE.match(value):
                return self._invalid(
                    req,
                    f"clientLoginParameters.{key}",
                    f"The clientLoginParameters.{key} field must be a GUID.",
                )
        if login.get("azureEnvironment") not in ENVIRONMENTS:
            return self._invalid(
                req,
                "clientLoginParameters.azureEnvironment",
                "The clientLoginParameters.azureEnvironment field must be one of "
                + ", ".join(sorted(ENVIRONMENTS))
                + ".",
            )
        unknown = sorted(set(login) - _LOGIN_FIELDS)
        if unknown:  # ClientLoginParameters: "additionalProperties": false
            return self._invalid(
                req,
                f"clientLoginParameters.{unknown[0]}",
                f"The clientLoginParameters.{unknown[0]} field is not known.",
            )
        if login.get("applicationCertificate") is not None:
            refused = self._check_certificate(req, login)
            if refused is not None:
                return refused
        elif not isinstance(login.get("clientSecret"), str) or not login["clientSecret"]:
            return self._invalid(
                req,
                "clientLoginParameters.clientSecret",
                "The clientLoginParameters.clientSecret field is required.",
            )
        purposes = login.get("azureAccountPurposes")
        if purposes is not None:
            if not isinstance(purposes, list) or not all(
                isinstance(p, str) and p in ACCOUNT_PURPOSES for p in purposes
            ):
                return self._invalid(
                    req,
                    "clientLoginParameters.azureAccountPurposes",
                    "The clientLoginParameters.azureAccountPurposes field holds an unknown value.",
                )
        subs = login.get("subscriptions")
        if subs is not None:
            if not isinstance(subs, list) or not all(
                isinstance(s, str) and _GUID_RE.match(s) for s in subs
            ):
                return self._invalid(
                    req,
                    "clientLoginParameters.subscriptions",
                    "The clientLoginParameters.subscriptions field must hold GUIDs.",
                )
        return info, login

    def _check_certificate(self, req: _Req, login: dict) -> _Resp | None:
        """A certificate login (v8.1 ``ClientLoginParameters``: ``applicationCertificate``
        "[Required to authenticate using certificate]", ``applicationCertificateName`` the
        same, ``certificatePassword`` "used to encrypt the certificate"): the file must be a
        PKCS#12 in base64 that opens with the password and holds a key and its certificate.
        Secret and certificate are two ways to authenticate: not both."""
        if login.get("clientSecret"):
            return self._invalid(
                req,
                "clientLoginParameters.clientSecret",
                "Give a client secret or a certificate, not both.",
            )
        name = login.get("applicationCertificateName")
        if not isinstance(name, str) or not name:
            return self._invalid(
                req,
                "clientLoginParameters.applicationCertificateName",
                "The clientLoginParameters.applicationCertificateName field is required.",
            )
        password = login.get("certificatePassword")
        if password is not None and not isinstance(password, str):
            return self._invalid(
                req,
                "clientLoginParameters.certificatePassword",
                "The clientLoginParameters.certificatePassword field must be a string.",
            )
        req.client_secret = password
        try:
            blob = base64.b64decode(str(login["applicationCertificate"]), validate=True)
            key, cert, _ = pkcs12.load_key_and_certificates(
                blob, password.encode() if password else None
            )
        except (ValueError, TypeError, binascii.Error):
            return self._invalid(
                req,
                "clientLoginParameters.applicationCertificate",
                "The certificate cannot be opened with the given password.",
            )
        if key is None or cert is None:
            return self._invalid(
                req,
                "clientLoginParameters.applicationCertificate",
                "The certificate file holds no private key and certificate.",
            )
        req.certificate = cert
        return None

    def _new_operation(self, req: _Req, account_id: str | None, apply: Any) -> _Resp:
        """202 with an operation that passes through ``operation_statuses`` and ends in
        ``operation_outcome``; ``apply`` gives its result and runs once, at its end."""
        statuses = list(self.operation_statuses)
        assert all(st in RUNNING_STATUSES for st in statuses), statuses
        assert self.operation_outcome in FINAL_STATUSES, self.operation_outcome
        op = _Operation(
            str(uuid.uuid4()),
            time.time(),
            statuses[1:],
            self.operation_outcome,
            apply,
            account_id,
            status=statuses[0] if statuses else "Pending",
        )
        self.operations[op.id] = op
        if not statuses:  # finished before the first poll
            self._advance(op, req)
        return _Resp(202, self._operation_json(op, req.match.group("ver") if req.match else "v8.1"))

    def _answer_write(self, req: _Req, account_id: str, apply: Any) -> _Resp:
        if not self.async_save:
            return _Resp(200, apply())  # AzureServiceAccount_SaveByApp: 200 is a JSON string
        return self._new_operation(req, account_id, apply)

    def _answer_read(self, req: _Req, build: Any) -> _Resp:
        if not self.async_reads:
            return _Resp(200, build())
        return self._new_operation(req, req.account_id, build)

    def _save(self, req: _Req) -> _Resp:
        checked = self._validate(req)
        if isinstance(checked, _Resp):
            return checked
        info, login = checked
        if any(a["name"].lower() == info["name"].lower() for a in self.accounts.values()):
            return self._invalid(
                req, "accountInfo.name", f"A service account named '{info['name']}' already exists."
            )
        account_id = str(uuid.uuid4())
        req.account_id = account_id
        record = {
            "id": account_id,
            "name": info["name"],
            "description": info.get("description") or "",
            "applicationId": login["applicationId"].lower(),
            "tenantId": login["tenantId"].lower(),
            "clientSecret": login.get("clientSecret") or "",
            "environment": login["azureEnvironment"],
            "purposes": list(login.get("azureAccountPurposes") or []),
            "subscriptions": [s.lower() for s in login.get("subscriptions") or []],
            **self._certificate_fields(req, login),
            "cloudState": "Valid" if login.get("subscriptions") else "NoSubscriptions",
            "expirationDate": self.expiration_date,
        }

        def apply() -> str:
            self.accounts[account_id] = record
            return account_id

        return self._answer_write(req, account_id, apply)

    def _update(self, req: _Req) -> _Resp:
        assert req.match is not None
        account_id = req.match.group("id")
        req.account_id = account_id
        if account_id not in self.accounts:
            self._validate(req)  # still note the secret that was sent, for the events
            return self._problem(404, f"Service account {account_id} was not found.", req)
        checked = self._validate(req)
        if isinstance(checked, _Resp):
            return checked
        info, login = checked
        if any(
            a["name"].lower() == info["name"].lower() and a["id"] != account_id
            for a in self.accounts.values()
        ):
            return self._problem(
                409, f"A service account named '{info['name']}' already exists.", req
            )

        def apply() -> str:
            record = self.accounts[account_id]
            record.update(
                name=info["name"],
                description=info.get("description") or "",
                applicationId=login["applicationId"].lower(),
                tenantId=login["tenantId"].lower(),
                clientSecret=login.get("clientSecret") or "",
                environment=login["azureEnvironment"],
                # A PUT replaces the settings: what is not sent is gone.
                purposes=list(login.get("azureAccountPurposes") or []),
                subscriptions=[s.lower() for s in login.get("subscriptions") or []],
                **self._certificate_fields(req, login),
                cloudState="Valid" if login.get("subscriptions") else "NoSubscriptions",
            )
            return account_id

        return self._answer_write(req, account_id, apply)

    @staticmethod
    def _certificate_fields(req: _Req, login: dict) -> dict:
        """What the appliance keeps of a login: for assertions, the certificate it was given
        (PEM), its name and the password (a double keeps it, as it keeps secrets)."""
        cert = getattr(req, "certificate", None)
        if cert is None:
            return {
                "origin": "Imported Secret",
                "certificate": None,
                "certificatePassword": None,
                "applicationCertificateName": None,
            }
        return {
            "origin": "Imported Certificate",
            "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "certificatePassword": login.get("certificatePassword"),
            "applicationCertificateBase64": login["applicationCertificate"],
            "applicationCertificateName": login["applicationCertificateName"],
        }

    def _account_json(self, record: dict, ver: str) -> dict:
        base = f"{self.url}/api/{ver}"
        return {
            # ``AzureAccount`` (v8.1): the id is ``accountId``; the client adds an ``id`` alias.
            "accountId": record["id"],
            "applicationId": record["applicationId"],
            "applicationCertificateName": record.get("applicationCertificateName"),
            "name": record["name"],
            "description": record["description"],
            "region": record["environment"],
            "tenantId": record["tenantId"],
            "tenantName": None,
            "accountOrigin": record.get("origin", "Imported Secret"),
            "expirationDate": record["expirationDate"],
            "accountState": "Created",
            "adGroupId": None,
            "cloudState": record["cloudState"],
            "adGroupName": None,
            "purposes": list(record["purposes"]),
            "managementGroupId": None,
            "managementGroupName": None,
            "subscriptionIds": list(record["subscriptions"]),
            "selectedForWorkermanagement": False,
            "azurePermissionsState": list(
                record.get("azurePermissionsState") or ["AllPermissionsAvailable"]
            ),
            "azurePermissionsStateCheckTimeUtc": record.get("azurePermissionsStateCheckTimeUtc"),
            "subscriptionIdForWorkerDeployment": None,
            "_links": {
                "self": {"href": f"{base}/accounts/azure/service/{record['id']}"},
            },
        }

    def _list(self, req: _Req) -> _Resp:
        assert req.match is not None
        # Case-sensitive: ``offset`` / ``limit`` are not these parameters and are ignored.
        try:
            offset = max(0, int(req.query.get("Offset") or 0))
            limit = int(req.query.get("Limit") or -1)
        except ValueError:
            return self._invalid(req, "Offset", "Offset and Limit must be whole numbers.")
        if limit < 0 or limit > self.page_size:
            limit = self.page_size
        ver = req.match.group("ver")

        def page() -> dict:
            records = sorted(self.accounts.values(), key=lambda a: a["name"].lower())
            return {
                "offset": offset,
                "limit": limit,
                "totalCount": None if self.total_count_null else len(records),
                "results": [self._account_json(a, ver) for a in records[offset : offset + limit]],
                "_links": {
                    "self": {
                        "href": f"{self.url}/api/{ver}/accounts/azure/service"
                        f"?Offset={offset}&Limit={limit}"
                    }
                },
            }

        return self._answer_read(req, page)

    def _get(self, req: _Req) -> _Resp:
        assert req.match is not None
        account_id = req.match.group("id")
        req.account_id = account_id
        if account_id not in self.accounts:
            return self._problem(404, f"Service account {account_id} was not found.", req)
        ver = req.match.group("ver")
        return self._answer_read(req, lambda: self._account_json(self.accounts[account_id], ver))

    # ------------------------------------------------------------------ permissions

    def _needed(self, purposes: list[str]) -> tuple[list[str], list[str]]:
        actions: list[str] = []
        data: list[str] = []
        for purpose in purposes:
            entry = self.required_permissions.get(purpose) or {}
            actions += [a for a in entry.get("actions", []) if a not in actions]
            data += [a for a in entry.get("dataActions", []) if a not in data]
        return actions, data

    def _export_permissions(self, req: _Req) -> _Resp:
        # AzureServiceAccount_ExportPermissionsByApp: ``subscriptionId`` (required, uuid) in the
        # query, ``ClientLoginParameters`` as the body, 200 ``application/octet-stream`` with
        # the JSON file VBAzure's Export Permissions button saves. Its content follows the
        # permission lists of the VBAzure user guide ("Service Account Permissions"):
        # {"permissions": [{"actions", "notActions", "dataActions", "notDataActions"}]}.
        if "json" not in req.content_type:
            return self._problem(415, "The request body must be application/json.", req)
        sub = req.query.get("subscriptionId") or ""
        if not _GUID_RE.match(sub):
            return self._invalid(req, "subscriptionId", "The subscriptionId field is required.")
        login = req.body
        if not isinstance(login, dict):
            return self._invalid(req, "body", "The request body is not a JSON object.")
        if isinstance(login.get("clientSecret"), str):
            req.client_secret = login["clientSecret"]
        for key in ("applicationId", "tenantId"):
            if not isinstance(login.get(key), str) or not _GUID_RE.match(login[key]):
                return self._invalid(req, key, f"The {key} field is required and must be a GUID.")
        if login.get("azureEnvironment") not in ENVIRONMENTS:
            return self._invalid(req, "azureEnvironment", "The azureEnvironment field is invalid.")
        purposes = login.get("azureAccountPurposes") or []
        if not isinstance(purposes, list) or not all(p in ACCOUNT_PURPOSES for p in purposes):
            return self._invalid(
                req, "azureAccountPurposes", "The azureAccountPurposes field holds an unknown value."
            )
        actions, data = self._needed(purposes)
        document = {
            "permissions": [
                {"actions": actions, "notActions": [], "dataActions": data, "notDataActions": []}
            ]
        }
        return _Resp(
            200,
            json.dumps(document, indent=2).encode(),
            {"Content-Type": "application/octet-stream"},
        )

    def _check_permissions(self, req: _Req) -> _Resp:
        # AzureServiceAccount_CheckPermissions: ``subscriptionId`` and ``purposes`` are query
        # arrays (repeated parameters); 200 with a ``SubscriptionsListingResult``.
        assert req.match is not None
        account_id = req.match.group("id")
        req.account_id = account_id
        record = self.accounts.get(account_id)
        if record is None:
            return self._problem(404, f"Service account {account_id} was not found.", req)
        subs = [s.lower() for s in req.query_all.get("subscriptionId", [])] or list(
            record["subscriptions"]
        )
        if not all(_GUID_RE.match(s) for s in subs):
            return self._invalid(req, "subscriptionId", "The subscriptionId values must be GUIDs.")
        purposes = req.query_all.get("purposes", []) or list(record["purposes"])
        if not all(p in ACCOUNT_PURPOSES for p in purposes):
            return self._invalid(req, "purposes", "The purposes field holds an unknown value.")
        results = []
        all_present = True
        for sub in subs:
            blocks = (
                self.azure_permissions(record["applicationId"], sub)
                if self.azure_permissions is not None
                else None
            )
            missing_purposes = []
            missing_actions: list[str] = []
            missing_data: list[str] = []
            for purpose in purposes:
                actions, data = self._needed([purpose])
                lacks = [a for a in actions if blocks is not None and not _allows(blocks, a)]
                lacks_data = [
                    a for a in data if blocks is not None and not _allows(blocks, a, data=True)
                ]
                if lacks or lacks_data:
                    missing_purposes.append(
                        {
                            "purpose": purpose,
                            "missingActions": lacks,
                            "missingDataActions": lacks_data,
                        }
                    )
                missing_actions += [a for a in lacks if a not in missing_actions]
                missing_data += [a for a in lacks_data if a not in missing_data]
            providers = list(self.missing_providers.get(sub, []))
            if missing_actions or missing_data or providers:
                all_present = False
            results.append(
                {
                    "id": sub,
                    "name": None,
                    "tenantId": record["tenantId"],
                    "permissionsState": "Insufficient"
                    if missing_actions or missing_data
                    else "AvailableAll",
                    "missingPermissions": missing_actions,
                    "missingDataActions": missing_data,
                    "resourceProvidersState": "Insufficient" if providers else "AvailableAll",
                    "missingResourceProviders": providers,
                    "purposes": [
                        p
                        for p in purposes
                        if p not in {m["purpose"] for m in missing_purposes}
                    ],
                    "missingPurposes": missing_purposes,
                    "availability": "Available",
                }
            )
        record["azurePermissionsState"] = [
            "AllPermissionsAvailable" if all_present else "MissingPermissions"
        ]
        record["azurePermissionsStateCheckTimeUtc"] = _iso(time.time())
        body = {
            "environment": record["environment"],
            "applianceTenantId": None,
            "defaultTenantId": record["tenantId"],
            "defaultTenantName": None,
            "subscriptions": results,
            "requiredRolesHint": None,
        }
        return self._answer_read(req, lambda: body)

    # ------------------------------------------------------------------ operations

    def _operation_json(self, op: _Operation, ver: str) -> dict:
        return {
            "id": op.id,
            "startTime": _iso(op.started),
            "status": op.status,
            "result": op.result,
            "error": op.error,
            "_links": {"self": {"href": f"{self.url}/api/{ver}/operations/{op.id}"}},
        }

    def _advance(self, op: _Operation, req: _Req) -> None:
        """One poll's worth of progress: the next in-progress status, or the outcome."""
        if op.status not in RUNNING_STATUSES:
            return
        if op.statuses:
            op.status = op.statuses.pop(0)
            return
        op.status = op.outcome
        if op.outcome in ("Success", "Warning"):
            result = op.apply()
            op.result = result if op.outcome == "Success" or self.warning_result else None
        else:
            # ``ProblemDetails`` (the operation's ``error``): type, title, status, detail,
            # instance, extensions.
            op.error = {
                "type": _PROBLEM_TYPES[400],
                "title": "Service account validation failed",
                "status": 400,
                "detail": "The application could not sign in to Microsoft Entra ID "
                "with the given client secret.",
                "instance": req.path,
            }

    def _operation(self, req: _Req) -> _Resp:
        assert req.match is not None
        op = self.operations.get(req.match.group("id"))
        if op is None:
            return self._problem(404, "The operation was not found.", req)
        req.account_id = op.account_id
        self._advance(op, req)
        return _Resp(200, self._operation_json(op, req.match.group("ver")))


def _match(pattern: str, action: str) -> bool:
    """ARM's matching: case-insensitive, ``*`` matches anything including ``/``."""
    rx = "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"
    return re.match(rx, action, re.I) is not None


def _allows(blocks: list[dict], action: str, data: bool = False) -> bool:
    allow, deny = ("dataActions", "notDataActions") if data else ("actions", "notActions")
    return any(
        any(_match(a, action) for a in block.get(allow, []))
        and not any(_match(n, action) for n in block.get(deny, []))
        for block in blocks
    )


#: What the double's appliance says each purpose needs (a small excerpt in the spirit of the
#: VBAzure user guide's per-workload permission pages; tests may replace it).
DEFAULT_REQUIRED_PERMISSIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "VirtualMachineBackup": (
        (
            "Microsoft.Authorization/roleAssignments/read",
            "Microsoft.Compute/disks/read",
            "Microsoft.Compute/snapshots/write",
            "Microsoft.Compute/virtualMachines/read",
        ),
        (),
    ),
    "VirtualMachineRestore": (
        ("Microsoft.Compute/disks/write", "Microsoft.Compute/virtualMachines/write"),
        (),
    ),
    "AzureSqlBackup": (("Microsoft.Sql/servers/databases/read",), ()),
    "AzureSqlRestore": (("Microsoft.Sql/servers/databases/write",), ()),
    "AzureFiles": (("Microsoft.Storage/storageAccounts/fileServices/shares/read",), ()),
    "VnetBackup": (("Microsoft.Network/virtualNetworks/read",), ()),
    "VnetRestore": (("Microsoft.Network/virtualNetworks/write",), ()),
    "CosmosBackup": (("Microsoft.DocumentDB/databaseAccounts/read",), ()),
    "CosmosRestore": (("Microsoft.DocumentDB/databaseAccounts/restore/action",), ()),
    "Repository": (
        (
            "Microsoft.Storage/storageAccounts/read",
            "Microsoft.Storage/storageAccounts/blobServices/containers/write",
        ),
        (
            "Microsoft.KeyVault/vaults/keys/encrypt/action",
            "Microsoft.KeyVault/vaults/keys/decrypt/action",
            "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",
        ),
    ),
}


class _BadJson:
    def __repr__(self) -> str:
        return "<malformed JSON>"


_BAD_JSON = _BadJson()


__all__ = [
    "ACCOUNT_PURPOSES",
    "CLOUD_STATES",
    "FINAL_STATUSES",
    "ORIGINS",
    "RUNNING_STATUSES",
    "DEFAULT_PASSWORD",
    "DEFAULT_USERNAME",
    "ENVIRONMENTS",
    "Event",
    "Fault",
    "Hang",
    "VBAzureDouble",
]
