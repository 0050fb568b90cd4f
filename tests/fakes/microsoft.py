"""An in-process double of the Microsoft identity platform, Microsoft Graph and ARM.

Three real HTTPS servers on loopback (login, Graph, ARM) share one in-memory tenant
state. They speak the wire formats closely enough that unmodified MSAL and an httpx
client written from Microsoft's documentation work against them::

    ca = TestCA()
    with MicrosoftDouble(ca) as dbl:
        app = msal.PublicClientApplication(
            AZURE_CLI_CLIENT_ID, authority=f"{dbl.authority_host}/organizations",
            instance_discovery=False, http_client=ca.httpx_client())
        flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
        dbl.approve()                      # the most recent flow, as Alice
        result = app.acquire_token_by_device_flow(flow, exit_condition=lambda f: True)

Everything a test may want to script or inspect is a public attribute or method of
``MicrosoftDouble``; see its docstring for the list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import string
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from tests.fakes import keycreds
from tests.fakes.tls import TestCA, TLSHandler, TLSServer

# --------------------------------------------------------------------------- constants

DEFAULT_TENANT_ID = "7f3c1a52-0d1e-4b8e-9b1a-5e2c3d4f6a7b"
DEFAULT_TENANT_NAME = "Contoso"
DEFAULT_DOMAIN = "contoso.onmicrosoft.com"
MSA_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"  # personal Microsoft accounts
ALICE_UPN = "alice@contoso.onmicrosoft.com"
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"

DEFAULT_SUBSCRIPTIONS = (
    ("3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f", "Contoso Production"),
    ("5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d", "Contoso Dev/Test"),
)

# Entra directory role templates
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
APPLICATION_ADMINISTRATOR = "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3"
CLOUD_APPLICATION_ADMINISTRATOR = "158c047a-c907-4556-b7ef-446551a6b5f7"
APPLICATION_DEVELOPER = "cf1c38e5-3621-4004-a7cb-879624dced7c"
GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"
HYBRID_IDENTITY_ADMINISTRATOR = "8ac3fc64-6eca-42ea-9e69-59f4c7b60eb2"
SECURITY_READER = "5d6b6bb7-de71-4623-b4af-96380a352509"
USER_ADMINISTRATOR = "fe930be7-5e62-47db-91af-98c3a49a38b1"
PRIVILEGED_ROLE_ADMINISTRATOR = "e8611ab8-c189-46e8-94e1-60213ab1f814"

DIRECTORY_ROLE_NAMES = {
    GLOBAL_ADMINISTRATOR: "Global Administrator",
    APPLICATION_ADMINISTRATOR: "Application Administrator",
    CLOUD_APPLICATION_ADMINISTRATOR: "Cloud Application Administrator",
    APPLICATION_DEVELOPER: "Application Developer",
    GLOBAL_READER: "Global Reader",
    HYBRID_IDENTITY_ADMINISTRATOR: "Hybrid Identity Administrator",
    SECURITY_READER: "Security Reader",
    USER_ADMINISTRATOR: "User Administrator",
    PRIVILEGED_ROLE_ADMINISTRATOR: "Privileged Role Administrator",
}
#: Built-in roles holding microsoft.directory/applications/create (or createAsOwner, or
#: Global Administrator's applications/allProperties/allTasks): they register applications
#: whatever "Users can register applications" says (Entra built-in roles reference).
APP_CREATOR_ROLES = frozenset(
    {
        GLOBAL_ADMINISTRATOR,
        APPLICATION_ADMINISTRATOR,
        CLOUD_APPLICATION_ADMINISTRATOR,
        APPLICATION_DEVELOPER,
        HYBRID_IDENTITY_ADMINISTRATOR,
    }
)
#: The tenant default app management policy's id.
DEFAULT_APP_POLICY_ID = "00000000-0000-0000-0000-000000000000"
#: Directory roles that may read the tenant default app management policy: Graph's "Get
#: tenantAppManagementPolicy" names Global Reader the least privileged; the built-in roles
#: reference gives policies read to these (application admins hold only applicationPolicies
#: read, so the double refuses them: it must not be kinder than Graph).
APP_POLICY_READER_ROLES = frozenset(
    {GLOBAL_ADMINISTRATOR, GLOBAL_READER, SECURITY_READER, USER_ADMINISTRATOR}
)
APP_MANAGER_ROLES = frozenset(
    {GLOBAL_ADMINISTRATOR, APPLICATION_ADMINISTRATOR, CLOUD_APPLICATION_ADMINISTRATOR}
)

# Azure built-in role definitions
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"
RBAC_ADMINISTRATOR = "f58310d9-a9f6-439a-9e8d-f62e7b41a168"
KEY_VAULT_CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"

ROLE_ASSIGNMENT_WRITE = "Microsoft.Authorization/roleAssignments/write"
ROLE_ASSIGNMENT_DELETE = "Microsoft.Authorization/roleAssignments/delete"
ROLE_ASSIGNMENT_READ = "Microsoft.Authorization/roleAssignments/read"
ROLE_DEFINITION_WRITE = "Microsoft.Authorization/roleDefinitions/write"
ROLE_DEFINITION_DELETE = "Microsoft.Authorization/roleDefinitions/delete"

_GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
#: First-party resource application ids, as named in Conditional Access errors.
_RESOURCE_APP_IDS = {
    "arm": "797f4846-ba00-4fd7-ba43-dac1f8f63013",  # Windows Azure Service Management API
    "graph": "00000003-0000-0000-c000-000000000000",  # Microsoft Graph
}
_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
_USER_CODE_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "~._-"


def _is_guid(value: str) -> bool:
    return bool(_GUID_RE.match(value or ""))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unsigned_jwt(claims: dict) -> str:
    header = {"typ": "JWT", "alg": "none"}
    return (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        + "."
    )


def _iso(ts: float, digits: int = 7) -> str:
    """Graph-style UTC timestamp: ``2024-05-06T10:11:12.1234567Z`` (``digits=0``: no fraction)."""
    dt = datetime.fromtimestamp(ts, UTC)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if digits <= 0:
        return base + "Z"
    return f"{base}.{(f'{dt.microsecond:06d}0')[:digits]}Z"


def _aad_timestamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _parse_iso(value: str) -> float:
    dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _plus_years(ts: float, years: int) -> float:
    dt = datetime.fromtimestamp(ts, UTC)
    try:
        return dt.replace(year=dt.year + years).timestamp()
    except ValueError:  # 29 February
        return (dt + timedelta(days=365 * years + 1)).timestamp()


def _wildcard_match(pattern: str, action: str) -> bool:
    """ARM action matching: case-insensitive, ``*`` matches anything including ``/``."""
    rx = "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"
    return re.match(rx, action, re.I) is not None


def permissions_allow(blocks: Iterable[dict], action: str) -> bool:
    """True when some permission block's ``actions`` match and its ``notActions`` don't."""
    for block in blocks:
        if any(_wildcard_match(a, action) for a in block.get("actions", [])) and not any(
            _wildcard_match(n, action) for n in block.get("notActions", [])
        ):
            return True
    return False


# --------------------------------------------------------------------------- AADSTS table

# code -> (OAuth error, HTTP status, description template, extra fields)
AADSTS: dict[int, tuple[str, int, str, dict]] = {
    70016: (
        "authorization_pending",
        400,
        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        {},
    ),
    70018: (
        "bad_verification_code",
        400,
        "Invalid verification code entered. The user typed a wrong user code for the "
        "device code flow. Authorization is not approved.",
        {},
    ),
    70019: (
        "expired_token",
        400,
        "Verification code expired. Have the user retry the sign-in.",
        {},
    ),
    70000: (
        "invalid_grant",
        400,
        "The request was denied because one or more grants are invalid. The provided "
        "device code has already been redeemed.",
        {},
    ),
    53003: (
        "invalid_grant",
        400,
        "Access has been blocked by Conditional Access policies. The access policy does "
        "not allow token issuance.",
        {},
    ),
    530033: (
        "invalid_grant",
        400,
        "Access has been blocked by Conditional Access policies. The access policy requires "
        "a managed device, and this device flow cannot satisfy it.",
        {},
    ),
    50076: (
        "invalid_grant",
        400,
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must use multi-factor authentication to access '{resource}'.",
        {"suberror": "basic_action"},
    ),
    50079: (
        "invalid_grant",
        400,
        "Due to a configuration change made by your administrator, or because you moved to a "
        "new location, you must enroll in multi-factor authentication to access "
        "'{resource}'.",
        {"suberror": "basic_action"},
    ),
    50020: (
        "invalid_grant",
        400,
        "User account '{user}' from identity provider '{idp}' does not exist in tenant "
        "'{tenant_name}' and cannot access the application '{client_id}'(Microsoft Azure CLI) "
        "in that tenant. The account needs to be added as an external user in the tenant "
        "first. Sign out and sign in again with a different Azure Active Directory user "
        "account.",
        {},
    ),
    90002: (
        "invalid_request",
        400,
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
        "are signing into the correct cloud. Check with your subscription administrator, this "
        "may happen if there are no active subscriptions for the tenant.",
        {},
    ),
    700016: (
        "unauthorized_client",
        400,
        "Application with identifier '{client_id}' was not found in the directory "
        "'{tenant_name}'. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You may have "
        "sent your authentication request to the wrong tenant.",
        {},
    ),
    65001: (
        "invalid_grant",
        400,
        "The user or administrator has not consented to use the application with ID "
        "'{client_id}' named 'Microsoft Azure CLI'. Send an interactive authorization "
        "request for this user and resource.",
        {"suberror": "consent_required"},
    ),
    65002: (
        "invalid_client",
        400,
        "Consent between first party application '{client_id}' and first party resource "
        "'{resource}' must be configured via preauthorization - applications owned and "
        "operated by Microsoft must get approval from the API owner before requesting "
        "tokens for that API.",
        {},
    ),
    700022: (
        "invalid_scope",
        400,
        "The provided value for the input parameter scope is not valid because it contains "
        "more than one resource. Scope {scope} is not valid.",
        {},
    ),
    70011: (
        "invalid_scope",
        400,
        "The provided request must include a 'scope' input parameter. The provided value for "
        "the input parameter 'scope' is not valid. The scope {scope} is not valid.",
        {},
    ),
    500011: (
        "invalid_resource",
        400,
        "The resource principal named {resource} was not found in the tenant named "
        "{tenant_name}. This can happen if the application has not been installed by the "
        "administrator of the tenant or consented to by any user in the tenant. You might "
        "have sent your authentication request to the wrong tenant.",
        {},
    ),
    1002012: (
        "invalid_scope",
        400,
        "The provided value for scope {scope} is not valid. Client credential flows must "
        "have a scope value with /.default suffixed to the resource identifier "
        "(application ID URI).",
        {},
    ),
    50027: (
        "invalid_request",
        400,
        "JWT token is invalid or malformed.",
        {},
    ),
    700021: (
        "invalid_client",
        401,
        "Client assertion application identifier doesn't match 'client_id' parameter.",
        {},
    ),
    700024: (
        "invalid_client",
        401,
        "Client assertion is not within its valid time range.",
        {},
    ),
    700027: (
        "invalid_client",
        401,
        "Client assertion failed signature validation, or the certificate that signed it is "
        "not registered on application '{client_id}'.",
        {},
    ),
    7000215: (
        "invalid_client",
        401,
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app "
        "'{client_id}'.",
        {},
    ),
    7000222: (
        "invalid_client",
        401,
        "The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
        "portal to create new keys for your app: https://aka.ms/NewClientSecret, or "
        "consider using certificate credentials for added security: "
        "https://aka.ms/certCreds.",
        {},
    ),
    7000229: (
        "invalid_client",
        400,
        "The client application {client_id} is missing service principal in the tenant "
        "{tenant}. See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119",
        {},
    ),
    50059: (
        "invalid_request",
        400,
        "No tenant-identifying information found in either the request or implied by any "
        "provided credentials.",
        {},
    ),
    900144: (
        "invalid_request",
        400,
        "The request body must contain the following parameter: '{param}'.",
        {},
    ),
    9002313: ("invalid_request", 400, "Invalid request. Request is malformed or invalid.", {}),
    50173: (
        "invalid_grant",
        400,
        "The provided grant has expired due to it being revoked, a fresh auth token is "
        "needed. The user might have changed or reset their password.",
        {},
    ),
    700082: (
        "invalid_grant",
        400,
        "The refresh token has expired due to inactivity. The token was issued on {issued} "
        "and was inactive for 90.00:00:00.",
        {},
    ),
    70003: (
        "unsupported_grant_type",
        400,
        "The app requested an unsupported grant type '{grant_type}'.",
        {},
    ),
    90055: (
        "temporarily_unavailable",
        429,
        "There are too many incoming requests. Please try again later.",
        {},
    ),
    90033: (
        "temporarily_unavailable",
        503,
        "A transient error has occurred. Please try again.",
        {},
    ),
}


class _Fmt(dict):
    def __missing__(self, key):  # leave unknown placeholders readable
        return "{" + key + "}"


# --------------------------------------------------------------------------- state objects


@dataclass
class Tenant:
    id: str
    display_name: str
    domains: list[str]
    allowed_to_create_apps: bool = True
    policy_forbidden: bool = False
    personal: bool = False
    #: Conditional Access "require multifactor authentication" per resource audience
    #: ("arm" = Windows Azure Service Management API, "graph" = Microsoft Graph).
    mfa_required_for: set[str] = field(default_factory=set)
    #: The tenant default app management policy for applications' client secrets:
    #: `passwordLifetime` (max days) and `passwordAddition` (no client secrets at all).
    password_max_days: float | None = None
    passwords_blocked: bool = False
    #: The same policy for certificates: `asymmetricKeyLifetime` (max days).
    key_max_days: float | None = None

    @property
    def default_domain(self) -> str:
        return self.domains[0] if self.domains else self.id


@dataclass
class User:
    upn: str
    name: str
    oid: str
    tenant_id: str  # directory the user object lives in (MSA tenant for personal accounts)
    directory_roles: set[str] = field(default_factory=set)
    personal: bool = False
    guest_idp: str | None = None
    groups: list[dict] = field(default_factory=list)
    #: A B2B guest object (userType Guest) in a resource tenant: the person's user object in
    #: their home tenant. The person signs in with the home account; in the resource tenant
    #: they act as this object (its own object id, roles and role assignments).
    home: User | None = None

    @property
    def tid(self) -> str:
        return MSA_TENANT_ID if self.personal else self.tenant_id

    @property
    def user_type(self) -> str:
        return "Guest" if self.home is not None or self.guest_idp else "Member"

    @property
    def person(self) -> User:
        """The home account behind this object (itself unless it is a B2B guest)."""
        return self.home if self.home is not None else self


@dataclass
class Subscription:
    subscription_id: str
    name: str
    tenant_id: str
    state: str = "Enabled"
    #: The management group it sits in directly (None: the tenant root, not modelled).
    management_group: str | None = None

    @property
    def scope(self) -> str:
        return f"/subscriptions/{self.subscription_id}"


MG_PREFIX = "/providers/Microsoft.Management/managementGroups/"
MG_READ = "Microsoft.Management/managementGroups/read"


@dataclass
class ManagementGroup:
    """An Azure management group ("Organize your resources with management groups",
    learn.microsoft.com/azure/governance/management-groups/overview): a container of
    subscriptions and other groups. Role assignments at its scope are inherited by every
    group and subscription below it. Its id is unique in the tenant; ids compare without
    regard to case."""

    id: str
    name: str
    tenant_id: str
    parent: str | None = None  # the parent group's id (None: below the tenant root)

    @property
    def scope(self) -> str:
        return f"{MG_PREFIX}{self.id}"

    subscription_id = None  # a group is no subscription (assignment handlers ask)


@dataclass
class RoleDefinition:
    id: str
    name: str
    description: str
    actions: list[str]
    not_actions: list[str] = field(default_factory=list)
    data_actions: list[str] = field(default_factory=list)
    not_data_actions: list[str] = field(default_factory=list)
    # Custom roles (created through PUT …/roleDefinitions/{id}); built-ins leave these be.
    custom: bool = False
    tenant_id: str | None = None
    assignable_scopes: list[str] = field(default_factory=list)
    created_by: str | None = None
    #: Replication: the number of role assignments that will not find it yet.
    invisible: int = 0

    def permission_block(self) -> dict:
        return {
            "actions": list(self.actions),
            "notActions": list(self.not_actions),
            "dataActions": list(self.data_actions),
            "notDataActions": list(self.not_data_actions),
        }


@dataclass
class RoleAssignment:
    name: str  # the GUID in the URL
    scope: str  # e.g. /subscriptions/{id}
    role_definition_id: str  # GUID
    principal_id: str
    principal_type: str
    created_on: float
    created_by: str | None = None
    description: str | None = None

    @property
    def subscription_id(self) -> str | None:
        m = re.match(r"^/subscriptions/([^/]+)", self.scope, re.I)
        return m.group(1).lower() if m else None


@dataclass
class Password:
    key_id: str
    display_name: str | None
    secret_text: str
    hint: str
    start: float
    end: float
    pending_rejections: int = 0  # new_secret_delay: client-credential attempts still refused


@dataclass
class Application:
    id: str
    app_id: str
    tenant_id: str
    created_at: float
    props: dict  # displayName, uniqueName, signInAudience, description, notes, tags, ...
    passwords: list[Password] = field(default_factory=list)
    keys: list[keycreds.KeyCred] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    invisible: int = 0  # replication delay: reads/uses still answered "not found"
    deleted_at: float | None = None

    @property
    def display_name(self) -> str:
        return self.props.get("displayName")

    @property
    def unique_name(self) -> str | None:
        return self.props.get("uniqueName")


@dataclass
class ServicePrincipal:
    id: str
    app_id: str
    tenant_id: str
    display_name: str
    created_at: float
    props: dict = field(default_factory=dict)
    invisible: int = 0


@dataclass
class DeviceFlow:
    user_code: str
    device_code: str
    client_id: str
    tenant: str  # tenant segment of the request URL
    scope: list[str]
    created_at: float
    expires_at: float
    interval: int
    state: str = "pending"  # pending|approved|declined|expired|bad_code|redeemed
    user: User | None = None
    script: list | None = None
    script_offset: int = 0  # polls made before the current script was set
    polls: int = 0
    poll_times: list[float] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # per poll: "token" or the error/status


@dataclass
class AccessToken:
    token: str
    kind: str  # "user" | "app"
    audience: str  # "graph" | "arm"
    tenant_id: str
    client_id: str
    scopes: list[str]
    issued_at: float
    expires_at: float
    user: User | None = None
    service_principal: ServicePrincipal | None = None

    @property
    def principal_id(self) -> str:
        if self.user is not None:
            return self.user.oid
        return self.service_principal.id if self.service_principal else ""

    @property
    def principal_name(self) -> str:
        return self.user.upn if self.user is not None else self.client_id


@dataclass
class RefreshToken:
    token: str
    user: User
    tenant_id: str
    client_id: str
    issued_at: float
    expires_at: float
    revoked: bool = False
    #: The sign-in behind it satisfied MFA; the claim travels with the session to every
    #: resource redeemed from it (Entra: the refresh token carries the MFA claim).
    mfa: bool = False


@dataclass
class ClientLogin:
    app_id: str
    key_id: str
    tenant_id: str
    audience: str
    time: float


@dataclass
class RecordedRequest:
    server: str  # login|graph|arm
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names, Authorization removed
    body: Any
    time: float
    status: int = 0
    #: When the answer was sent (the double's clock); 0 until then.
    answered: float = 0.0


@dataclass
class Fault:
    server: str
    method: str | None
    path_regex: re.Pattern
    status: int
    body: Any
    retry_after: int | float | None
    times: int
    headers: dict = field(default_factory=dict)
    hits: int = 0
    #: The request is carried out, and its answer arrives cut short (truncated JSON).
    truncate: bool = False


@dataclass
class Rendezvous:
    """Two kinds of request, each answered only once one of the other kind has arrived (or
    after `timeout`): a client that sends them side by side gets both answers at once; one
    that waits for the first answer before sending the second stalls for the timeout, and
    `met` says so. A test of concurrency with no clock in it."""

    sides: tuple[Callable[[RecordedRequest], bool], Callable[[RecordedRequest], bool]]
    timeout: float
    arrived: tuple[threading.Event, threading.Event] = field(
        default_factory=lambda: (threading.Event(), threading.Event())
    )
    waited: list[bool | None] = field(default_factory=lambda: [None, None])

    @property
    def met(self) -> bool:
        """Both kinds arrived, each while the other was still unanswered."""
        return self.waited == [True, True]


# --------------------------------------------------------------------------- HTTP plumbing


class _Resp:
    __slots__ = ("status", "body", "headers", "truncate")

    def __init__(self, status: int, body: Any = None, headers: dict | None = None):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.truncate = False


class _Req:
    def __init__(self, server, method, path, query, headers, raw, body, bad_json):
        self.server = server
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.raw = raw
        self.body = body
        self.bad_json = bad_json
        self.match: re.Match | None = None
        self.token: AccessToken | None = None

    @property
    def form(self) -> dict:
        return self.body if isinstance(self.body, dict) else {}

    def group(self, name: str) -> str:
        assert self.match is not None
        return self.match.group(name)


_Handler = TLSHandler


class _Server(TLSServer):
    def __init__(self, double: MicrosoftDouble, name: str, ssl_context: Any) -> None:
        self.name = name
        super().__init__(double, ssl_context)


# --------------------------------------------------------------------------- the double


class MicrosoftDouble:
    """Login server + Graph + ARM on three loopback HTTPS ports, one shared tenant state.

    URLs (after ``start()``): ``authority_host``, ``graph_url``, ``arm_url``.

    Knobs (per instance): ``device_expires_in`` (900), ``device_interval`` (5),
    ``access_token_lifetime`` (3599), ``page_size`` (100), ``replication_delay`` (0),
    ``new_secret_delay`` (0), ``latency`` (0.0),
    ``unknown_clients`` (set of client ids answered with AADSTS700016).

    Scripting: ``approve``, ``decline``, ``expire``, ``script_next_flow``, ``script_flow``,
    ``script_refresh``, ``fault``, ``advance``/``now``.

    State: ``tenants``, ``users``, ``subscriptions``, ``role_definitions``,
    ``role_assignments``, ``applications``, ``deleted_applications``,
    ``service_principals``, ``flows``, ``access_tokens``, ``refresh_tokens``,
    ``client_logins``, ``requests``, ``internal_errors``.
    """

    def __init__(self, ca: TestCA):
        self.ca = ca
        self.lock = threading.RLock()
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        self.authority_host = ""
        self.graph_url = ""
        self.arm_url = ""
        self.issuer_host = "https://login.microsoftonline.com"

        # knobs
        self.device_expires_in = 900
        self.device_interval = 5
        #: Each cloud's sign-in page: …/devicelogin (public), …/deviceloginus (US Gov),
        #: …/deviceloginchina (21Vianet).
        self.verification_uri = "https://microsoft.com/devicelogin"
        self.access_token_lifetime = 3599
        self.refresh_token_lifetime = 90 * 86400
        self.page_size = 100
        self.replication_delay = 0
        #: How POST /servicePrincipals refuses an application not replicated yet:
        #: "no_backing" (400), "local_tenant" (403), "not_exist" (404).
        self.sp_replication_form = "no_backing"
        self.new_secret_delay = 0
        #: How many role assignments naming a just-created custom role definition are answered
        #: 400 RoleDefinitionDoesNotExist before it has replicated.
        self.role_definition_replication = 0
        self.latency = 0.0
        self.unknown_clients: set[str] = set()

        # clock
        self._offset = 0.0

        # state
        self.tenants: dict[str, Tenant] = {}
        self.users: dict[str, User] = {}  # oid -> user
        self.subscriptions: dict[str, Subscription] = {}  # lower-case id -> subscription
        self.management_groups: dict[str, ManagementGroup] = {}  # lower-case id -> group
        self.role_definitions: dict[str, RoleDefinition] = {}
        self.role_assignments: list[RoleAssignment] = []
        self._apps: dict[str, Application] = {}
        self.deleted_applications: list[Application] = []
        self._sps: dict[str, ServicePrincipal] = {}
        self.flows: list[DeviceFlow] = []
        self._flow_scripts: list[list] = []
        self._refresh_script: list = []
        self.access_tokens: dict[str, AccessToken] = {}
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.client_logins: list[ClientLogin] = []
        #: Why client assertions / key-rolling proofs were refused (for assertions).
        self.refused_assertions: list[str] = []
        self.refused_proofs: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.rendezvous: list[Rendezvous] = []
        self.internal_errors: list[str] = []

        self._routes = {
            "login": self._login_routes(),
            "graph": self._graph_routes(),
            "arm": self._arm_routes(),
        }
        self._seed()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MicrosoftDouble:
        if self._servers:
            return self
        for name in ("login", "graph", "arm"):
            server = _Server(self, name, self.ca.server_context())
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.01},
                name=f"microsoft-double-{name}",
                daemon=True,
            )
            thread.start()
            self._servers[name] = server
            self._threads.append(thread)
        port = {n: s.server_address[1] for n, s in self._servers.items()}
        self.authority_host = f"https://127.0.0.1:{port['login']}"
        self.graph_url = f"https://127.0.0.1:{port['graph']}"
        self.arm_url = f"https://127.0.0.1:{port['arm']}"
        return self

    def stop(self) -> None:
        servers, self._servers = self._servers, {}
        stoppers = [threading.Thread(target=s.shutdown, daemon=True) for s in servers.values()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(timeout=5)
        for server in servers.values():
            server.drop_connections()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> MicrosoftDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        """The double's clock: wall time plus everything passed to ``advance``."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self._offset += seconds

    # ------------------------------------------------------------------ seeding

    def _seed(self) -> None:
        self.tenants[MSA_TENANT_ID] = Tenant(MSA_TENANT_ID, "Microsoft Accounts", [], personal=True)
        self.add_tenant(DEFAULT_TENANT_ID, display_name=DEFAULT_TENANT_NAME, domain=DEFAULT_DOMAIN)
        for rd in _builtin_roles():
            self.role_definitions[rd.id] = rd
        self.alice = self.add_user(
            ALICE_UPN, name="Alice Admin", directory_roles=[GLOBAL_ADMINISTRATOR]
        )
        for sid, name in DEFAULT_SUBSCRIPTIONS:
            self.add_subscription(sid, name=name)
            self.grant(self.alice, sid, OWNER)

    def add_tenant(
        self,
        tenant_id: str | None = None,
        display_name: str = "Fabrikam",
        domain: str | None = None,
        allowed_to_create_apps: bool = True,
        extra_domains: Iterable[str] = (),
        mfa_required_for: Iterable[str] = (),
    ) -> Tenant:
        tenant_id = (tenant_id or str(uuid.uuid4())).lower()
        domain = domain or re.sub(r"[^a-z0-9]", "", display_name.lower()) + ".onmicrosoft.com"
        with self.lock:
            tenant = Tenant(
                tenant_id,
                display_name,
                [domain, *extra_domains],
                allowed_to_create_apps=allowed_to_create_apps,
                mfa_required_for=set(mfa_required_for),
            )
            self.tenants[tenant_id] = tenant
        return tenant

    def add_user(
        self,
        upn: str,
        name: str | None = None,
        tenant_id: str | None = None,
        directory_roles: Iterable[str] = (),
        personal: bool = False,
        guest_idp: str | None = None,
        groups: Iterable[str | dict] = (),
        oid: str | None = None,
    ) -> User:
        """Add a user. ``personal=True`` makes a Microsoft account (tid = MSA tenant);
        ``guest_idp`` (e.g. ``"live.com"``) makes a guest whose id tokens carry ``idp``."""
        tenant_id = MSA_TENANT_ID if personal else (tenant_id or DEFAULT_TENANT_ID).lower()
        if tenant_id not in self.tenants:
            raise KeyError(f"unknown tenant {tenant_id}")
        if name is None:
            local = upn.split("@")[0]
            name = " ".join(p.capitalize() for p in re.split(r"[._-]", local) if p)
        oid = oid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{tenant_id}:{upn.lower()}"))
        group_objs = []
        for g in groups:
            if isinstance(g, str):
                g = {
                    "displayName": g,
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"group:{tenant_id}:{g}")),
                }
            group_objs.append(g)
        user = User(
            upn, name, oid, tenant_id, set(directory_roles), personal, guest_idp, group_objs
        )
        with self.lock:
            self.users[oid] = user
        return user

    def add_guest(
        self, user: str | User, tenant_id: str, directory_roles: Iterable[str] = ()
    ) -> User:
        """Invite `user` (a member of its home tenant) as a B2B guest of `tenant_id`: a new
        user object there, userType Guest, with a `#EXT#` user principal name and an object
        id of its own (Entra B2B: "Properties of a B2B guest user"). The person signs in with
        the home account; tenant `tenant_id` lists among the tenants they reach."""
        home = self.user(user).person
        tenant = self.tenants[tenant_id.lower()]
        local = home.upn.replace("@", "_")
        upn = f"{local}#EXT#@{tenant.default_domain}"
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"guest:{tenant.id}:{home.oid}"))
        guest = User(upn, home.name, oid, tenant.id, set(directory_roles), home=home)
        with self.lock:
            self.users[oid] = guest
        return guest

    def in_tenant(self, user: User, tenant_id: str) -> User | None:
        """The person's user object in `tenant_id`: their own (home), their guest object
        there, or None when they do not exist in that tenant."""
        person = user.person
        if person.tenant_id == tenant_id:
            return person
        with self.lock:
            for u in self.users.values():
                if u.home is person and u.tenant_id == tenant_id:
                    return u
        return None

    def user(self, upn_or_oid: str | User) -> User:
        if isinstance(upn_or_oid, User):
            return upn_or_oid
        key = upn_or_oid.lower()
        with self.lock:
            if key in self.users:
                return self.users[key]
            for u in self.users.values():
                if u.upn.lower() == key:
                    return u
        raise KeyError(f"no such user {upn_or_oid!r}")

    def add_subscription(
        self,
        subscription_id: str | None = None,
        name: str = "Subscription",
        tenant_id: str | None = None,
        state: str = "Enabled",
    ) -> Subscription:
        sid = (subscription_id or str(uuid.uuid4())).lower()
        sub = Subscription(sid, name, (tenant_id or DEFAULT_TENANT_ID).lower(), state)
        with self.lock:
            self.subscriptions[sid] = sub
        return sub

    def add_management_group(
        self,
        group_id: str,
        name: str | None = None,
        parent: str | None = None,
        tenant_id: str | None = None,
        subscriptions: Iterable[str] = (),
    ) -> ManagementGroup:
        """A management group (below `parent`, or the tenant root) holding `subscriptions`."""
        group = ManagementGroup(
            group_id, name or group_id, (tenant_id or DEFAULT_TENANT_ID).lower(), parent
        )
        with self.lock:
            self.management_groups[group_id.lower()] = group
        for sid in subscriptions:
            self.move_subscription(sid, group_id)
        return group

    def move_subscription(self, subscription_id: str, group_id: str | None) -> None:
        """Move a subscription into a management group (None: back to the tenant root), as
        someone does in the portal; what is assigned at the group then reaches it."""
        with self.lock:
            self.subscriptions[subscription_id.lower()].management_group = (
                group_id.lower() if group_id else None
            )

    def grant_at(self, principal, scope: str, role: str) -> RoleAssignment:
        """Give a principal a role at any scope (e.g. a management group's)."""
        pid, ptype = self._principal(principal)
        ra = RoleAssignment(str(uuid.uuid4()), scope, self.role_id(role), pid, ptype, self.now())
        with self.lock:
            self.role_assignments.append(ra)
        return ra

    def _group_chain(self, group_id: str | None) -> list[str]:
        """The scopes of a group and of every group above it."""
        chain: list[str] = []
        group = self.management_groups.get(group_id.lower()) if group_id else None
        while group is not None and group.scope not in chain:
            chain.append(group.scope)
            group = self.management_groups.get(group.parent.lower()) if group.parent else None
        return chain

    def _above(self, scope: str) -> list[str]:
        """The management group scopes whose role assignments `scope` inherits."""
        m = re.match(r"^/subscriptions/([^/]+)", scope, re.I)
        if m:
            sub = self.subscriptions.get(m.group(1).lower())
            return self._group_chain(sub.management_group) if sub else []
        m = re.match(r"^/providers/Microsoft\.Management/managementGroups/([^/]+)", scope, re.I)
        if m:
            group = self.management_groups.get(m.group(1).lower())
            return self._group_chain(group.parent) if group else []
        return []

    def _applies(self, ra_scope: str, scope: str) -> bool:
        """Does an assignment at `ra_scope` apply at `scope` (at it, or inherited)?"""
        a, b = ra_scope.lower().rstrip("/"), scope.lower()
        if b == a or b.startswith(a + "/"):
            return True
        base = re.match(
            r"^(/subscriptions/[^/]+|/providers/Microsoft\.Management/managementGroups/[^/]+)",
            scope,
            re.I,
        )
        return bool(base) and a in {x.lower() for x in self._above(base.group(1))}

    def role_id(self, role: str) -> str:
        """A built-in role's GUID from its name (case-insensitive) or GUID."""
        if role.lower() in self.role_definitions:
            return role.lower()
        for rd in self.role_definitions.values():
            if rd.name.lower() == role.lower():
                return rd.id
        raise KeyError(f"no such role {role!r}")

    def _principal(self, principal) -> tuple[str, str]:
        if isinstance(principal, User):
            return principal.oid, "User"
        if isinstance(principal, ServicePrincipal):
            return principal.id, "ServicePrincipal"
        if isinstance(principal, str) and "@" in principal:
            return self.user(principal).oid, "User"
        if principal in self._sps:
            return principal, "ServicePrincipal"
        return principal, "User"

    def grant(self, principal, subscription_id: str, role: str) -> RoleAssignment:
        """Give a user (User, UPN or oid) or service principal a role on a subscription."""
        pid, ptype = self._principal(principal)
        sid = subscription_id.lower()
        ra = RoleAssignment(
            str(uuid.uuid4()), f"/subscriptions/{sid}", self.role_id(role), pid, ptype, self.now()
        )
        with self.lock:
            self.role_assignments.append(ra)
        return ra

    def revoke(self, principal, subscription_id: str, role: str | None = None) -> int:
        """Remove a principal's assignments on a subscription (one role, or all). Returns count."""
        pid, _ = self._principal(principal)
        rid = self.role_id(role) if role else None
        with self.lock:
            keep = [
                ra
                for ra in self.role_assignments
                if not (
                    ra.principal_id == pid
                    and ra.subscription_id == subscription_id.lower()
                    and (rid is None or ra.role_definition_id == rid)
                )
            ]
            removed = len(self.role_assignments) - len(keep)
            self.role_assignments[:] = keep
        return removed

    # -- out-of-band changes: what a person does in the portal, behind the bot's back ------

    def remove_role_assignment(self, principal_id: str, subscription_id: str, role: str) -> int:
        """Someone deletes one role assignment of a principal (Access control (IAM) →
        Remove). Returns how many went."""
        return self.revoke(principal_id, subscription_id, role)

    def remove_password_out_of_band(self, app_id: str, key_id: str | None = None) -> int:
        """Someone deletes a client secret (Certificates & secrets → Delete): that one, or
        all of the application's. Client-credential grants with it then answer
        AADSTS7000215 ("Invalid client secret provided"). Returns how many went."""
        with self.lock:
            app = self.application(app_id=app_id)
            if app is None:
                raise KeyError(f"no live application {app_id}")
            before = len(app.passwords)
            app.passwords[:] = [p for p in app.passwords if key_id is not None and p.key_id != key_id]
            return before - len(app.passwords)

    def remove_certificate_out_of_band(self, app_id: str) -> int:
        """Someone deletes the application's certificates (Certificates & secrets →
        Certificates → Delete): client assertions signed with them then answer AADSTS700027.
        Returns how many went."""
        with self.lock:
            app = self.application(app_id=app_id)
            if app is None:
                raise KeyError(f"no live application {app_id}")
            before = len(app.keys)
            app.keys[:] = []
            return before

    def delete_application_out_of_band(self, app_id: str) -> None:
        """Someone deletes the app registration in the portal: soft-deleted (restorable 30
        days) with its service principal, as `DELETE /applications/{id}` does; its role
        assignments stay behind as "Identity not found" rows. Client-credential grants for
        it then answer AADSTS700016 (application not found in the directory)."""
        with self.lock:
            app = self.application(app_id=app_id)
            if app is None:
                raise KeyError(f"no live application {app_id}")
            del self._apps[app.id]
            app.deleted_at = self.now()
            self.deleted_applications.append(app)
            for sp in [
                s for s in self._sps.values() if s.app_id == app.app_id and s.tenant_id == app.tenant_id
            ]:
                del self._sps[sp.id]

    def set_allowed_to_create_apps(self, tenant_id: str, allowed: bool) -> None:
        self.tenants[tenant_id.lower()].allowed_to_create_apps = allowed

    def policy_forbidden(self, tenant_id: str, forbidden: bool = True) -> None:
        """Make ``GET /policies/authorizationPolicy`` answer 403 in that tenant."""
        self.tenants[tenant_id.lower()].policy_forbidden = forbidden

    # ------------------------------------------------------------------ accessors

    @property
    def applications(self) -> list[Application]:
        with self.lock:
            return list(self._apps.values())

    @property
    def service_principals(self) -> list[ServicePrincipal]:
        with self.lock:
            return list(self._sps.values())

    def application(
        self,
        *,
        app_id: str | None = None,
        display_name: str | None = None,
        unique_name: str | None = None,
        object_id: str | None = None,
    ):
        """The first live application matching every given field, or None."""
        for app in self.applications:
            if (
                (app_id is None or app.app_id == app_id)
                and (display_name is None or app.display_name == display_name)
                and (unique_name is None or app.unique_name == unique_name)
                and (object_id is None or app.id == object_id)
            ):
                return app
        return None

    def service_principal(self, app_id: str) -> ServicePrincipal | None:
        for sp in self.service_principals:
            if sp.app_id == app_id:
                return sp
        return None

    def assignments_for(self, principal_id: str) -> list[RoleAssignment]:
        with self.lock:
            return [ra for ra in self.role_assignments if ra.principal_id == principal_id]

    def requests_to(
        self, server: str | None = None, method: str | None = None, path_regex: str | None = None
    ) -> list[RecordedRequest]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (server is None or r.server == server)
                and (method is None or r.method == method.upper())
                and (path_regex is None or re.search(path_regex, r.path))
            ]

    # ------------------------------------------------------------------ scripting

    def fault(
        self,
        server: str,
        method: str | None,
        path_regex: str,
        status: int,
        body: Any = None,
        retry_after: int | float | None = None,
        times: int = 1,
        headers: dict | None = None,
        truncate: bool = False,
    ) -> Fault:
        """The next ``times`` requests to ``server`` ("login"|"graph"|"arm") whose method
        matches (None or "*" = any) and whose path matches ``path_regex`` (re.search,
        query excluded) get this response. ``body`` defaults to a Microsoft-style error.
        ``status`` 0: the connection is dropped without an answer (a network failure).
        ``truncate``: the request is carried out and its JSON answer arrives cut in half."""
        if server not in ("login", "graph", "arm"):
            raise ValueError(server)
        f = Fault(
            server,
            None if method in (None, "*") else method.upper(),
            re.compile(path_regex),
            status,
            body,
            retry_after,
            times,
            dict(headers or {}),
            truncate=truncate,
        )
        with self.lock:
            self.faults.append(f)
        return f

    def meet(
        self,
        first: Callable[[RecordedRequest], bool],
        second: Callable[[RecordedRequest], bool],
        timeout: float = 5.0,
    ) -> Rendezvous:
        """Hold the next request matching `first` until one matching `second` has arrived,
        and the other way round (see `Rendezvous`)."""
        rv = Rendezvous((first, second), timeout)
        with self.lock:
            self.rendezvous.append(rv)
        return rv

    def flow(self, user_code: str | None = None) -> DeviceFlow:
        with self.lock:
            if user_code is None:
                if not self.flows:
                    raise LookupError("no device flow has been initiated")
                return self.flows[-1]
            for f in self.flows:
                if f.user_code == user_code:
                    return f
        raise KeyError(f"no device flow with user code {user_code!r}")

    def approve(self, user_code: str | None = None, user: str | User = ALICE_UPN) -> DeviceFlow:
        """The user enters the code and signs in; the next poll gets tokens."""
        with self.lock:
            f = self.flow(user_code)
            f.user = self.user(user)
            f.state = "approved"
            return f

    def decline(self, user_code: str | None = None) -> DeviceFlow:
        with self.lock:
            f = self.flow(user_code)
            f.state = "declined"
            return f

    def expire(self, user_code: str | None = None) -> DeviceFlow:
        with self.lock:
            f = self.flow(user_code)
            f.state = "expired"
            return f

    def script_next_flow(self, steps: list) -> None:
        """Script the next initiated device flow (each call scripts one more flow).

        One step is consumed per poll; the last step repeats. Steps: ``"pending"``,
        ``"slow_down"``, ``"approve"`` / ``("approve", upn)``, ``"decline"``, ``"expire"``,
        ``"bad_code"``, ``("aadsts", code)`` / ``("aadsts", code, extra_fields)``,
        ``("http", status, retry_after_or_None)``.
        """
        steps = [_normalise_step(s) for s in steps]
        if not steps:
            raise ValueError("empty script")
        with self.lock:
            self._flow_scripts.append(steps)

    def script_flow(self, user_code: str | None, steps: list) -> DeviceFlow:
        """Replace the script of an existing flow (None = the most recent)."""
        with self.lock:
            f = self.flow(user_code)
            f.script = [_normalise_step(s) for s in steps]
            f.script_offset = f.polls
            return f

    def script_refresh(self, steps: list) -> None:
        """Script the next refresh-token grants, one step each, then back to normal.
        Steps: ``"ok"``, ``("aadsts", code[, extra])``, ``("http", status, retry_after)``,
        ``"drop"`` (the connection drops without an answer)."""
        with self.lock:
            self._refresh_script.extend(_normalise_step(s) for s in steps)

    def token_for(
        self,
        user: str | User = ALICE_UPN,
        audience: str = "graph",
        client_id: str = AZURE_CLI_CLIENT_ID,
    ) -> str:
        """A valid delegated access token for Graph or ARM, minted without any HTTP
        (for tests of Graph/ARM client code that do not care about sign-in)."""
        if audience not in ("graph", "arm"):
            raise ValueError(audience)
        u = self.user(user)
        base = self.graph_url if audience == "graph" else self.arm_url
        with self.lock:
            tok = self._new_access_token(
                "user",
                audience,
                u.tid,
                client_id,
                self._granted_scope(audience, [f"{base}/.default"]),
                int(self.now()),
                int(self.access_token_lifetime),
                user=u,
            )
        return tok.token

    def revoke_sessions(self, user: str | User) -> None:
        """Revoke every refresh token of the user (next refresh: AADSTS50173)."""
        u = self.user(user)
        with self.lock:
            for rt in self.refresh_tokens.values():
                if rt.user.oid == u.oid:
                    rt.revoked = True

    # ------------------------------------------------------------------ request handling

    def _serve(self, h: _Handler) -> None:
        arrived = getattr(h, "arrived", None) or time.monotonic()
        server = h.server.name
        split = urlsplit(h.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in h.headers.items()}
        raw = self._read_body(h, headers)
        body, bad_json = _parse_body(raw, headers.get("content-type", ""))
        req = _Req(server, h.command, path, query, headers, raw, body, bad_json)
        try:
            with self.lock:
                resp = self._fault_response(req) or self._route(req)
                if resp.truncate:
                    resp = self._truncated(req, resp)
        except Exception:
            tb = traceback.format_exc()
            with self.lock:
                self.internal_errors.append(tb)
            resp = _Resp(500, {"error": {"code": "DoubleInternalError", "message": tb}})
        if req.headers.get("client-request-id") and "client-request-id" in resp.headers:
            resp.headers["client-request-id"] = req.headers["client-request-id"]
        recorded = RecordedRequest(
            server,
            h.command,
            path,
            query,
            {k: v for k, v in headers.items() if k != "authorization"},
            body,
            self.now(),
            resp.status,
        )
        waits: list[tuple[Rendezvous, int]] = []
        with self.lock:
            self.requests.append(recorded)
            for rv in self.rendezvous:
                for side, matches in enumerate(rv.sides):
                    if rv.waited[side] is None and not rv.arrived[side].is_set() and matches(recorded):
                        rv.arrived[side].set()
                        waits.append((rv, side))
        if resp.status != 0:
            self._ready(h, resp)
        # `latency` is the time from the request's arrival to its answer, as a service that
        # works on many requests at once takes: this double's own work on the request (it
        # shares one interpreter with the other doubles) counts towards it, not on top.
        busy = time.monotonic() - arrived
        for rv, side in waits:
            rv.waited[side] = rv.arrived[1 - side].wait(rv.timeout)
        if self.latency:
            time.sleep(max(0.0, self.latency - busy))
        if resp.status == 0:  # a fault of status 0: the connection drops without an answer
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        h.flush_headers()
        h.wfile.flush()
        recorded.answered = self.now()

    @staticmethod
    def _read_body(h: _Handler, headers: dict) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(chunks)
        length = int(headers.get("content-length") or 0)
        return h.rfile.read(length) if length else b""

    @staticmethod
    def _ready(h: _Handler, resp: _Resp) -> None:
        """The answer, head and body, buffered for one write: the caller flushes it once the
        latency has passed."""
        body = resp.body
        ctype = resp.headers.pop("Content-Type", None)
        if body is None:
            payload = b""
        elif isinstance(body, bytes):
            payload = body
        elif isinstance(body, str):
            payload = body.encode()
            ctype = ctype or "text/plain; charset=utf-8"
        else:
            payload = json.dumps(body).encode()
            ctype = ctype or "application/json; charset=utf-8"
        h.send_response(resp.status)
        if ctype:
            h.send_header("Content-Type", ctype)
        for k, v in resp.headers.items():
            h.send_header(k, str(v))
        if resp.status not in (204, 304):
            h.send_header("Content-Length", str(len(payload)))
        if payload and h.command != "HEAD" and resp.status not in (204, 304):
            # one write for head and body: no Nagle / delayed-ACK stall between them
            h._headers_buffer.append(b"\r\n" + payload)
        else:
            h._headers_buffer.append(b"\r\n")

    def _truncated(self, req: _Req, marker: _Resp) -> _Resp:
        """Carry the request out, then cut its JSON answer in half (a connection cut short
        by a proxy, or a service answering garbage with a success status)."""
        real = self._route(req)
        payload = json.dumps(real.body).encode() if real.body is not None else b"{"
        return _Resp(real.status, payload[: max(1, len(payload) // 2)], {
            **real.headers,
            "Content-Type": "application/json; charset=utf-8",
        })

    def _fault_response(self, req: _Req) -> _Resp | None:
        for f in self.faults:
            if (
                f.times > 0
                and f.server == req.server
                and (f.method is None or f.method == req.method)
                and f.path_regex.search(req.path)
            ):
                f.times -= 1
                f.hits += 1
                if f.truncate:
                    marker = _Resp(0)
                    marker.truncate = True
                    return marker
                headers = dict(f.headers)
                if f.retry_after is not None:
                    headers["Retry-After"] = str(f.retry_after)
                body = f.body if f.body is not None else self._default_error_body(req, f.status)
                return _Resp(f.status, body, headers)
        return None

    def _default_error_body(self, req: _Req, status: int):
        if req.server == "login":
            code = 90055 if status == 429 else 90033
            error = {429: "temporarily_unavailable", 503: "temporarily_unavailable"}.get(
                status, "server_error" if status >= 500 else "invalid_request"
            )
            return self._aad_error(req, code, error=error, status=status).body
        codes = {
            400: "BadRequest",
            401: "InvalidAuthenticationToken",
            403: "Forbidden",
            404: "NotFound",
            409: "Conflict",
            429: "TooManyRequests",
            500: "InternalServerError",
            502: "BadGateway",
            503: "ServiceUnavailable",
            504: "GatewayTimeout",
        }
        code = codes.get(status, f"Http{status}")
        message = {
            429: "Too many requests. Please retry after the time in the Retry-After header."
        }.get(status, f"The service answered {status}.")
        if req.server == "graph":
            return self._graph_error(status, code, message).body
        return self._arm_error(status, code, message).body

    def _route(self, req: _Req) -> _Resp:
        if req.server in ("graph", "arm"):
            denied = self._authenticate(req)
            if denied is not None:
                return denied
        path_matched = False
        for method, rx, func in self._routes[req.server]:
            m = rx.match(req.path)
            if not m:
                continue
            path_matched = True
            if method != req.method and not (method == "GET" and req.method == "HEAD"):
                continue
            req.match = m
            return func(req)
        if req.server == "graph":
            if path_matched:
                return self._graph_error(
                    405, "Request_BadRequest", f"The HTTP method '{req.method}' is not allowed."
                )
            segment = req.path.rstrip("/").rsplit("/", 1)[-1]
            return self._graph_error(
                400, "BadRequest", f"Resource not found for the segment '{segment}'."
            )
        if req.server == "arm":
            if path_matched:
                return self._arm_error(
                    405, "MethodNotAllowed", f"The requested method '{req.method}' is not allowed."
                )
            return self._arm_error(
                404,
                "InvalidResourceType",
                f"The resource type for '{req.path}' could not be found.",
            )
        return _Resp(404, {"error": "not_found", "error_description": f"No route {req.path}"})

    # ------------------------------------------------------------------ error bodies

    def _aad_error(
        self,
        req: _Req | None,
        code: int,
        *,
        error: str | None = None,
        status: int | None = None,
        extra: dict | None = None,
        headers: dict | None = None,
        description: str | None = None,
        **fmt,
    ) -> _Resp:
        err_name, default_status, template, table_extra = AADSTS.get(
            code, ("invalid_grant", 400, "Error {code} (scripted).", {})
        )
        now = self.now()
        trace_id = str(uuid.uuid4())
        corr = None
        if req is not None:
            corr = req.headers.get("client-request-id")
        corr = corr if corr and _is_guid(corr) else str(uuid.uuid4())
        fields = _Fmt(code=code, **fmt)
        text = description if description is not None else template.format_map(fields)
        ts = _aad_timestamp(now)
        body = {
            "error": error or err_name,
            "error_description": f"AADSTS{code}: {text}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {corr}\r\nTimestamp: {ts}",
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace_id,
            "correlation_id": corr,
            "error_uri": f"{self.authority_host}/error?code={code}",
        }
        body.update(table_extra)
        if code in (50076, 50079) and "claims" not in (extra or {}):
            body["claims"] = json.dumps(
                {"access_token": {"capolids": {"essential": True, "values": [str(uuid.uuid4())]}}},
                separators=(",", ":"),
            )
        body.update(extra or {})
        return _Resp(status or default_status, body, _login_headers(req, headers))

    def _graph_error(
        self,
        status: int,
        code: str,
        message: str,
        details: list | None = None,
        headers: dict | None = None,
    ) -> _Resp:
        request_id = str(uuid.uuid4())
        err: dict = {"code": code, "message": message}
        if details:
            err["details"] = details
        err["innerError"] = {
            "date": _iso(self.now(), 0),
            "request-id": request_id,
            "client-request-id": request_id,
        }
        h = {"request-id": request_id, "client-request-id": request_id}
        h.update(headers or {})
        return _Resp(status, {"error": err}, h)

    def _arm_error(
        self, status: int, code: str, message: str, headers: dict | None = None
    ) -> _Resp:
        h = {
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-correlation-request-id": str(uuid.uuid4()),
            "x-ms-failure-cause": "gateway" if status == 401 else "service",
        }
        h.update(headers or {})
        return _Resp(status, {"error": {"code": code, "message": message}}, h)

    # ================================================================== login server

    def _login_routes(self):
        tenant = r"/(?P<tenant>[^/]+)"
        return [
            (
                "GET",
                re.compile(tenant + r"/v2\.0/\.well-known/openid-configuration$"),
                self._login_discovery,
            ),
            ("POST", re.compile(tenant + r"/oauth2/v2\.0/devicecode$"), self._login_devicecode),
            ("POST", re.compile(tenant + r"/oauth2/v2\.0/token$"), self._login_token),
        ]

    def _resolve_tenant(self, segment: str) -> Tenant | str | None:
        """A Tenant, one of the special segments, or None when unknown."""
        seg = segment.lower()
        if seg in ("organizations", "common"):
            return seg
        if seg == "consumers":
            return self.tenants[MSA_TENANT_ID]
        if seg in self.tenants:
            return self.tenants[seg]
        for t in self.tenants.values():
            if seg in (d.lower() for d in t.domains):
                return t
        return None

    def _login_discovery(self, req: _Req) -> _Resp:
        seg = req.group("tenant")
        resolved = self._resolve_tenant(seg)
        if resolved is None:
            return self._aad_error(req, 90002, error="invalid_tenant", tenant=seg)
        if isinstance(resolved, Tenant):
            path_tenant = resolved.id
            issuer = f"{self.issuer_host}/{resolved.id}/v2.0"
        else:
            path_tenant = seg
            issuer = f"{self.issuer_host}/{{tenantid}}/v2.0"
        base = f"{self.authority_host}/{path_tenant}"
        return _Resp(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": issuer,
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{self.graph_url}/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "cloud_instance_name",
                    "cloud_instance_host_name",
                    "cloud_graph_host_name",
                    "msgraph_host",
                    "aud",
                    "exp",
                    "iat",
                    "auth_time",
                    "acr",
                    "nonce",
                    "preferred_username",
                    "name",
                    "tid",
                    "ver",
                    "at_hash",
                    "c_hash",
                    "email",
                ],
                "kerberos_endpoint": f"{base}/kerberos",
                "tenant_region_scope": "NA" if isinstance(resolved, Tenant) else None,
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": urlsplit(self.graph_url).netloc,
                "rbac_url": "https://pas.windows.net",
            },
            _login_headers(req),
        )

    def _audience_of(self, scopes: list[str], req: _Req, tenant_name: str):
        """('graph'|'arm', resource scopes) or an error response."""
        resources: dict[str, list[str]] = {}
        for s in scopes:
            if s.lower() in _RESERVED_SCOPES:
                continue
            resources.setdefault(self._resource_of(s), []).append(s)
        if not resources:
            return "graph", []
        if len(resources) > 1:
            return self._aad_error(req, 700022, scope=" ".join(scopes))
        ((aud, res_scopes),) = resources.items()
        if aud not in ("graph", "arm"):
            return self._aad_error(req, 500011, resource=aud, tenant_name=tenant_name)
        return aud, res_scopes

    def _resource_of(self, scope: str) -> str:
        low = scope.lower()
        for aud, base in (("graph", self.graph_url), ("arm", self.arm_url)):
            if base and low.startswith(base.lower() + "/"):
                return aud
        for aud, host in (
            ("graph", "https://graph.microsoft.com/"),
            ("arm", "https://management.azure.com/"),
            ("arm", "https://management.core.windows.net/"),
        ):
            if low.startswith(host):
                return aud
        return scope.rsplit("/", 1)[0] if "/" in scope else scope

    def _granted_scope(self, audience: str, res_scopes: list[str]) -> list[str]:
        if not res_scopes:
            return ["openid", "profile", "email", f"{self.graph_url}/User.Read"]
        granted: list[str] = []
        for s in res_scopes:
            if s.endswith("/.default"):
                base = s[: -len(".default")]
                extra = (
                    ["Application.ReadWrite.All", "Directory.AccessAsUser.All", "User.Read"]
                    if audience == "graph"
                    else ["user_impersonation"]
                )
                granted.extend(base + e for e in extra)
            granted.append(s)
        return list(dict.fromkeys(granted))

    def _login_devicecode(self, req: _Req) -> _Resp:
        seg = req.group("tenant")
        resolved = self._resolve_tenant(seg)
        if resolved is None:
            return self._aad_error(req, 90002, tenant=seg)
        form = req.form
        client_id = form.get("client_id", "")
        tenant_name = resolved.display_name if isinstance(resolved, Tenant) else seg
        if not client_id:
            return self._aad_error(req, 900144, param="client_id")
        if client_id in self.unknown_clients:
            return self._aad_error(req, 700016, client_id=client_id, tenant_name=tenant_name)
        scope = form.get("scope", "").split()
        if not scope:
            return self._aad_error(req, 900144, param="scope")
        aud = self._audience_of(scope, req, tenant_name)
        if isinstance(aud, _Resp):
            return aud
        now = self.now()
        user_code = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(9))
        device_code = "DAQABIQEAAA" + _b64url(secrets.token_bytes(96))
        flow = DeviceFlow(
            user_code,
            device_code,
            client_id,
            seg,
            scope,
            now,
            now + self.device_expires_in,
            self.device_interval,
        )
        if self._flow_scripts:
            flow.script = self._flow_scripts.pop(0)
        self.flows.append(flow)
        verification_uri = self.verification_uri
        return _Resp(
            200,
            {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": verification_uri,
                "expires_in": self.device_expires_in,
                "interval": self.device_interval,
                "message": f"To sign in, use a web browser to open the page {verification_uri} "
                f"and enter the code {user_code} to authenticate.",
            },
            _login_headers(req),
        )

    def _login_token(self, req: _Req) -> _Resp:
        seg = req.group("tenant")
        resolved = self._resolve_tenant(seg)
        if resolved is None:
            return self._aad_error(req, 90002, tenant=seg)
        grant = req.form.get("grant_type", "")
        if not grant:
            return self._aad_error(req, 900144, param="grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self._grant_device_code(req, resolved)
        if grant == "refresh_token":
            return self._grant_refresh(req, resolved)
        if grant == "client_credentials":
            return self._grant_client_credentials(req, resolved)
        return self._aad_error(req, 70003, error="unsupported_grant_type", grant_type=grant)

    # ---- device code grant

    def _grant_device_code(self, req: _Req, resolved) -> _Resp:
        code = req.form.get("device_code") or req.form.get("code")
        if not code:
            return self._aad_error(req, 900144, param="device_code")
        flow = next((f for f in self.flows if f.device_code == code), None)
        if flow is None:
            return self._aad_error(req, 70018)
        now = self.now()
        flow.polls += 1
        flow.poll_times.append(now)
        resp = self._poll_outcome(req, flow, now)
        if resp.status == 200:
            flow.outcomes.append("token")
        elif isinstance(resp.body, dict) and "error" in resp.body:
            flow.outcomes.append(str(resp.body["error"]))
        else:
            flow.outcomes.append(f"http {resp.status}")
        return resp

    def _poll_outcome(self, req: _Req, flow: DeviceFlow, now: float) -> _Resp:
        if flow.state == "redeemed":
            return self._aad_error(req, 70000)
        if now >= flow.expires_at and flow.state != "redeemed":
            flow.state = "expired"
        if flow.state == "pending" and flow.script:
            idx = min(flow.polls - 1 - flow.script_offset, len(flow.script) - 1)
            step = flow.script[max(idx, 0)]
            kind = step[0]
            if kind == "pending":
                return self._aad_error(req, 70016)
            if kind == "slow_down":
                return self._aad_error(
                    req,
                    70016,
                    error="slow_down",
                    description="OAuth 2.0 device flow error. The client is "
                    "polling too frequently; slow down.",
                )
            if kind == "approve":
                flow.state = "approved"
                flow.user = self.user(step[1] if len(step) > 1 and step[1] else ALICE_UPN)
            elif kind == "decline":
                flow.state = "declined"
            elif kind == "expire":
                flow.state = "expired"
            elif kind == "bad_code":
                flow.state = "bad_code"
            elif kind == "aadsts":
                return self._scripted_aadsts(req, step, flow)
            elif kind == "http":
                return self._scripted_http(req, step)
            elif kind == "drop":
                return _Resp(0)
        if flow.state == "pending":
            return self._aad_error(req, 70016)
        if flow.state == "declined":
            return self._aad_error(
                req,
                70000,
                error="authorization_declined",
                description="The user declined the authorization request on the sign-in page.",
            )
        if flow.state == "expired":
            return self._aad_error(req, 70019)
        if flow.state == "bad_code":
            return self._aad_error(req, 70018)
        # approved
        user = flow.user or self.alice
        mismatch = self._tenant_mismatch(req, flow.tenant, user, flow.client_id)
        if mismatch is not None:
            return mismatch
        resolved = self._resolve_tenant(flow.tenant)
        if isinstance(resolved, Tenant) and not user.personal:
            # A tenant's own authority issues tokens for the person's object in that tenant
            # (a guest's there, not the home one); "organizations" issues the home tenant's.
            user = self.in_tenant(user, resolved.id) or user
        aud = self._audience_of(flow.scope, req, flow.tenant)
        if isinstance(aud, _Resp):
            return aud
        flow.state = "redeemed"
        # The sign-in page asks for MFA when a Conditional Access policy requires it for the
        # resource this sign-in is for; the person completes it there.
        tenant = self.tenants.get(user.tid)
        mfa = bool(tenant and aud[0] in tenant.mfa_required_for)
        return self._issue_user_tokens(
            req, user, flow.client_id, flow.scope, aud[0], aud[1], mfa=mfa
        )

    def _tenant_mismatch(self, req, segment: str, user: User, client_id: str) -> _Resp | None:
        resolved = self._resolve_tenant(segment)
        idp = user.guest_idp or (
            "live.com" if user.personal else f"https://sts.windows.net/{user.tid}/"
        )
        if resolved == "organizations" and user.personal:
            return self._aad_error(
                req,
                50020,
                user=user.upn,
                idp="live.com",
                tenant_name="organizations",
                client_id=client_id,
            )
        if (
            isinstance(resolved, Tenant)
            and resolved.id != user.tenant_id
            and (user.personal or self.in_tenant(user, resolved.id) is None)
        ):
            # AADSTS50020: the account does not exist in that tenant. A B2B guest of the
            # tenant does exist there and signs in to it (Entra B2B collaboration).
            return self._aad_error(
                req,
                50020,
                user=user.upn,
                idp=idp,
                tenant_name=resolved.display_name,
                client_id=client_id,
            )
        return None

    def _scripted_aadsts(self, req: _Req, step: tuple, flow: DeviceFlow | None) -> _Resp:
        code = int(step[1])
        extra = step[2] if len(step) > 2 else None
        resource = ""
        client_id = flow.client_id if flow else req.form.get("client_id", "")
        scopes = flow.scope if flow else req.form.get("scope", "").split()
        res = [s for s in scopes if s.lower() not in _RESERVED_SCOPES]
        if res:
            resource = res[0].rsplit("/", 1)[0]
        tenant = self.tenants[DEFAULT_TENANT_ID]
        return self._aad_error(
            req,
            code,
            extra=extra,
            resource=resource,
            client_id=client_id,
            tenant=tenant.id,
            tenant_name=tenant.display_name,
            user=ALICE_UPN,
            idp="live.com",
            scope=" ".join(scopes),
            issued=_iso(self.now()),
        )

    def _scripted_http(self, req: _Req, step: tuple) -> _Resp:
        status = int(step[1])
        retry_after = step[2] if len(step) > 2 else None
        if status == 429:
            resp = self._aad_error(req, 90055, status=429)
        elif status >= 500:
            resp = self._aad_error(
                req,
                90033,
                status=status,
                error="temporarily_unavailable" if status == 503 else "server_error",
            )
        else:
            resp = self._aad_error(req, 9002313, status=status)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        return resp

    def _issue_user_tokens(
        self,
        req: _Req,
        user: User,
        client_id: str,
        scopes: list[str],
        audience: str,
        res_scopes: list[str],
        mfa: bool = False,
    ) -> _Resp:
        now = int(self.now())
        tid = user.tid
        lifetime = int(self.access_token_lifetime)
        granted = self._granted_scope(audience, res_scopes)
        at = self._new_access_token(
            "user", audience, tid, client_id, granted, now, lifetime, user=user
        )
        body: dict = {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": at.token,
        }
        lowered = {s.lower() for s in scopes}
        if "offline_access" in lowered:
            rt = RefreshToken(
                "1.AXEA" + _b64url(secrets.token_bytes(180)),
                user,
                tid,
                client_id,
                now,
                now + self.refresh_token_lifetime,
                mfa=mfa,
            )
            self.refresh_tokens[rt.token] = rt
            body["refresh_token"] = rt.token
        if "openid" in lowered:
            claims = {
                "aud": client_id,
                "iss": f"{self.issuer_host}/{tid}/v2.0",
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
                "name": user.name,
                "oid": user.oid,
                # a guest signs in with the home account: its name, not the #EXT# one
                "preferred_username": user.person.upn,
                "rh": "0.AXEA" + _b64url(secrets.token_bytes(24)),
                "sid": str(uuid.uuid4()),
                "sub": _b64url(hashlib.sha256(f"{user.oid}:{client_id}".encode()).digest()),
                "tid": tid,
                "uti": _b64url(secrets.token_bytes(16)),
                "ver": "2.0",
            }
            if user.guest_idp:
                claims["idp"] = user.guest_idp
            elif user.home is not None:
                # id token claims reference: `idp` records the identity provider that
                # authenticated the subject; for a guest, the home tenant's issuer
                claims["idp"] = f"https://sts.windows.net/{user.home.tid}/"
            body["id_token"] = _unsigned_jwt(claims)
        if str(req.form.get("client_info", "")) == "1":
            # client_info names the home account (uid, utid): MSAL's home_account_id, the
            # same for one person whichever tenant the token is for
            home = user.person
            body["client_info"] = _b64url(
                json.dumps({"uid": home.oid, "utid": home.tid}, separators=(",", ":")).encode()
            )
        return _Resp(200, body, _login_headers(req))

    def _new_access_token(
        self, kind, audience, tenant_id, client_id, scopes, now, lifetime, user=None, sp=None
    ) -> AccessToken:
        claims = {
            "aud": self.graph_url if audience == "graph" else self.arm_url + "/",
            "iss": f"https://sts.windows.net/{tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": client_id,
            "tid": tenant_id,
            "oid": user.oid if user else (sp.id if sp else None),
            "ver": "1.0",
            "uti": _b64url(secrets.token_bytes(16)),
            "xms_double_nonce": secrets.token_hex(16),
        }
        if user is not None:
            claims.update(
                upn=user.upn, name=user.name, scp=" ".join(s.rsplit("/", 1)[-1] for s in scopes)
            )
        else:
            claims["roles"] = []
        token = AccessToken(
            _unsigned_jwt(claims),
            kind,
            audience,
            tenant_id,
            client_id,
            list(scopes),
            now,
            now + lifetime,
            user=user,
            service_principal=sp,
        )
        self.access_tokens[token.token] = token
        return token

    # ---- refresh grant

    def _grant_refresh(self, req: _Req, resolved) -> _Resp:
        if self._refresh_script:
            step = self._refresh_script.pop(0)
            if step[0] == "aadsts":
                return self._scripted_aadsts(req, step, None)
            if step[0] == "http":
                return self._scripted_http(req, step)
            if step[0] == "drop":  # the connection drops without an answer
                return _Resp(0)
        form = req.form
        rt = self.refresh_tokens.get(form.get("refresh_token", ""))
        if rt is None or rt.client_id != form.get("client_id"):
            return self._aad_error(req, 9002313, error="invalid_grant")
        if rt.revoked:
            return self._aad_error(req, 50173)
        if self.now() >= rt.expires_at:
            return self._aad_error(req, 700082, issued=_iso(rt.issued_at))
        seg = req.group("tenant")
        if isinstance(resolved, Tenant) and resolved.id != rt.tenant_id:
            mismatch = self._tenant_mismatch(req, seg, rt.user, rt.client_id)
            if mismatch is not None:
                return mismatch
            # redeemed at another tenant's authority: a token for the person's object there
            user = self.in_tenant(rt.user, resolved.id) or rt.user
        elif resolved in ("organizations", "common"):
            user = rt.user.person  # the multi-tenant authorities issue the home tenant's
        else:
            user = rt.user
        scopes = form.get("scope", "").split()
        if not scopes:
            return self._aad_error(req, 900144, param="scope")
        aud = self._audience_of(scopes, req, seg)
        if isinstance(aud, _Resp):
            return aud
        tenant = self.tenants.get(user.tid)
        if tenant is not None and aud[0] in tenant.mfa_required_for and not rt.mfa:
            # Conditional Access requiring MFA for this resource, on a session that did not
            # do MFA: AADSTS50076 "you must use multi-factor authentication to access
            # '<resource app id>'" as a refresh answer (seen in Azure/azure-cli#31300).
            return self._aad_error(req, 50076, resource=_RESOURCE_APP_IDS[aud[0]])
        return self._issue_user_tokens(
            req, user, rt.client_id, scopes, aud[0], aud[1], mfa=rt.mfa
        )

    # ---- client credentials grant

    def _grant_client_credentials(self, req: _Req, resolved) -> _Resp:
        form = req.form
        client_id = form.get("client_id", "")
        secret = form.get("client_secret")
        auth = req.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, pwd = base64.b64decode(auth[6:]).decode().partition(":")
                client_id, secret = unquote(user.replace("+", " ")), unquote(pwd.replace("+", " "))
            except ValueError:
                return self._aad_error(req, 9002313)
        if not isinstance(resolved, Tenant) or resolved.personal:
            return self._aad_error(req, 50059)
        scope = form.get("scope", "")
        scopes = scope.split()
        if not scopes:
            return self._aad_error(req, 900144, param="scope")
        if not all(s.endswith("/.default") for s in scopes):
            return self._aad_error(req, 1002012, scope=scope)
        aud = self._audience_of(scopes, req, resolved.display_name)
        if isinstance(aud, _Resp):
            return aud
        app = next(
            (
                a
                for a in self._apps.values()
                if a.app_id == client_id and a.tenant_id == resolved.id
            ),
            None,
        )
        if app is None:
            return self._aad_error(
                req,
                700016,
                error="unauthorized_client",
                client_id=client_id,
                tenant_name=resolved.display_name,
            )
        assertion = form.get("client_assertion")
        if assertion is not None or form.get("client_assertion_type"):
            if form.get("client_assertion_type") != keycreds.JWT_BEARER:
                return self._aad_error(req, 50027)
            endpoint = f"{self.authority_host}{req.path.split('?', 1)[0]}"
            code, key = keycreds.check_assertion(
                assertion, client_id, endpoint, app.keys, self.now()
            )
            if key is None:
                self.refused_assertions.append(str(assertion)[:12])
                return self._aad_error(req, code, client_id=client_id)
            if key.pending_rejections > 0:  # a new certificate takes a while to work
                key.pending_rejections -= 1
                return self._aad_error(req, 700027, client_id=client_id)
            return self._client_token(req, resolved, client_id, scopes, aud, key.key_id)
        if not secret:
            return self._aad_error(req, 7000215, client_id=client_id)
        pwd = next(
            (p for p in app.passwords if secrets.compare_digest(p.secret_text, secret)), None
        )
        if pwd is None:
            return self._aad_error(req, 7000215, client_id=client_id)
        if pwd.pending_rejections > 0:
            pwd.pending_rejections -= 1
            return self._aad_error(req, 7000215, client_id=client_id)
        now = self.now()
        if pwd.end <= now or pwd.start > now + 300:
            return self._aad_error(req, 7000222, client_id=client_id)
        return self._client_token(req, resolved, client_id, scopes, aud, pwd.key_id)

    def _client_token(self, req: _Req, resolved, client_id: str, scopes, aud, key_id: str) -> _Resp:
        now = self.now()
        sp = next(
            (s for s in self._sps.values() if s.app_id == client_id and s.tenant_id == resolved.id),
            None,
        )
        if sp is None:
            return self._aad_error(req, 7000229, client_id=client_id, tenant=resolved.id)
        lifetime = int(self.access_token_lifetime)
        at = self._new_access_token(
            "app", aud[0], resolved.id, client_id, scopes, int(now), lifetime, sp=sp
        )
        self.client_logins.append(ClientLogin(client_id, key_id, resolved.id, aud[0], now))
        return _Resp(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": at.token,
            },
            _login_headers(req),
        )

    # ================================================================== bearer auth

    def _authenticate(self, req: _Req) -> _Resp | None:
        auth = req.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        graph = req.server == "graph"
        if not auth or scheme.lower() != "bearer" or not value.strip():
            if graph:
                return self._graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    "Access token is empty.",
                    headers={"WWW-Authenticate": 'Bearer realm=""'},
                )
            return self._arm_error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        tok = self.access_tokens.get(value.strip())
        if tok is None:
            if graph:
                return self._graph_error(
                    401, "InvalidAuthenticationToken", "Access token validation failure."
                )
            return self._arm_error(
                401, "InvalidAuthenticationToken", "The access token is invalid."
            )
        if tok.audience != req.server:
            if graph:
                return self._graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    "Access token validation failure. Invalid audience.",
                )
            return self._arm_error(
                401,
                "InvalidAuthenticationTokenAudience",
                "The access token has been obtained for wrong audience or resource "
                f"'{self.graph_url}'. It should exactly match with one of the allowed audiences "
                f"'{self.arm_url}/','{self.arm_url}'.",
            )
        now = self.now()
        if now >= tok.expires_at:
            if graph:
                return self._graph_error(
                    401,
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired.",
                )
            return self._arm_error(
                401,
                "ExpiredAuthenticationToken",
                f"The access token expiry UTC time '{_iso(tok.expires_at, 0)}' is earlier "
                f"than current UTC time '{_iso(now, 0)}'.",
            )
        req.token = tok
        return None

    # ================================================================== Graph

    def _graph_routes(self):
        key = r"(?P<key>/[^/()]+|\((?P<alt>[A-Za-z]+)='(?P<altval>(?:[^']|'')*)'\))"
        v = r"^/v1\.0"
        return [
            ("GET", re.compile(v + r"/me/?$"), self._g_me),
            ("GET", re.compile(v + r"/users/(?P<uid>[^/]+)$"), self._g_user),
            ("GET", re.compile(v + r"/organization/?$"), self._g_organization),
            (
                "GET",
                re.compile(
                    v + r"/me/(?P<rel>transitiveMemberOf|memberOf)"
                    r"(?:/(?P<cast>microsoft\.graph\.\w+))?/?$"
                ),
                self._g_member_of,
            ),
            ("GET", re.compile(v + r"/policies/authorizationPolicy/?$"), self._g_policy),
            (
                "GET",
                re.compile(v + r"/policies/defaultAppManagementPolicy/?$"),
                self._g_app_management_policy,
            ),
            ("POST", re.compile(v + r"/applications/?$"), self._g_create_app),
            ("GET", re.compile(v + r"/applications/?$"), self._g_list_apps),
            ("GET", re.compile(v + r"/applications" + key + r"$"), self._g_get_app),
            ("PATCH", re.compile(v + r"/applications" + key + r"$"), self._g_patch_app),
            ("DELETE", re.compile(v + r"/applications" + key + r"$"), self._g_delete_app),
            (
                "POST",
                re.compile(v + r"/applications" + key + r"/addPassword$"),
                self._g_add_password,
            ),
            (
                "POST",
                re.compile(v + r"/applications" + key + r"/removePassword$"),
                self._g_remove_password,
            ),
            ("POST", re.compile(v + r"/applications" + key + r"/addKey$"), self._g_add_key),
            ("POST", re.compile(v + r"/applications" + key + r"/removeKey$"), self._g_remove_key),
            ("POST", re.compile(v + r"/servicePrincipals/?$"), self._g_create_sp),
            ("GET", re.compile(v + r"/servicePrincipals/?$"), self._g_list_sps),
            ("GET", re.compile(v + r"/servicePrincipals" + key + r"$"), self._g_get_sp),
            ("DELETE", re.compile(v + r"/servicePrincipals" + key + r"$"), self._g_delete_sp),
        ]

    def _ctx(self, fragment: str) -> str:
        return f"{self.graph_url}/v1.0/$metadata#{fragment}"

    def _g_ok(self, status: int, body: Any = None, headers: dict | None = None) -> _Resp:
        rid = str(uuid.uuid4())
        h = {
            "request-id": rid,
            "client-request-id": rid,
            "x-ms-ags-diagnostic": '{"ServerInfo":{"DataCenter":"Loopback","Slice":"E"}}',
        }
        h.update(headers or {})
        return _Resp(status, body, h)

    def _need_user(self, req: _Req) -> User | _Resp:
        if req.token is None or req.token.user is None:
            return self._graph_error(
                400, "BadRequest", "/me request is only valid with delegated authentication flow."
            )
        return req.token.user

    def _need_json(self, req: _Req) -> dict | _Resp:
        if req.bad_json or not isinstance(req.body, dict):
            return self._graph_error(
                400,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure "
                "Content-Type header is set and payload is of valid JSON "
                "format.",
            )
        return req.body

    def _user_json(self, u: User) -> dict:
        given, _, surname = u.name.partition(" ")
        return {
            "businessPhones": [],
            "displayName": u.name,
            "givenName": given or None,
            "jobTitle": None,
            "mail": None if u.personal else u.upn,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": "en-US",
            "surname": surname or None,
            "userPrincipalName": u.upn,
            "id": u.oid,
        }

    def _g_me(self, req: _Req) -> _Resp:
        user = self._need_user(req)
        if isinstance(user, _Resp):
            return user
        return self._g_ok(
            200, {"@odata.context": self._ctx("users/$entity"), **self._user_json(user)}
        )

    def _g_user(self, req: _Req) -> _Resp:
        uid = req.group("uid").lower()
        for u in self.users.values():
            if u.tenant_id == req.token.tenant_id and uid in (u.oid, u.upn.lower()):
                return self._g_ok(
                    200, {"@odata.context": self._ctx("users/$entity"), **self._user_json(u)}
                )
        return self._graph_error(
            404,
            "Request_ResourceNotFound",
            f"Resource '{req.group('uid')}' does not exist or one of its "
            "queried reference-property objects are not present.",
        )

    def _g_organization(self, req: _Req) -> _Resp:
        tenant = self.tenants.get(req.token.tenant_id)
        value = []
        if tenant is not None and not tenant.personal:
            value.append(
                {
                    "id": tenant.id,
                    "deletedDateTime": None,
                    "displayName": tenant.display_name,
                    "countryLetterCode": "US",
                    "tenantType": "AAD",
                    "createdDateTime": "2019-03-14T09:12:44Z",
                    "verifiedDomains": [
                        {
                            "capabilities": "Email, OfficeCommunicationsOnline",
                            "isDefault": i == 0,
                            "isInitial": d.endswith(".onmicrosoft.com"),
                            "name": d,
                            "type": "Managed",
                        }
                        for i, d in enumerate(tenant.domains)
                    ],
                }
            )
        return self._g_ok(200, {"@odata.context": self._ctx("organization"), "value": value})

    def _g_member_of(self, req: _Req) -> _Resp:
        user = self._need_user(req)
        if isinstance(user, _Resp):
            return user
        cast = req.group("cast")
        items: list[dict] = []
        if cast in (None, "microsoft.graph.directoryRole"):
            for template in sorted(user.directory_roles):
                items.append(
                    {
                        "@odata.type": "#microsoft.graph.directoryRole",
                        "id": str(
                            uuid.uuid5(uuid.NAMESPACE_URL, f"role:{user.tenant_id}:{template}")
                        ),
                        "deletedDateTime": None,
                        "description": f"{DIRECTORY_ROLE_NAMES.get(template, 'Directory role')}.",
                        "displayName": DIRECTORY_ROLE_NAMES.get(
                            template, f"Directory role {template}"
                        ),
                        "roleTemplateId": template,
                    }
                )
        if cast in (None, "microsoft.graph.group"):
            for g in user.groups:
                items.append(
                    {
                        "@odata.type": "#microsoft.graph.group",
                        "deletedDateTime": None,
                        "securityEnabled": True,
                        "mailEnabled": False,
                        **g,
                    }
                )
        elif cast not in ("microsoft.graph.directoryRole",):
            items = []
        return self._g_page(req, items, "directoryObjects")

    def _g_policy(self, req: _Req) -> _Resp:
        tenant = self.tenants.get(req.token.tenant_id)
        if tenant is None or tenant.personal or tenant.policy_forbidden:
            return self._graph_error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        return self._g_ok(
            200,
            {
                "@odata.context": self._ctx("policies/authorizationPolicy/$entity"),
                "id": "authorizationPolicy",
                "allowInvitesFrom": "everyone",
                "allowedToSignUpEmailBasedSubscriptions": True,
                "allowedToUseSSPR": True,
                "allowEmailVerifiedUsersToJoinOrganization": False,
                "allowUserConsentForRiskyApps": None,
                "blockMsolPowerShell": False,
                "description": "Used to manage authorization related settings across the company.",
                "displayName": "Authorization Policy",
                "enabledPreviewFeatures": [],
                "guestUserRoleId": "10dae51f-b6af-4016-8d66-8c2a99b929b3",
                "permissionGrantPolicyIdsAssignedToDefaultUserRole": [
                    "ManagePermissionGrantsForSelf.microsoft-user-default-legacy"
                ],
                "defaultUserRolePermissions": {
                    "allowedToCreateApps": tenant.allowed_to_create_apps,
                    "allowedToCreateSecurityGroups": True,
                    "allowedToCreateTenants": True,
                    "allowedToReadBitlockerKeysForOwnedDevice": True,
                    "allowedToReadOtherUsers": True,
                },
            },
        )

    # ---- paging and filters

    def _g_page(self, req: _Req, items: list[dict], context: str) -> _Resp:
        size = self.page_size
        if "$top" in req.query:
            try:
                size = max(1, min(999, int(req.query["$top"])))
            except ValueError:
                return self._graph_error(400, "BadRequest", "Invalid $top value.")
        offset = _decode_skiptoken(req.query.get("$skiptoken"))
        page = items[offset : offset + size]
        body: dict = {"@odata.context": self._ctx(context), "value": page}
        if offset + size < len(items):
            params = {k: v for k, v in req.query.items() if k != "$skiptoken"}
            params["$skiptoken"] = _encode_skiptoken(offset + size)
            body["@odata.nextLink"] = f"{self.graph_url}{quote(req.path)}?" + urlencode(
                params, quote_via=quote, safe="$'(),"
            )
        return self._g_ok(200, body)

    def _g_filter(self, req: _Req, allowed: set[str]):
        """[(prop, op, value)] from $filter, or an error response."""
        raw = req.query.get("$filter")
        if not raw:
            return []
        clauses = []
        for part in re.split(r"\s+and\s+", raw.strip(), flags=re.I):
            m = re.fullmatch(r"(\w+)\s+eq\s+'((?:[^']|'')*)'", part.strip())
            if m:
                clauses.append((m.group(1), "eq", m.group(2).replace("''", "'")))
                continue
            m = re.fullmatch(
                r"startswith\(\s*(\w+)\s*,\s*'((?:[^']|'')*)'\s*\)", part.strip(), flags=re.I
            )
            if m:
                clauses.append((m.group(1), "startswith", m.group(2).replace("''", "'")))
                continue
            return self._graph_error(400, "Request_UnsupportedQuery", "Unsupported Query.")
        for prop, _, _ in clauses:
            if prop not in allowed:
                return self._graph_error(
                    400,
                    "Request_UnsupportedQuery",
                    f"Unsupported or invalid query filter clause specified "
                    f"for property '{prop}' of resource "
                    f"'{req.path.rsplit('/', 1)[-1]}'.",
                )
        return clauses

    @staticmethod
    def _matches(obj: dict, clauses) -> bool:
        for prop, op, value in clauses:
            have = obj.get(prop)
            if have is None:
                return False
            if op == "eq" and str(have).lower() != value.lower():
                return False
            if op == "startswith" and not str(have).lower().startswith(value.lower()):
                return False
        return True

    def _visible(self, obj) -> bool:
        """Replication delay: an object is 'not found' for its first N reads/uses."""
        if obj.invisible > 0:
            obj.invisible -= 1
            return False
        return True

    # ---- applications

    def _app_json(self, app: Application, context: bool = True) -> dict:
        tenant = self.tenants.get(app.tenant_id)
        body = {
            "id": app.id,
            "deletedDateTime": _iso(app.deleted_at, 0) if app.deleted_at else None,
            "appId": app.app_id,
            "applicationTemplateId": None,
            "disabledByMicrosoftStatus": None,
            "createdDateTime": _iso(app.created_at, 0),
            "displayName": None,
            "description": None,
            "groupMembershipClaims": None,
            "identifierUris": [],
            "isDeviceOnlyAuthSupported": None,
            "isFallbackPublicClient": None,
            "nativeAuthenticationApisEnabled": None,
            "notes": None,
            "publisherDomain": tenant.default_domain if tenant else None,
            "serviceManagementReference": None,
            "signInAudience": "AzureADandPersonalMicrosoftAccount",
            "tags": [],
            "tokenEncryptionKeyId": None,
            "uniqueName": None,
            "samlMetadataUrl": None,
            "defaultRedirectUri": None,
            "certification": None,
            "optionalClaims": None,
            "requestSignatureVerification": None,
            "addIns": [],
            "api": {
                "acceptMappedClaims": None,
                "knownClientApplications": [],
                "requestedAccessTokenVersion": None,
                "oauth2PermissionScopes": [],
                "preAuthorizedApplications": [],
            },
            "appRoles": [],
            "info": {
                "logoUrl": None,
                "marketingUrl": None,
                "privacyStatementUrl": None,
                "supportUrl": None,
                "termsOfServiceUrl": None,
            },
            "keyCredentials": [],
            "parentalControlSettings": {
                "countriesBlockedForMinors": [],
                "legalAgeGroupRule": "Allow",
            },
            "publicClient": {"redirectUris": []},
            "requiredResourceAccess": [],
            "verifiedPublisher": {
                "displayName": None,
                "verifiedPublisherId": None,
                "addedDateTime": None,
            },
            "web": {
                "homePageUrl": None,
                "logoutUrl": None,
                "redirectUris": [],
                "implicitGrantSettings": {
                    "enableAccessTokenIssuance": False,
                    "enableIdTokenIssuance": False,
                },
                "redirectUriSettings": [],
            },
            "spa": {"redirectUris": []},
        }
        body.update(app.props)
        body["passwordCredentials"] = [self._pwd_json(p, False) for p in app.passwords]
        body["keyCredentials"] = [keycreds.key_json(k) for k in app.keys]
        if context:
            body = {"@odata.context": self._ctx("applications/$entity"), **body}
        return body

    @staticmethod
    def _pwd_json(p: Password, with_secret: bool) -> dict:
        return {
            "customKeyIdentifier": None,
            "displayName": p.display_name,
            "endDateTime": _iso(p.end, 0 if p.end == int(p.end) else 7),
            "hint": p.hint,
            "keyId": p.key_id,
            "secretText": p.secret_text if with_secret else None,
            "startDateTime": _iso(p.start, 0 if p.start == int(p.start) else 7),
        }

    def _caller_can_create_apps(self, req: _Req) -> bool:
        user = req.token.user
        if user is None or user.personal:
            return False
        tenant = self.tenants.get(req.token.tenant_id)
        if user.directory_roles & APP_CREATOR_ROLES:
            return True
        # "Users can register applications" is a default permission of member users; guest
        # users' defaults do not include registering applications (Entra "Default user
        # permissions": compare member and guest default permissions) — a guest needs a role.
        return bool(
            tenant and tenant.allowed_to_create_apps and not user.guest_idp and user.home is None
        )

    def _caller_can_manage(self, req: _Req, app: Application) -> bool:
        user = req.token.user
        if user is None:
            return False
        return user.oid in app.owners or bool(user.directory_roles & APP_MANAGER_ROLES)

    def _denied(self) -> _Resp:
        return self._graph_error(
            403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
        )

    def _not_found(self, ident: str) -> _Resp:
        return self._graph_error(
            404,
            "Request_ResourceNotFound",
            f"Resource '{ident}' does not exist or one of its queried "
            "reference-property objects are not present.",
        )

    def _find_app(self, req: _Req, *, consume: bool = True) -> Application | _Resp:
        tenant = req.token.tenant_id
        alt = req.group("alt")
        if alt is None:
            ident = req.group("key").lstrip("/")
            app = self._apps.get(ident)
            if app is not None and app.tenant_id != tenant:
                app = None
        else:
            ident = req.group("altval").replace("''", "'")
            prop = {"appid": "app_id", "uniquename": "unique_name", "id": "id"}.get(alt.lower())
            if prop is None:
                return self._graph_error(
                    400, "BadRequest", f"Invalid alternate key property '{alt}'."
                )
            app = next(
                (
                    a
                    for a in self._apps.values()
                    if a.tenant_id == tenant and (getattr(a, prop) or "").lower() == ident.lower()
                ),
                None,
            )
        if app is None or (consume and not self._visible(app)):
            return self._not_found(ident)
        return app

    def _new_app(self, req: _Req, props: dict) -> Application:
        app = Application(
            str(uuid.uuid4()),
            str(uuid.uuid4()),
            req.token.tenant_id,
            self.now(),
            props,
            owners=[req.token.principal_id],
            invisible=self.replication_delay,
        )
        self._apps[app.id] = app
        return app

    _READ_ONLY_APP_PROPS = frozenset(
        {
            "id",
            "appId",
            "createdDateTime",
            "deletedDateTime",
            "publisherDomain",
            "passwordCredentials",
        }
    )

    def _clean_props(self, body: dict) -> dict | _Resp:
        props = {k: v for k, v in body.items() if not k.startswith("@")}
        bad = sorted(set(props) & self._READ_ONLY_APP_PROPS)
        if bad:
            return self._graph_error(
                400, "Request_BadRequest", f"Property '{bad[0]}' is read-only and cannot be set."
            )
        aud = props.get("signInAudience")
        if aud is not None and aud not in (
            "AzureADMyOrg",
            "AzureADMultipleOrgs",
            "AzureADandPersonalMicrosoftAccount",
            "PersonalMicrosoftAccount",
        ):
            return self._graph_error(
                400,
                "Request_BadRequest",
                "Invalid value specified for property 'signInAudience' of resource 'Application'.",
            )
        return props

    def _g_create_app(self, req: _Req) -> _Resp:
        body = self._need_json(req)
        if isinstance(body, _Resp):
            return body
        if not self._caller_can_create_apps(req):
            return self._denied()
        props = self._clean_props(body)
        if isinstance(props, _Resp):
            return props
        if not props.get("displayName"):
            return self._graph_error(
                400, "Request_BadRequest", "Property 'displayName' is required."
            )
        unique = props.get("uniqueName")
        if unique and any(
            a.unique_name
            and a.unique_name.lower() == unique.lower()
            and a.tenant_id == req.token.tenant_id
            for a in self._apps.values()
        ):
            return self._graph_error(
                400,
                "Request_BadRequest",
                "Another object with the same value for property uniqueName already exists.",
            )
        app = self._new_app(req, props)
        return self._g_ok(
            201,
            self._app_json(app),
            {
                "Location": f"{self.graph_url}/v2/{app.tenant_id}/directoryObjects/"
                f"{app.id}/Microsoft.DirectoryServices.Application"
            },
        )

    def _g_list_apps(self, req: _Req) -> _Resp:
        clauses = self._g_filter(req, {"appId", "displayName", "uniqueName", "id"})
        if isinstance(clauses, _Resp):
            return clauses
        items = []
        for app in list(self._apps.values()):
            if app.tenant_id != req.token.tenant_id:
                continue
            j = self._app_json(app, context=False)
            if self._matches(j, clauses) and self._visible(app):
                items.append(j)
        return self._g_page(req, items, "applications")

    def _g_get_app(self, req: _Req) -> _Resp:
        app = self._find_app(req)
        if isinstance(app, _Resp):
            return app
        return self._g_ok(200, self._app_json(app))

    def _g_patch_app(self, req: _Req) -> _Resp:
        body = self._need_json(req)
        if isinstance(body, _Resp):
            return body
        upsert = req.group("alt") is not None and req.group("alt").lower() == "uniquename"
        if upsert:
            app = self._find_app(req, consume=False)
        else:
            app = self._find_app(req)
        props = self._clean_props(body)
        if isinstance(props, _Resp):
            return props
        if isinstance(app, _Resp):
            prefer = req.headers.get("prefer", "").lower()
            if not (upsert and "create-if-missing" in prefer):
                return app
            if not self._caller_can_create_apps(req):
                return self._denied()
            if not props.get("displayName"):
                return self._graph_error(
                    400, "Request_BadRequest", "Property 'displayName' is required."
                )
            props["uniqueName"] = req.group("altval").replace("''", "'")
            created = self._new_app(req, props)
            return self._g_ok(
                201, self._app_json(created), {"Preference-Applied": "create-if-missing"}
            )
        if not self._caller_can_manage(req, app):
            return self._denied()
        new_unique = props.get("uniqueName")
        if new_unique is not None and app.unique_name and new_unique != app.unique_name:
            return self._graph_error(
                400, "Request_BadRequest", "Property 'uniqueName' is read-only once it is set."
            )
        if "keyCredentials" in props:
            keys = self._key_credentials(req, props.pop("keyCredentials"))
            if isinstance(keys, _Resp):
                return keys
            app.keys = keys  # PATCH replaces the whole collection
        app.props.update(props)
        return self._g_ok(204)

    # ---- certificates (keyCredentials, addKey, removeKey): rules in tests/fakes/keycreds.py

    def _key_refusal(self, req: _Req, cred: keycreds.KeyCred) -> _Resp | None:
        tenant = self.tenants.get(req.token.tenant_id)
        if (
            tenant is not None
            and tenant.key_max_days is not None
            and cred.end - cred.start > tenant.key_max_days * 86400
        ):
            message = (
                "Credential lifetime exceeds the max value allowed as per assigned policy "
                f"'{DEFAULT_APP_POLICY_ID}'."
            )
            return self._graph_error(
                400,
                "CredentialInvalidLifetimeAsPerAppPolicy",
                message,
                details=[{"code": "InvalidKeyEndDate", "message": message, "target": "EndDate"}],
            )
        return None

    def _key_credentials(self, req: _Req, creds: Any) -> list[keycreds.KeyCred] | _Resp:
        if not isinstance(creds, list):
            return self._graph_error(
                400, "Request_BadRequest", "Property 'keyCredentials' must be a collection."
            )
        out = []
        for cred in creds:
            try:
                parsed = keycreds.parse_key_credential(cred, self.now())
            except keycreds.Refused as exc:
                return self._graph_error(
                    400, "Request_BadRequest", f"Invalid value for property 'keyCredentials': {exc}."
                )
            refused = self._key_refusal(req, parsed)
            if refused is not None:
                return refused
            parsed.pending_rejections = self.new_secret_delay
            out.append(parsed)
        return out

    def _proof_refused(self, req: _Req, app: Application, proof: Any) -> _Resp | None:
        try:
            keycreds.check_proof(proof, app.id, app.keys, self.now())
        except keycreds.Refused as exc:
            self.refused_proofs.append(str(exc))
            return self._graph_error(
                400, "Request_BadRequest", f"Proof of possession validation failed: {exc}."
            )
        return None

    def _g_add_key(self, req: _Req) -> _Resp:
        app = self._find_app(req)
        if isinstance(app, _Resp):
            return app
        body = self._need_json(req)
        if isinstance(body, _Resp):
            return body
        if not self._caller_can_manage(req, app):
            return self._denied()
        refused = self._proof_refused(req, app, body.get("proof"))
        if refused is not None:
            return refused
        if body.get("passwordCredential") is not None:
            return self._graph_error(
                400,
                "Request_BadRequest",
                "passwordCredential is only for keys of type X509CertAndPassword.",
            )
        keys = self._key_credentials(req, [body.get("keyCredential")])
        if isinstance(keys, _Resp):
            return keys
        new = keys[0]
        if any(k.key_id == new.key_id for k in app.keys):
            return self._graph_error(400, "Request_BadRequest", "The keyId is already in use.")
        app.keys.append(new)
        return self._g_ok(
            200,
            {"@odata.context": self._ctx("microsoft.graph.keyCredential"), **keycreds.key_json(new)},
        )

    def _g_remove_key(self, req: _Req) -> _Resp:
        app = self._find_app(req)
        if isinstance(app, _Resp):
            return app
        body = self._need_json(req)
        if isinstance(body, _Resp):
            return body
        if not self._caller_can_manage(req, app):
            return self._denied()
        refused = self._proof_refused(req, app, body.get("proof"))
        if refused is not None:
            return refused
        key_id = str(body.get("keyId") or "")
        found = next((k for k in app.keys if k.key_id.lower() == key_id.lower()), None)
        if found is None:
            return self._graph_error(
                400, "Request_BadRequest", f"No key credential found with keyId '{key_id}'."
            )
        app.keys.remove(found)
        return self._g_ok(204)

    def _g_delete_app(self, req: _Req) -> _Resp:
        app = self._find_app(req)
        if isinstance(app, _Resp):
            return app
        if not self._caller_can_manage(req, app):
            return self._denied()
        del self._apps[app.id]
        app.deleted_at = self.now()
        self.deleted_applications.append(app)
        for sp in [
            s for s in self._sps.values() if s.app_id == app.app_id and s.tenant_id == app.tenant_id
        ]:
            del self._sps[sp.id]
        return self._g_ok(204)

    def _g_add_password(self, req: _Req) -> _Resp:
        app = self._find_app(req)
        if isinstance(app, _Resp):
            return app
        body = req.body if isinstance(req.body, dict) else {}
        if req.raw.strip() and not isinstance(req.body, dict):
            return self._need_json(req)
        if not self._caller_can_manage(req, app):
            return self._denied()
        cred = body.get("passwordCredential") or {}
        now = self.now()
        try:
            start = _parse_iso(cred["startDateTime"]) if cred.get("startDateTime") else now
            end = _parse_iso(cred["endDateTime"]) if cred.get("endDateTime") else None
        except (ValueError, TypeError):
            return self._graph_error(
                400,
                "Request_BadRequest",
                "Invalid value specified for property 'endDateTime' of "
                "resource 'PasswordCredential'.",
            )
        if end is None:
            end = _plus_years(start, 2)
        refused = self._app_policy_refusal(req, start, end)
        if refused is not None:
            return refused
        if end <= start:
            return self._graph_error(
                400,
                "Request_BadRequest",
                "Invalid value specified for property 'endDateTime' of "
                "resource 'PasswordCredential'.",
            )
        text = _secret_text()
        pwd = Password(
            str(uuid.uuid4()),
            cred.get("displayName"),
            text,
            text[:3],
            start,
            end,
            pending_rejections=self.new_secret_delay,
        )
        app.passwords.append(pwd)
        return self._g_ok(
            200,
            {
                "@odata.context": self._ctx("microsoft.graph.passwordCredential"),
                **self._pwd_json(pwd, True),
            },
        )

    def _app_policy_refusal(self, req: _Req, start: float, end: float) -> _Resp | None:
        """The tenant's app management policy refuses a password it does not allow; Graph
        never shortens one. Shapes as reported by Graph users (e.g.
        OfficeDev/microsoft-365-agents-toolkit#10998): 400 with code
        CredentialInvalidLifetimeAsPerAppPolicy, details InvalidKeyEndDate, and the message
        naming the policy; CredentialTypeNotAllowedAsPerAppPolicy when secrets are blocked."""
        tenant = self.tenants.get(req.token.tenant_id)
        if tenant is None:
            return None
        if tenant.passwords_blocked:
            message = (
                "Credential type not allowed as per assigned policy "
                f"'{DEFAULT_APP_POLICY_ID}'."
            )
            return self._graph_error(
                400,
                "CredentialTypeNotAllowedAsPerAppPolicy",
                message,
                details=[{"code": "InvalidKeyType", "message": message, "target": "Type"}],
            )
        if tenant.password_max_days is not None and end - start > tenant.password_max_days * 86400:
            message = (
                "Credential lifetime exceeds the max value allowed as per assigned policy "
                f"'{DEFAULT_APP_POLICY_ID}'."
            )
            return self._graph_error(
                400,
                "CredentialInvalidLifetimeAsPerAppPolicy",
                message,
                details=[{"code": "InvalidKeyEndDate", "message": message, "target": "EndDate"}],
            )
        return None

    def _g_app_management_policy(self, req: _Req) -> _Resp:
        """GET /policies/defaultAppManagementPolicy (tenantAppManagementPolicy): readable
        only by privileged directory roles; others get 403 as for any policy read."""
        tenant = self.tenants.get(req.token.tenant_id)
        user = req.token.user
        if tenant is None or user is None or not (user.directory_roles & APP_POLICY_READER_ROLES):
            return self._graph_error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        restrictions = []
        if tenant.passwords_blocked:
            restrictions.append(
                {
                    "restrictionType": "passwordAddition",
                    "state": "enabled",
                    "maxLifetime": None,
                    "restrictForAppsCreatedAfterDateTime": "2019-01-01T00:00:00Z",
                }
            )
        if tenant.password_max_days is not None:
            restrictions.append(
                {
                    "restrictionType": "passwordLifetime",
                    "state": "enabled",
                    "maxLifetime": f"P{int(tenant.password_max_days)}D",
                    "restrictForAppsCreatedAfterDateTime": "2019-01-01T00:00:00Z",
                }
            )
        # keyCredentialConfiguration: restrictionType asymmetricKeyLifetime (Graph
        # appManagementConfiguration resource).
        key_restrictions = []
        if tenant.key_max_days is not None:
            key_restrictions.append(
                {
                    "restrictionType": "asymmetricKeyLifetime",
                    "state": "enabled",
                    "maxLifetime": f"P{int(tenant.key_max_days)}D",
                    "restrictForAppsCreatedAfterDateTime": "2019-01-01T00:00:00Z",
                }
            )
        return self._g_ok(
            200,
            {
                "@odata.context": self._ctx("policies/defaultAppManagementPolicy/$entity"),
                "id": DEFAULT_APP_POLICY_ID,
                "displayName": "Default app management tenant policy",
                "description": "Default tenant policy that enforces app management restrictions "
                "on applications and service principals.",
                "isEnabled": bool(restrictions or key_restrictions),
                "applicationRestrictions": {
                    "passwordCredentials": restrictions,
                    "keyCredentials": key_restrictions,
                },
                "servicePrincipalRestrictions": {"passwordCredentials": [], "keyCredentials": []},
            },
        )

    def _g_remove_password(self, req: _Req) -> _Resp:
        app = self._find_app(req)
        if isinstance(app, _Resp):
            return app
        body = self._need_json(req)
        if isinstance(body, _Resp):
            return body
        if not self._caller_can_manage(req, app):
            return self._denied()
        key_id = str(body.get("keyId") or "")
        pwd = next((p for p in app.passwords if p.key_id.lower() == key_id.lower()), None)
        if pwd is None:
            return self._graph_error(
                400, "Request_BadRequest", f"No password credential found with keyId '{key_id}'."
            )
        app.passwords.remove(pwd)
        return self._g_ok(204)

    # ---- service principals

    def _sp_json(self, sp: ServicePrincipal, context: bool = True) -> dict:
        app = next((a for a in self._apps.values() if a.app_id == sp.app_id), None)
        body = {
            "id": sp.id,
            "deletedDateTime": None,
            "accountEnabled": True,
            "alternativeNames": [],
            "appDisplayName": app.display_name if app else sp.display_name,
            "appDescription": None,
            "appId": sp.app_id,
            "applicationTemplateId": None,
            "appOwnerOrganizationId": sp.tenant_id,
            "appRoleAssignmentRequired": False,
            "createdDateTime": _iso(sp.created_at, 0),
            "description": None,
            "disabledByMicrosoftStatus": None,
            "displayName": sp.display_name,
            "homepage": None,
            "loginUrl": None,
            "logoutUrl": None,
            "notes": None,
            "notificationEmailAddresses": [],
            "preferredSingleSignOnMode": None,
            "preferredTokenSigningKeyThumbprint": None,
            "replyUrls": [],
            "servicePrincipalNames": [sp.app_id],
            "servicePrincipalType": "Application",
            "signInAudience": (
                app.props.get("signInAudience", "AzureADMyOrg") if app else "AzureADMyOrg"
            ),
            "tags": [],
            "tokenEncryptionKeyId": None,
            "addIns": [],
            "appRoles": [],
            "info": {},
            "keyCredentials": [],
            "oauth2PermissionScopes": [],
            "passwordCredentials": [],
        }
        body.update(sp.props)
        if context:
            body = {"@odata.context": self._ctx("servicePrincipals/$entity"), **body}
        return body

    def _g_create_sp(self, req: _Req) -> _Resp:
        body = self._need_json(req)
        if isinstance(body, _Resp):
            return body
        app_id = str(body.get("appId") or "")
        if not app_id:
            return self._graph_error(400, "Request_BadRequest", "Property 'appId' is required.")
        app = next(
            (
                a
                for a in self._apps.values()
                if a.app_id == app_id and a.tenant_id == req.token.tenant_id
            ),
            None,
        )
        if app is None or not self._visible(app):
            return self._sp_without_application(app_id)
        if not self._caller_can_manage(req, app):
            return self._denied()
        if any(s.app_id == app_id and s.tenant_id == app.tenant_id for s in self._sps.values()):
            return self._graph_error(
                409,
                "Request_MultipleObjectsWithSameKeyValue",
                "The service principal cannot be created, updated, or "
                "restored because the service principal name "
                f"{app_id} is already in use.",
            )
        extra = {
            k: v for k, v in body.items() if k not in ("appId", "id") and not k.startswith("@")
        }
        sp = ServicePrincipal(
            str(uuid.uuid4()),
            app_id,
            app.tenant_id,
            app.display_name,
            self.now(),
            props=extra,
            invisible=self.replication_delay,
        )
        self._sps[sp.id] = sp
        return self._g_ok(201, self._sp_json(sp))

    def _sp_without_application(self, app_id: str) -> _Resp:
        """What Graph answers to a service principal for an application it cannot see (yet).
        Seen in the wild, and each retried by Azure CLI's create_service_principal_for_rbac
        (' does not reference ', ' does not exist ', 'must in the local tenant'); the form is
        the double's `sp_replication_form`."""
        if self.sp_replication_form == "local_tenant":
            return self._graph_error(
                403,
                "Authorization_RequestDenied",
                "When using this permission, the backing application of the service principal "
                "being created must in the local tenant",
            )
        if self.sp_replication_form == "not_exist":
            return self._graph_error(
                404,
                "Request_ResourceNotFound",
                f"Resource '{app_id}' does not exist or one of its queried reference-property "
                "objects are not present.",
            )
        msg = (
            f"The appId '{app_id}' of the service principal does not reference a valid "
            "application object."
        )
        return self._graph_error(
            400,
            "Request_BadRequest",
            msg,
            details=[{"code": "NoBackingApplicationObject", "message": msg, "target": "appId"}],
        )

    def _find_sp(self, req: _Req) -> ServicePrincipal | _Resp:
        tenant = req.token.tenant_id
        alt = req.group("alt")
        if alt is None:
            ident = req.group("key").lstrip("/")
            sp = self._sps.get(ident)
            if sp is not None and sp.tenant_id != tenant:
                sp = None
        else:
            ident = req.group("altval").replace("''", "'")
            if alt.lower() not in ("appid", "id"):
                return self._graph_error(
                    400, "BadRequest", f"Invalid alternate key property '{alt}'."
                )
            attr = "app_id" if alt.lower() == "appid" else "id"
            sp = next(
                (
                    s
                    for s in self._sps.values()
                    if s.tenant_id == tenant and getattr(s, attr).lower() == ident.lower()
                ),
                None,
            )
        if sp is None or not self._visible(sp):
            return self._not_found(ident)
        return sp

    def _g_list_sps(self, req: _Req) -> _Resp:
        clauses = self._g_filter(req, {"appId", "displayName", "id"})
        if isinstance(clauses, _Resp):
            return clauses
        items = []
        for sp in list(self._sps.values()):
            if sp.tenant_id != req.token.tenant_id:
                continue
            j = self._sp_json(sp, context=False)
            if self._matches(j, clauses) and self._visible(sp):
                items.append(j)
        return self._g_page(req, items, "servicePrincipals")

    def _g_get_sp(self, req: _Req) -> _Resp:
        sp = self._find_sp(req)
        if isinstance(sp, _Resp):
            return sp
        return self._g_ok(200, self._sp_json(sp))

    def _g_delete_sp(self, req: _Req) -> _Resp:
        sp = self._find_sp(req)
        if isinstance(sp, _Resp):
            return sp
        app = next((a for a in self._apps.values() if a.app_id == sp.app_id), None)
        if app is None or not self._caller_can_manage(req, app):
            return self._denied()
        del self._sps[sp.id]
        return self._g_ok(204)

    # ================================================================== ARM

    def _arm_routes(self):
        sub = r"^/subscriptions/(?P<sub>[^/]+)"
        auth = sub + r"/providers/Microsoft\.Authorization"
        i = re.I
        return [
            ("GET", re.compile(r"^/subscriptions/?$", i), self._a_list_subs),
            ("GET", re.compile(sub + r"/?$", i), self._a_get_sub),
            ("GET", re.compile(r"^/tenants/?$", i), self._a_tenants),
            ("GET", re.compile(auth + r"/permissions/?$", i), self._a_permissions),
            ("GET", re.compile(auth + r"/roleDefinitions/?$", i), self._a_list_role_defs),
            ("GET", re.compile(auth + r"/roleDefinitions/(?P<rd>[^/]+)$", i), self._a_role_def),
            (
                "PUT",
                re.compile(auth + r"/roleDefinitions/(?P<rd>[^/]+)$", i),
                self._a_put_role_def,
            ),
            (
                "DELETE",
                re.compile(auth + r"/roleDefinitions/(?P<rd>[^/]+)$", i),
                self._a_delete_role_def,
            ),
            (
                "GET",
                re.compile(
                    r"^/providers/Microsoft\.Authorization/roleDefinitions/"
                    r"(?P<rd>[^/]+)$",
                    i,
                ),
                self._a_role_def,
            ),
            ("GET", re.compile(auth + r"/roleAssignments/?$", i), self._a_list_assignments),
            (
                "PUT",
                re.compile(auth + r"/roleAssignments/(?P<name>[^/]+)$", i),
                self._a_put_assignment,
            ),
            (
                "GET",
                re.compile(auth + r"/roleAssignments/(?P<name>[^/]+)$", i),
                self._a_get_assignment,
            ),
            (
                "DELETE",
                re.compile(auth + r"/roleAssignments/(?P<name>[^/]+)$", i),
                self._a_delete_assignment,
            ),
            *self._mg_routes(),
        ]

    # Management groups. REST "Management Groups - List / Get" (api-version 2021-04-01,
    # learn.microsoft.com/rest/api/managementgroups): the list holds the groups the caller
    # may read (`Microsoft.Management/managementGroups/read` at the group or above);
    # `$expand=children` adds `properties.children[]`, each `{type, id, name, displayName,
    # children}` with `type` "/subscriptions" or "Microsoft.Management/managementGroups"
    # (the SDKs' `ManagementGroupChildType`), and `$recurse=true` the whole tree below.
    # A group the caller may not read is 403 AuthorizationFailed, whether or not it exists
    # (the double's choice: ARM authorizes the scope before it looks the group up).
    # Permissions (`…/providers/Microsoft.Authorization/permissions`) and role assignments
    # work at a group's scope as at a subscription's ("Understand scope for Azure RBAC");
    # an assignment there is inherited by the groups and subscriptions below.

    def _mg_routes(self):
        mg = r"^/providers/Microsoft\.Management/managementGroups/(?P<mg>[^/]+)"
        auth = mg + r"/providers/Microsoft\.Authorization"
        i = re.I
        return [
            (
                "GET",
                re.compile(r"^/providers/Microsoft\.Management/managementGroups/?$", i),
                self._a_list_groups,
            ),
            ("GET", re.compile(mg + r"/?$", i), self._a_get_group),
            ("GET", re.compile(auth + r"/permissions/?$", i), self._a_permissions),
            ("GET", re.compile(auth + r"/roleDefinitions/(?P<rd>[^/]+)$", i), self._a_role_def),
            (
                "PUT",
                re.compile(auth + r"/roleDefinitions/(?P<rd>[^/]+)$", i),
                self._a_put_role_def,
            ),
            (
                "DELETE",
                re.compile(auth + r"/roleDefinitions/(?P<rd>[^/]+)$", i),
                self._a_delete_role_def,
            ),
            ("GET", re.compile(auth + r"/roleAssignments/?$", i), self._a_list_assignments),
            (
                "PUT",
                re.compile(auth + r"/roleAssignments/(?P<name>[^/]+)$", i),
                self._a_put_assignment,
            ),
            (
                "DELETE",
                re.compile(auth + r"/roleAssignments/(?P<name>[^/]+)$", i),
                self._a_delete_assignment,
            ),
        ]

    def _target(self, req: _Req):
        """The subscription or management group a request's path names, or the refusal."""
        if req.match is None or "mg" not in req.match.groupdict():
            return self._subscription(req)
        group = self.management_groups.get(req.group("mg").lower())
        scope = f"{MG_PREFIX}{req.group('mg')}"
        if group is None or group.tenant_id != req.token.tenant_id:
            return self._authorization_failed(req, MG_READ, scope)
        return group

    def _mg_json(self, group: ManagementGroup, expand: bool, recurse: bool) -> dict:
        parent = self.management_groups.get(group.parent.lower()) if group.parent else None
        body: dict = {
            "id": group.scope,
            "type": "Microsoft.Management/managementGroups",
            "name": group.id,
            "properties": {
                "tenantId": group.tenant_id,
                "displayName": group.name,
                "details": {
                    "version": 1,
                    "updatedTime": "2024-01-01T00:00:00.0000000Z",
                    "updatedBy": None,
                    "parent": {
                        "id": parent.scope if parent else f"{MG_PREFIX}{group.tenant_id}",
                        "name": parent.id if parent else group.tenant_id,
                        "displayName": parent.name if parent else "Tenant Root Group",
                    },
                },
            },
        }
        if expand:
            body["properties"]["children"] = self._mg_children(group, recurse)
        return body

    def _mg_children(self, group: ManagementGroup, recurse: bool) -> list[dict]:
        children: list[dict] = []
        for g in self.management_groups.values():
            if g.parent and g.parent.lower() == group.id.lower():
                children.append(
                    {
                        "type": "Microsoft.Management/managementGroups",
                        "id": g.scope,
                        "name": g.id,
                        "displayName": g.name,
                        "children": self._mg_children(g, recurse) if recurse else None,
                    }
                )
        for sub in self.subscriptions.values():
            if sub.management_group == group.id.lower():
                children.append(
                    {
                        "type": "/subscriptions",
                        "id": sub.scope,
                        "name": sub.subscription_id,
                        "displayName": sub.name,
                        "children": None,
                    }
                )
        return children

    def _a_list_groups(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        pid = req.token.principal_id
        items = [
            self._mg_json(g, False, False)
            for g in self.management_groups.values()
            if g.tenant_id == req.token.tenant_id
            and permissions_allow(self._caller_blocks(pid, g.scope), MG_READ)
        ]
        return self._a_page(req, items)

    def _a_get_group(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        group = self._target(req)
        if isinstance(group, _Resp):
            return group
        if not permissions_allow(self._caller_blocks(req.token.principal_id, group.scope), MG_READ):
            return self._authorization_failed(req, MG_READ, group.scope)
        expand = (req.query.get("$expand") or "").strip().lower()
        if expand and any(x not in ("children", "path", "ancestors") for x in expand.split(",")):
            return self._arm_error(
                400, "InvalidRequest", f"The $expand value '{expand}' is not supported."
            )
        recurse = (req.query.get("$recurse") or "false").lower() == "true"
        return self._a_ok(200, self._mg_json(group, "children" in expand, recurse), req)

    def _a_ok(self, status: int, body: Any = None, req: _Req | None = None) -> _Resp:
        corr = (req.headers.get("x-ms-correlation-request-id") if req else None) or str(
            uuid.uuid4()
        )
        return _Resp(
            status,
            body,
            {
                "x-ms-request-id": str(uuid.uuid4()),
                "x-ms-correlation-request-id": corr,
                "x-ms-ratelimit-remaining-subscription-reads": "11999",
            },
        )

    def _api_version(self, req: _Req) -> _Resp | None:
        if not req.query.get("api-version"):
            return self._arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        return None

    def _caller_blocks(self, principal_id: str, scope: str) -> list[dict]:
        blocks = []
        for ra in self.role_assignments:
            if ra.principal_id != principal_id:
                continue
            if self._applies(ra.scope, scope):
                rd = self.role_definitions.get(ra.role_definition_id)
                if rd is not None:
                    blocks.append(rd.permission_block())
        return blocks

    def _has_access(self, principal_id: str, sid: str) -> bool:
        return any(
            ra.principal_id == principal_id
            and (ra.subscription_id == sid or self._applies(ra.scope, f"/subscriptions/{sid}"))
            for ra in self.role_assignments
        )

    def _authorization_failed(self, req: _Req, action: str, scope: str) -> _Resp:
        tok = req.token
        who = (
            f"The client '{tok.principal_name}' with object id '{tok.principal_id}'"
            if tok.user
            else f"The client '{tok.principal_id}' with object id '{tok.principal_id}'"
        )
        return self._arm_error(
            403,
            "AuthorizationFailed",
            f"{who} does not have authorization to perform action "
            f"'{action}' over scope '{scope}' or the scope is invalid. If "
            "access was recently granted, please refresh your credentials.",
        )

    def _subscription(self, req: _Req) -> Subscription | _Resp:
        sid = req.group("sub").lower()
        sub = self.subscriptions.get(sid)
        if sub is None:
            return self._arm_error(
                404,
                "SubscriptionNotFound",
                f"The subscription '{req.group('sub')}' could not be found.",
            )
        if sub.tenant_id != req.token.tenant_id:
            return self._arm_error(
                401,
                "InvalidAuthenticationTokenTenant",
                f"The access token is from the wrong issuer 'https://sts.windows.net/"
                f"{req.token.tenant_id}/'. It must match the tenant 'https://sts.windows.net/"
                f"{sub.tenant_id}/' associated with this subscription. Please use the authority "
                f"(URL) '{self.authority_host}/{sub.tenant_id}' to get the token. Note, if the "
                "subscription is transferred to another tenant there is no impact to the "
                "services, but information about new tenant could take time to propagate (up "
                "to an hour). If you just transferred your subscription and see this error "
                "message, please try back later.",
            )
        return sub

    def _sub_json(self, sub: Subscription) -> dict:
        return {
            "id": f"/subscriptions/{sub.subscription_id}",
            "authorizationSource": "RoleBased",
            "managedByTenants": [],
            "tags": {},
            "subscriptionId": sub.subscription_id,
            "tenantId": sub.tenant_id,
            "displayName": sub.name,
            "state": sub.state,
            "subscriptionPolicies": {
                "locationPlacementId": "Public_2014-09-01",
                "quotaId": "PayAsYouGo_2014-09-01",
                "spendingLimit": "Off",
            },
        }

    def _a_page(self, req: _Req, items: list[dict], extra: dict | None = None) -> _Resp:
        offset = _decode_skiptoken(req.query.get("$skiptoken"))
        page = items[offset : offset + self.page_size]
        body: dict = {"value": page}
        body.update(extra or {})
        if offset + self.page_size < len(items):
            params = {k: v for k, v in req.query.items() if k != "$skiptoken"}
            params["$skiptoken"] = _encode_skiptoken(offset + self.page_size)
            body["nextLink"] = f"{self.arm_url}{quote(req.path)}?" + urlencode(params)
        return self._a_ok(200, body, req)

    def _a_list_subs(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        pid = req.token.principal_id
        subs = [
            self._sub_json(s)
            for s in self.subscriptions.values()
            if s.tenant_id == req.token.tenant_id and self._has_access(pid, s.subscription_id)
        ]
        return self._a_page(req, subs, {"count": {"type": "Total", "value": len(subs)}})

    def _a_get_sub(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._subscription(req)
        if isinstance(sub, _Resp):
            return sub
        if not self._has_access(req.token.principal_id, sub.subscription_id):
            return self._authorization_failed(
                req,
                "Microsoft.Resources/subscriptions/read",
                f"/subscriptions/{sub.subscription_id}",
            )
        return self._a_ok(200, self._sub_json(sub), req)

    def _a_tenants(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        # Tenants - List (api-version 2022-12-01): the tenants of the signed-in account, its
        # home and those it is a guest of, whichever tenant the token is for; a service
        # principal sees its own tenant.
        ids = [req.token.tenant_id]
        if req.token.user is not None:
            person = req.token.user.person
            with self.lock:
                ids = [person.tenant_id] + sorted(
                    {u.tenant_id for u in self.users.values() if u.home is person}
                )
        value = []
        for tid in ids:
            t = self.tenants.get(tid)
            if t is None or t.personal:
                continue
            value.append(
                {
                    "id": f"/tenants/{t.id}",
                    "tenantId": t.id,
                    "tenantCategory": "Home",
                    "country": "US",
                    "countryCode": "US",
                    "displayName": t.display_name,
                    "domains": list(t.domains),
                    "defaultDomain": t.default_domain,
                    "tenantType": "AAD",
                }
            )
        return self._a_page(req, value)

    def _a_permissions(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._target(req)
        if isinstance(sub, _Resp):
            return sub
        blocks = self._caller_blocks(req.token.principal_id, sub.scope)
        return self._a_ok(200, {"value": blocks}, req)

    def _rd_json(self, rd: RoleDefinition, sid: str | None) -> dict:
        prefix = f"/subscriptions/{sid}" if sid else ""
        return {
            "id": f"{prefix}/providers/Microsoft.Authorization/roleDefinitions/{rd.id}",
            "type": "Microsoft.Authorization/roleDefinitions",
            "name": rd.id,
            "properties": {
                "roleName": rd.name,
                "type": "CustomRole" if rd.custom else "BuiltInRole",
                "description": rd.description,
                "assignableScopes": list(rd.assignable_scopes) if rd.custom else ["/"],
                "permissions": [rd.permission_block()],
                "createdOn": "2015-02-02T21:55:09.8806423Z",
                "updatedOn": "2024-01-01T00:00:00.0000000Z",
                "createdBy": None,
                "updatedBy": None,
            },
        }

    def _a_list_role_defs(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._subscription(req)
        if isinstance(sub, _Resp):
            return sub
        wanted = None
        flt = req.query.get("$filter")
        if flt:
            m = re.fullmatch(r"\s*roleName\s+eq\s+'((?:[^']|'')*)'\s*", flt, re.I)
            if not m:
                return self._arm_error(
                    400, "InvalidFilterInQueryString", f"The filter '{flt}' is not supported."
                )
            wanted = m.group(1).replace("''", "'").lower()
        items = [
            self._rd_json(rd, sub.subscription_id)
            for rd in self.role_definitions.values()
            if (wanted is None or rd.name.lower() == wanted)
            and (not rd.custom or rd.tenant_id == sub.tenant_id)
        ]
        return self._a_page(req, items)

    def _a_role_def(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sid = None
        if req.match and "mg" in req.match.groupdict():
            group = self._target(req)
            if isinstance(group, _Resp):
                return group
        if req.match and "sub" in req.match.groupdict():
            sub = self._subscription(req)
            if isinstance(sub, _Resp):
                return sub
            sid = sub.subscription_id
        rd = self.role_definitions.get(req.group("rd").lower())
        if rd is None or (rd.custom and rd.tenant_id != req.token.tenant_id):
            return self._arm_error(
                404,
                "RoleDefinitionDoesNotExist",
                f"The role definition '{req.group('rd')}' could not be found.",
            )
        return self._a_ok(200, self._rd_json(rd, sid), req)

    # Custom roles. Rules from Microsoft's "Azure custom roles" and "Understand Azure role
    # definitions" (learn.microsoft.com/azure/role-based-access-control/custom-roles,
    # /role-definitions) and the REST reference "Role Definitions - Create Or Update"
    # (api-version 2022-04-01):
    # - the caller needs Microsoft.Authorization/roleDefinitions/write on every assignable
    #   scope (Owner and User Access Administrator have it) — else 403 AuthorizationFailed;
    # - `roleName` is unique in the tenant (directory): another definition with the same name
    #   is 409 RoleDefinitionWithSameNameExists "A role definition cannot be updated with a
    #   name that already exists." (as reported in pulumi/pulumi-azure#840 and
    #   MicrosoftDocs/azure-docs#60446); the same GUID again is an update (200);
    # - at most 128 characters of name, 1024 of description;
    # - `assignableScopes` is required; a custom role cannot name the root scope "/";
    # - a new definition replicates: right after creation it can be "not found"
    #   (RoleDefinitionDoesNotExist, hashicorp/terraform-provider-azurerm#10479), here for
    #   `role_definition_replication` assignments;
    # - a definition that still has assignments cannot be deleted (409
    #   RoleDefinitionHasAssignments); an assignment outside its assignable scopes is refused.
    # The exact code of the last refusal and of a malformed body are the double's own.

    def _a_put_role_def(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._target(req)
        if isinstance(sub, _Resp):
            return sub
        rd_id = req.group("rd").lower()
        if not _is_guid(rd_id):
            return self._arm_error(
                400,
                "InvalidRoleDefinitionId",
                f"The role definition ID '{req.group('rd')}' is not valid. The role "
                "definition ID must be a GUID.",
            )
        props = req.body.get("properties") if isinstance(req.body, dict) else None
        invalid = None
        if not isinstance(props, dict):
            invalid = "'properties' is required"
        else:
            name = props.get("roleName")
            perms = props.get("permissions")
            scopes = props.get("assignableScopes")
            if not isinstance(name, str) or not name.strip() or len(name) > 128:
                invalid = "'properties.roleName' must hold 1 to 128 characters"
            elif len(str(props.get("description") or "")) > 1024:
                invalid = "'properties.description' may hold at most 1024 characters"
            elif str(props.get("type") or "CustomRole").lower() != "customrole":
                invalid = "only custom roles can be created ('properties.type': CustomRole)"
            elif (
                not isinstance(perms, list)
                or len(perms) != 1
                or not isinstance(perms[0], dict)
                or not all(
                    isinstance(perms[0].get(k, []), list)
                    and all(isinstance(a, str) for a in perms[0].get(k, []))
                    for k in ("actions", "notActions", "dataActions", "notDataActions")
                )
            ):
                invalid = "'properties.permissions' must hold one permission block"
            elif not isinstance(scopes, list) or not scopes:
                invalid = "'properties.assignableScopes' is required"
            elif any(not isinstance(x, str) or x.strip() in ("", "/") for x in scopes):
                invalid = "a custom role cannot be assignable at the root scope '/'"
        if invalid:
            return self._arm_error(
                400, "InvalidRoleDefinition", f"The role definition is invalid: {invalid}."
            )
        assert isinstance(props, dict)
        scopes = [str(x).rstrip("/") for x in props["assignableScopes"]]
        own = sub.scope
        # "Azure custom roles": only one management group may be among a custom role's
        # assignable scopes
        if sum(1 for x in scopes if x.lower().startswith(MG_PREFIX.lower())) > 1:
            return self._arm_error(
                400,
                "InvalidRoleDefinition",
                "A custom role can have only one management group in its assignable scopes.",
            )
        if not any(
            own.lower() == x.lower() or own.lower().startswith(x.lower() + "/") for x in scopes
        ):
            return self._arm_error(
                400,
                "InvalidRoleDefinition",
                f"The role definition's scope '{own}' is not one of its assignable scopes.",
            )
        for x in scopes:
            m = re.fullmatch(r"/subscriptions/([^/]+)", x, re.I)
            g = re.fullmatch(r"/providers/Microsoft\.Management/managementGroups/([^/]+)", x, re.I)
            other = (
                self.subscriptions.get(m.group(1).lower())
                if m
                else self.management_groups.get(g.group(1).lower())
                if g
                else None
            )
            if other is None or other.tenant_id != sub.tenant_id:
                return self._arm_error(
                    400,
                    "InvalidRoleDefinition",
                    f"The assignable scope '{x}' is not a subscription or management group of "
                    "this tenant.",
                )
            target = f"{x}/providers/Microsoft.Authorization/roleDefinitions/{rd_id}"
            if not permissions_allow(
                self._caller_blocks(req.token.principal_id, target), ROLE_DEFINITION_WRITE
            ):
                return self._authorization_failed(req, ROLE_DEFINITION_WRITE, target)
        existing = self.role_definitions.get(rd_id)
        if existing is not None and not existing.custom:
            return self._arm_error(
                403, "AuthorizationFailed", "Built-in role definitions cannot be changed."
            )
        name = props["roleName"].strip()
        if any(
            rd.id != rd_id
            and rd.name.lower() == name.lower()
            and (not rd.custom or rd.tenant_id == sub.tenant_id)
            for rd in self.role_definitions.values()
        ):
            return self._arm_error(
                409,
                "RoleDefinitionWithSameNameExists",
                "A role definition cannot be updated with a name that already exists.",
            )
        block = props["permissions"][0]
        rd = RoleDefinition(
            rd_id,
            name,
            str(props.get("description") or ""),
            list(block.get("actions", [])),
            list(block.get("notActions", [])),
            list(block.get("dataActions", [])),
            list(block.get("notDataActions", [])),
            custom=True,
            tenant_id=sub.tenant_id,
            assignable_scopes=scopes,
            created_by=req.token.principal_id,
            invisible=existing.invisible if existing else self.role_definition_replication,
        )
        self.role_definitions[rd_id] = rd
        return self._a_ok(200 if existing else 201, self._rd_json(rd, sub.subscription_id), req)

    def _a_delete_role_def(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._target(req)
        if isinstance(sub, _Resp):
            return sub
        rd_id = req.group("rd").lower()
        rd = self.role_definitions.get(rd_id)
        if rd is None or not rd.custom or rd.tenant_id != sub.tenant_id:
            if rd is not None and not rd.custom:
                return self._arm_error(
                    403, "AuthorizationFailed", "Built-in role definitions cannot be deleted."
                )
            return self._a_ok(204, None, req)
        for x in rd.assignable_scopes:
            target = f"{x}/providers/Microsoft.Authorization/roleDefinitions/{rd_id}"
            if not permissions_allow(
                self._caller_blocks(req.token.principal_id, target), ROLE_DEFINITION_DELETE
            ):
                return self._authorization_failed(req, ROLE_DEFINITION_DELETE, target)
        if any(ra.role_definition_id == rd_id for ra in self.role_assignments):
            return self._arm_error(
                409,
                "RoleDefinitionHasAssignments",
                f"There are existing role assignments referencing role (code: "
                f"RoleDefinitionHasAssignments) '{rd_id}'.",
            )
        del self.role_definitions[rd_id]
        return self._a_ok(200, self._rd_json(rd, sub.subscription_id), req)

    def custom_roles(self, tenant_id: str | None = None) -> list[RoleDefinition]:
        """The custom role definitions (of one tenant, or all)."""
        return [
            rd
            for rd in self.role_definitions.values()
            if rd.custom and (tenant_id is None or rd.tenant_id == tenant_id.lower())
        ]

    def blocks_of_application(self, app_id: str, subscription_id: str) -> list[dict]:
        """The permission blocks an application's service principal holds on a subscription
        (for the appliance double's permission check)."""
        sp = self.service_principal(app_id)
        if sp is None:
            return []
        return self._caller_blocks(sp.id, f"/subscriptions/{subscription_id.lower()}")

    def _ra_json(self, ra: RoleAssignment) -> dict:
        sid = ra.subscription_id
        return {
            "properties": {
                "roleDefinitionId": (f"/subscriptions/{sid}" if sid else "")
                + f"/providers/Microsoft.Authorization/roleDefinitions/{ra.role_definition_id}",
                "principalId": ra.principal_id,
                "principalType": ra.principal_type,
                "scope": ra.scope,
                "condition": None,
                "conditionVersion": None,
                "createdOn": _iso(ra.created_on),
                "updatedOn": _iso(ra.created_on),
                "createdBy": ra.created_by,
                "updatedBy": ra.created_by,
                "delegatedManagedIdentityResourceId": None,
                "description": ra.description,
            },
            "id": f"{ra.scope}/providers/Microsoft.Authorization/roleAssignments/{ra.name}",
            "type": "Microsoft.Authorization/roleAssignments",
            "name": ra.name,
        }

    def _lookup_principal(self, tenant_id: str, principal_id: str) -> tuple[str, object] | None:
        pid = principal_id.lower()
        sp = self._sps.get(pid)
        if sp is not None and sp.tenant_id == tenant_id:
            return "ServicePrincipal", sp
        user = self.users.get(pid)
        if user is not None and user.tenant_id == tenant_id:
            return "User", user
        return None

    def _a_put_assignment(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._target(req)
        if isinstance(sub, _Resp):
            return sub
        name = req.group("name")
        scope = sub.scope
        if not _is_guid(name):
            return self._arm_error(
                400,
                "InvalidRoleAssignmentId",
                f"The role assignment ID '{name}' is not valid. The role "
                "assignment ID must be a GUID.",
            )
        name = name.lower()
        full_scope = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        if not permissions_allow(
            self._caller_blocks(req.token.principal_id, full_scope), ROLE_ASSIGNMENT_WRITE
        ):
            return self._authorization_failed(req, ROLE_ASSIGNMENT_WRITE, full_scope)
        props = req.body.get("properties") if isinstance(req.body, dict) else None
        if (
            not isinstance(props, dict)
            or not props.get("roleDefinitionId")
            or not props.get("principalId")
        ):
            return self._arm_error(
                400,
                "InvalidRequestContent",
                "The request content was invalid and could not be "
                "deserialized: 'properties.roleDefinitionId' and "
                "'properties.principalId' are required.",
            )
        rd_path = str(props["roleDefinitionId"])
        m = re.search(
            r"/providers/Microsoft\.Authorization/roleDefinitions/([^/]+)$", rd_path, re.I
        )
        rd_id = m.group(1).lower() if m else ""
        if not m or rd_id not in self.role_definitions:
            return self._arm_error(
                400,
                "RoleDefinitionDoesNotExist",
                f"The specified role definition with ID '{rd_id or rd_path}' does not exist.",
            )
        rd = self.role_definitions[rd_id]
        if rd.custom:
            if rd.tenant_id != sub.tenant_id or rd.invisible > 0:
                if rd.invisible > 0:
                    rd.invisible -= 1
                return self._arm_error(
                    400,
                    "RoleDefinitionDoesNotExist",
                    f"The specified role definition with ID '{rd_id}' does not exist.",
                )
            if not any(
                scope.lower() == x.lower() or scope.lower().startswith(x.lower() + "/")
                for x in rd.assignable_scopes
            ):
                return self._arm_error(
                    400,
                    "RoleDefinitionNotAssignableAtScope",
                    f"The role definition '{rd_id}' is not available for assignment at scope "
                    f"'{scope}'.",
                )
        principal_id = str(props["principalId"]).lower()
        found = self._lookup_principal(sub.tenant_id, principal_id)
        if (
            found is not None
            and isinstance(found[1], ServicePrincipal)
            and not self._visible(found[1])
        ):
            found = None
        if found is None:
            return self._arm_error(
                400,
                "PrincipalNotFound",
                f"Principal {principal_id.replace('-', '')} does not exist in the directory "
                f"{sub.tenant_id}. Check that you have the correct principal ID. If you are "
                "creating this principal and then immediately assigning a role, this error "
                "might be related to a replication delay. In this case, set the role "
                "assignment principalType property to a value, such as ServicePrincipal, User, "
                "or Group.  See https://aka.ms/docs-principaltype",
            )
        ptype = props.get("principalType")
        if ptype is not None and str(ptype).lower() != found[0].lower():
            return self._arm_error(
                400,
                "UnmatchedPrincipalType",
                f"The PrincipalId '{principal_id.replace('-', '')}' has type "
                f"'{found[0]}' , which is different from specified "
                f"PrincipalType '{ptype}'.",
            )
        existing = next((ra for ra in self.role_assignments if ra.name == name), None)
        if existing is not None:
            if (
                existing.principal_id == principal_id
                and existing.role_definition_id == rd_id
                and existing.scope.lower() == scope.lower()
            ):
                return self._a_ok(200, self._ra_json(existing), req)
            return self._arm_error(
                409,
                "RoleAssignmentUpdateNotPermitted",
                "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.",
            )
        if any(
            ra.principal_id == principal_id
            and ra.role_definition_id == rd_id
            and ra.scope.lower() == scope.lower()
            for ra in self.role_assignments
        ):
            return self._arm_error(
                409, "RoleAssignmentExists", "The role assignment already exists."
            )
        ra = RoleAssignment(
            name,
            scope,
            rd_id,
            principal_id,
            found[0],
            self.now(),
            created_by=req.token.principal_id,
            description=props.get("description"),
        )
        self.role_assignments.append(ra)
        return self._a_ok(201, self._ra_json(ra), req)

    def _a_get_assignment(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._subscription(req)
        if isinstance(sub, _Resp):
            return sub
        scope = f"/subscriptions/{sub.subscription_id}"
        if not permissions_allow(
            self._caller_blocks(req.token.principal_id, scope), ROLE_ASSIGNMENT_READ
        ):
            return self._authorization_failed(req, ROLE_ASSIGNMENT_READ, scope)
        ra = next(
            (
                r
                for r in self.role_assignments
                if r.name == req.group("name").lower() and r.subscription_id == sub.subscription_id
            ),
            None,
        )
        if ra is None:
            return self._arm_error(
                404,
                "RoleAssignmentNotFound",
                f"The role assignment '{req.group('name')}' is not found.",
            )
        return self._a_ok(200, self._ra_json(ra), req)

    def _a_list_assignments(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._target(req)
        if isinstance(sub, _Resp):
            return sub
        scope = sub.scope
        if not permissions_allow(
            self._caller_blocks(req.token.principal_id, scope), ROLE_ASSIGNMENT_READ
        ):
            return self._authorization_failed(req, ROLE_ASSIGNMENT_READ, scope)
        principal = None
        flt = (req.query.get("$filter") or "").strip()
        if flt:
            m = re.fullmatch(r"principalId\s+eq\s+'([^']*)'", flt, re.I) or re.fullmatch(
                r"assignedTo\('([^']*)'\)", flt, re.I
            )
            if m:
                principal = m.group(1).lower()
            elif not re.fullmatch(r"atScope\(\)", flt, re.I):
                return self._arm_error(
                    400, "UnsupportedQuery", f"The filter '{flt}' is not supported."
                )
        # at and below the scope, and (for a principal's, "List Azure role assignments using
        # the REST API") above it: what is inherited from management groups
        items = [
            self._ra_json(ra)
            for ra in self.role_assignments
            if (
                (sub.subscription_id is not None and ra.subscription_id == sub.subscription_id)
                or ra.scope.lower() == scope.lower()
                or ra.scope.lower().startswith(scope.lower() + "/")
                or (principal is not None and self._applies(ra.scope, scope))
            )
            and (principal is None or ra.principal_id == principal)
        ]
        return self._a_page(req, items)

    def _a_delete_assignment(self, req: _Req) -> _Resp:
        bad = self._api_version(req)
        if bad:
            return bad
        sub = self._target(req)
        if isinstance(sub, _Resp):
            return sub
        name = req.group("name").lower()
        full_scope = f"{sub.scope}/providers/Microsoft.Authorization/roleAssignments/{name}"
        if not permissions_allow(
            self._caller_blocks(req.token.principal_id, full_scope), ROLE_ASSIGNMENT_DELETE
        ):
            return self._authorization_failed(req, ROLE_ASSIGNMENT_DELETE, full_scope)
        ra = next(
            (
                r
                for r in self.role_assignments
                if r.name == name
                and (
                    r.subscription_id == sub.subscription_id
                    if sub.subscription_id is not None
                    else r.scope.lower() == sub.scope.lower()
                )
            ),
            None,
        )
        if ra is None:
            return self._a_ok(204, None, req)
        self.role_assignments.remove(ra)
        return self._a_ok(200, self._ra_json(ra), req)


# --------------------------------------------------------------------------- helpers


def _login_headers(req: _Req | None, extra: dict | None = None) -> dict:
    h = {
        "Cache-Control": "no-store, no-cache",
        "Pragma": "no-cache",
        "x-ms-request-id": str(uuid.uuid4()),
        "x-ms-ests-server": "2.1.0 - loopback",
    }
    if req is not None and req.headers.get("client-request-id"):
        h["client-request-id"] = req.headers["client-request-id"]
    h.update(extra or {})
    return h


def _parse_body(raw: bytes, content_type: str) -> tuple[Any, bool]:
    if not raw:
        return None, False
    ctype = content_type.lower()
    text = raw.decode("utf-8", errors="replace")
    if "application/x-www-form-urlencoded" in ctype:
        return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}, False
    if "json" in ctype or text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text), False
        except ValueError:
            return text, True
    return text, False


def _encode_skiptoken(offset: int) -> str:
    return "RFNwdAIAAQAAA" + _b64url(f"offset:{offset}".encode())


def _decode_skiptoken(token: str | None) -> int:
    if not token:
        return 0
    try:
        raw = token[len("RFNwdAIAAQAAA") :]
        raw += "=" * (-len(raw) % 4)
        return max(0, int(base64.urlsafe_b64decode(raw).decode().split(":", 1)[1]))
    except (ValueError, IndexError):
        return 0


def _secret_text() -> str:
    prefix = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(3))
    return prefix + "8Q~" + "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(34))


_STEP_KINDS = {
    "pending",
    "slow_down",
    "approve",
    "decline",
    "expire",
    "bad_code",
    "aadsts",
    "http",
    "drop",
    "ok",
}


def _normalise_step(step) -> tuple:
    if isinstance(step, str):
        step = (step,)
    step = tuple(step)
    if not step or step[0] not in _STEP_KINDS:
        raise ValueError(f"unknown script step {step!r}")
    if step[0] == "aadsts" and (len(step) < 2 or not str(step[1]).isdigit()):
        raise ValueError(f"('aadsts', code) needs a numeric code: {step!r}")
    if step[0] == "http" and len(step) < 2:
        raise ValueError(f"('http', status, retry_after) needs a status: {step!r}")
    return step


def _builtin_roles() -> list[RoleDefinition]:
    return [
        RoleDefinition(
            OWNER,
            "Owner",
            "Grants full access to manage all resources, including the ability to "
            "assign roles in Azure RBAC.",
            ["*"],
        ),
        RoleDefinition(
            CONTRIBUTOR,
            "Contributor",
            "Grants full access to manage all resources, but does not allow you to "
            "assign roles in Azure RBAC, manage assignments in Azure Blueprints, or "
            "share image galleries.",
            ["*"],
            not_actions=[
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/elevateAccess/Action",
                "Microsoft.Blueprint/blueprintAssignments/write",
                "Microsoft.Blueprint/blueprintAssignments/delete",
                "Microsoft.Compute/galleries/share/action",
                "Microsoft.Purview/consents/write",
                "Microsoft.Purview/consents/delete",
                "Microsoft.Resources/deploymentStacks/manageDenySetting/action",
                "Microsoft.Subscription/cancel/action",
                "Microsoft.Subscription/enable/action",
            ],
        ),
        RoleDefinition(
            READER,
            "Reader",
            "View all resources, but does not allow you to make any changes.",
            ["*/read"],
        ),
        RoleDefinition(
            USER_ACCESS_ADMINISTRATOR,
            "User Access Administrator",
            "Lets you manage user access to Azure resources.",
            ["*/read", "Microsoft.Authorization/*", "Microsoft.Support/*"],
        ),
        RoleDefinition(
            RBAC_ADMINISTRATOR,
            "Role Based Access Control Administrator",
            "Manage access to Azure resources by assigning roles using Azure RBAC.",
            [
                "Microsoft.Authorization/roleAssignments/write",
                "Microsoft.Authorization/roleAssignments/delete",
                "*/read",
                "Microsoft.Support/*",
            ],
        ),
        RoleDefinition(
            KEY_VAULT_CRYPTO_USER,
            "Key Vault Crypto User",
            "Perform cryptographic operations using keys. Only works for key vaults "
            "that use the 'Azure role-based access control' permission model.",
            [],
            data_actions=[
                "Microsoft.KeyVault/vaults/keys/read",
                "Microsoft.KeyVault/vaults/keys/update/action",
                "Microsoft.KeyVault/vaults/keys/backup/action",
                "Microsoft.KeyVault/vaults/keys/encrypt/action",
                "Microsoft.KeyVault/vaults/keys/decrypt/action",
                "Microsoft.KeyVault/vaults/keys/wrap/action",
                "Microsoft.KeyVault/vaults/keys/unwrap/action",
                "Microsoft.KeyVault/vaults/keys/sign/action",
                "Microsoft.KeyVault/vaults/keys/verify/action",
            ],
        ),
        RoleDefinition(
            STORAGE_QUEUE_DATA_CONTRIBUTOR,
            "Storage Queue Data Contributor",
            "Read, write, and delete Azure Storage queues and queue messages.",
            [
                "Microsoft.Storage/storageAccounts/queueServices/queues/delete",
                "Microsoft.Storage/storageAccounts/queueServices/queues/read",
                "Microsoft.Storage/storageAccounts/queueServices/queues/write",
            ],
            data_actions=[
                "Microsoft.Storage/storageAccounts/queueServices/queues/messages/delete",
                "Microsoft.Storage/storageAccounts/queueServices/queues/messages/read",
                "Microsoft.Storage/storageAccounts/queueServices/queues/messages/write",
                "Microsoft.Storage/storageAccounts/queueServices/queues/messages/process/action",
            ],
        ),
    ]


__all__ = [
    "AADSTS",
    "ALICE_UPN",
    "APPLICATION_ADMINISTRATOR",
    "APPLICATION_DEVELOPER",
    "AZURE_CLI_CLIENT_ID",
    "AccessToken",
    "Application",
    "CLOUD_APPLICATION_ADMINISTRATOR",
    "CONTRIBUTOR",
    "ClientLogin",
    "DEFAULT_DOMAIN",
    "DEFAULT_SUBSCRIPTIONS",
    "DEFAULT_TENANT_ID",
    "DeviceFlow",
    "Fault",
    "GLOBAL_ADMINISTRATOR",
    "GLOBAL_READER",
    "HYBRID_IDENTITY_ADMINISTRATOR",
    "SECURITY_READER",
    "DEFAULT_APP_POLICY_ID",
    "APP_POLICY_READER_ROLES",
    "KEY_VAULT_CRYPTO_USER",
    "MSA_TENANT_ID",
    "MicrosoftDouble",
    "OWNER",
    "Password",
    "RBAC_ADMINISTRATOR",
    "READER",
    "RecordedRequest",
    "RefreshToken",
    "RoleAssignment",
    "RoleDefinition",
    "STORAGE_QUEUE_DATA_CONTRIBUTOR",
    "ServicePrincipal",
    "Subscription",
    "TestCA",
    "Tenant",
    "USER_ACCESS_ADMINISTRATOR",
    "User",
    "permissions_allow",
]
