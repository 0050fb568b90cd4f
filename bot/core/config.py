"""Configuration from the environment (and `.env` in the working directory).

Every variable of the external contract is read here and nowhere else. A missing or
malformed value raises `ConfigError`, whose text is one line naming the variable and
how to fix it; the entry point prints that line and exits non-zero.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from bot.core.errors import ConfigError
from bot.core.purposes import AZURE_ACCOUNT_PURPOSES, DEFAULT_PURPOSES

AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"

CLOUDS: dict[str, dict[str, str]] = {
    "AzureCloud": {
        "authority_host": "https://login.microsoftonline.com",
        "graph_url": "https://graph.microsoft.com",
        "arm_url": "https://management.azure.com",
    },
    "AzureUSGovernment": {
        "authority_host": "https://login.microsoftonline.us",
        "graph_url": "https://graph.microsoft.us",
        "arm_url": "https://management.usgovcloudapi.net",
    },
    "AzureChinaCloud": {
        "authority_host": "https://login.chinacloudapi.cn",
        "graph_url": "https://microsoftgraph.chinacloudapi.cn",
        "arm_url": "https://management.chinacloudapi.cn",
    },
}

#: Built-in Azure role names the bot understands, by role-definition id.
BUILTIN_ROLES: dict[str, str] = {
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "User Access Administrator": "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    "Key Vault Crypto User": "12338af0-0e69-4776-bea7-57ae8d297424",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
}
DEFAULT_ROLES = ("Contributor", "Key Vault Crypto User", "Storage Queue Data Contributor")
#: What a service account can sign in with (`VEEAM_SA_CREDENTIAL`, `create --credential`).
CREDENTIALS = ("secret", "certificate")
#: How roles are given: the built-in ones above (or `VEEAM_SA_ROLES`' list), or one custom
#: role per account holding exactly what VBAzure needs for the account's purposes.
ROLE_MODES = ("builtin", "least-privilege")

GUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_SLACK_USER_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")
_SLACK_GROUP_RE = re.compile(r"^S[A-Z0-9]{2,}$")
_SLACK_CHANNEL_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Role:
    """A role to assign: its display name (or the GUID when given as one) and definition id."""

    name: str
    definition_id: str


@dataclass(frozen=True)
class Config:
    slack_bot_token: str
    admins: tuple[str, ...]
    slack_app_token: str | None = None
    slack_signing_secret: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    port: int = 3000
    db_path: Path = Path("./veeam-sa.db")
    encryption_key: str | None = None
    alert_channel: str | None = None
    cloud: str = "AzureCloud"
    authority_host: str = CLOUDS["AzureCloud"]["authority_host"]
    graph_url: str = CLOUDS["AzureCloud"]["graph_url"]
    arm_url: str = CLOUDS["AzureCloud"]["arm_url"]
    client_id: str = AZURE_CLI_CLIENT_ID
    tenant: str = "organizations"
    roles: tuple[Role, ...] = field(
        default_factory=lambda: tuple(Role(n, BUILTIN_ROLES[n]) for n in DEFAULT_ROLES)
    )
    secret_days: int = 365
    warn_days: tuple[int, ...] = (30, 14, 7, 1)
    veeam_url: str | None = None
    veeam_username: str | None = None
    veeam_password: str | None = None
    ssl_cert_file: str | None = None
    allow_personal_accounts: bool = False
    workers: int = 8
    log_level: str = "INFO"
    scan_minutes: int = 60
    log_format: str = "text"
    list_for_everyone: bool = False
    require_email_match: bool = False
    veeam_api_version: str = "v8.1"
    veeam_purposes: tuple[str, ...] = ()
    #: What a new account signs in with unless `create --credential` says otherwise.
    credential: str = "secret"
    #: "builtin" or "least-privilege" (see ROLE_MODES); `create --roles` overrides it.
    role_mode: str = "builtin"
    #: How long the appliance is asked again while it reports permissions missing (newly
    #: granted rights can take up to 15 minutes to show there); then a Recheck button stays.
    permission_check_window_s: float = 900.0
    #: The health check: every managed account once per this many hours, spread over them.
    health_hours: int = 24
    #: At most this many requests per second to Microsoft from the health check.
    health_rate: float = 2.0

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant}"

    @property
    def graph_scope(self) -> str:
        return f"{self.graph_url}/.default"

    @property
    def arm_scope(self) -> str:
        return f"{self.arm_url}/.default"

    @property
    def admin_users(self) -> frozenset[str]:
        return frozenset(a for a in self.admins if not a.startswith("S"))

    @property
    def admin_groups(self) -> frozenset[str]:
        return frozenset(a for a in self.admins if a.startswith("S"))

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context every outbound HTTPS client uses."""
        if self.ssl_cert_file:
            return ssl.create_default_context(cafile=self.ssl_cert_file)
        ctx = ssl.create_default_context()
        try:
            import certifi

            ctx.load_verify_locations(certifi.where())
        except (ImportError, OSError):  # the system store alone is still a valid answer
            pass
        return ctx


def _read_environment(environ: Mapping[str, str] | None, dotenv: Path | None) -> dict[str, str]:
    values: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        from dotenv import dotenv_values

        values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    return values


def _https_url(name: str, value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme != "https" or not parsed.netloc:
        raise ConfigError(name, f"must be an https:// URL (got {value!r})")
    return value.rstrip("/")


def _int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise ConfigError(
            name, f"must be a whole number from {low} to {high} (got {value!r})"
        ) from None
    if not low <= number <= high:
        raise ConfigError(name, f"must be a whole number from {low} to {high} (got {number})")
    return number


def _rate(name: str, value: str) -> float:
    """Requests per second: a number from 0.01 to 100."""
    try:
        rate = float(value)
    except ValueError:
        rate = float("nan")
    if not 0.01 <= rate <= 100:
        raise ConfigError(
            name, f"must be a number of requests per second from 0.01 to 100 (got {value!r})"
        )
    return rate


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name, f"must be true or false (got {value!r})")


def _roles(value: str) -> tuple[Role, ...]:
    by_lower = {name.lower(): name for name in BUILTIN_ROLES}
    roles: list[Role] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        if GUID_RE.match(item):
            name = next((n for n, i in BUILTIN_ROLES.items() if i == item.lower()), item.lower())
            roles.append(Role(name, item.lower()))
        elif item.lower() in by_lower:
            name = by_lower[item.lower()]
            roles.append(Role(name, BUILTIN_ROLES[name]))
        else:
            raise ConfigError(
                "VEEAM_SA_ROLES",
                f"names an unknown role {item!r}",
                "use built-in role names ("
                + ", ".join(BUILTIN_ROLES)
                + ") or role-definition GUIDs, or one word: builtin or least-privilege",
            )
    if not roles:
        raise ConfigError("VEEAM_SA_ROLES", "is empty", "name at least one role, or unset it")
    return tuple(dict.fromkeys(roles))


def load_config(
    environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")
) -> Config:
    """Build the configuration; raise `ConfigError` on the first bad value."""
    env = {k: v for k, v in _read_environment(environ, dotenv).items()}

    def get(name: str) -> str | None:
        value = env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    bot_token = get("SLACK_BOT_TOKEN")
    if bot_token is None:
        raise ConfigError(
            "SLACK_BOT_TOKEN",
            "is not set",
            "copy the Bot User OAuth Token (xoxb-…) from your Slack app's OAuth & Permissions page",
        )
    if not bot_token.startswith("xoxb-"):
        raise ConfigError(
            "SLACK_BOT_TOKEN",
            "is not a bot token",
            "it starts with xoxb-; find it on your Slack app's OAuth & Permissions page",
        )

    app_token = get("SLACK_APP_TOKEN")
    if app_token is not None and not app_token.startswith("xapp-"):
        raise ConfigError(
            "SLACK_APP_TOKEN",
            "is not an app-level token",
            "it starts with xapp-; create one with the connections:write scope under Basic Information",
        )
    signing_secret = get("SLACK_SIGNING_SECRET")
    if app_token is None and signing_secret is None:
        raise ConfigError(
            "SLACK_SIGNING_SECRET",
            "is not set (needed in HTTP mode, when SLACK_APP_TOKEN is unset)",
            "copy the Signing Secret from your Slack app's Basic Information page, "
            "or set SLACK_APP_TOKEN to use Socket Mode",
        )

    admins_raw = get("VEEAM_SA_ADMINS")
    if admins_raw is None:
        raise ConfigError(
            "VEEAM_SA_ADMINS",
            "is not set",
            "list the Slack user ids (U…) and/or user-group ids (S…) allowed to create and renew, "
            "comma-separated (a member's id is under their profile's ⋮ menu → Copy member ID)",
        )
    admins = tuple(dict.fromkeys(a.strip() for a in admins_raw.split(",") if a.strip()))
    for admin in admins:
        if not (_SLACK_USER_RE.match(admin) or _SLACK_GROUP_RE.match(admin)):
            raise ConfigError(
                "VEEAM_SA_ADMINS",
                f"holds {admin!r}, which is not a Slack user id (U…/W…) or user-group id (S…)",
            )
    if not admins:
        raise ConfigError("VEEAM_SA_ADMINS", "is empty", "name at least one Slack user or group id")

    api_url = get("SLACK_API_URL") or "https://slack.com/api/"
    parsed = urlparse(api_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError("SLACK_API_URL", f"must be an http(s) URL (got {api_url!r})")
    if not api_url.endswith("/"):
        api_url += "/"

    port = _int("PORT", get("PORT") or "3000", 0, 65535)

    key = get("VEEAM_SA_ENCRYPTION_KEY")
    if key is not None:
        from bot.core.crypto import validate_key

        if not validate_key(key):
            raise ConfigError(
                "VEEAM_SA_ENCRYPTION_KEY",
                "is not a valid key",
                "use 32 url-safe base64-encoded bytes, e.g. the output of "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`, "
                "or unset it to have one generated",
            )

    alert_channel = get("VEEAM_SA_ALERT_CHANNEL")
    if alert_channel is not None and not _SLACK_CHANNEL_RE.match(alert_channel):
        raise ConfigError(
            "VEEAM_SA_ALERT_CHANNEL",
            f"must be a channel id such as C0123ABCD (got {alert_channel!r})",
            "open the channel's details in Slack; the id is at the bottom of the About tab",
        )

    cloud = get("VEEAM_SA_CLOUD") or "AzureCloud"
    if cloud not in CLOUDS:
        raise ConfigError("VEEAM_SA_CLOUD", f"must be one of {', '.join(CLOUDS)} (got {cloud!r})")
    urls = dict(CLOUDS[cloud])
    for name, attr in (
        ("VEEAM_SA_AUTHORITY_HOST", "authority_host"),
        ("VEEAM_SA_GRAPH_URL", "graph_url"),
        ("VEEAM_SA_ARM_URL", "arm_url"),
    ):
        value = get(name)
        if value is not None:
            urls[attr] = _https_url(name, value)

    client_id = get("VEEAM_SA_CLIENT_ID") or AZURE_CLI_CLIENT_ID
    if not GUID_RE.match(client_id):
        raise ConfigError(
            "VEEAM_SA_CLIENT_ID", f"must be an application (client) id GUID (got {client_id!r})"
        )

    tenant = get("VEEAM_SA_TENANT") or "organizations"
    if not (
        tenant in ("organizations", "common") or GUID_RE.match(tenant) or _DOMAIN_RE.match(tenant)
    ):
        raise ConfigError(
            "VEEAM_SA_TENANT",
            f"must be 'organizations', 'common', a tenant id or a tenant domain (got {tenant!r})",
        )

    roles_raw = (get("VEEAM_SA_ROLES") or "").strip()
    role_mode = roles_raw.lower() if roles_raw.lower() in ROLE_MODES else "builtin"
    roles = _roles(
        ",".join(DEFAULT_ROLES) if not roles_raw or roles_raw.lower() in ROLE_MODES else roles_raw
    )
    window_raw = get("VEEAM_SA_PERMISSION_CHECK_SECONDS") or "900"
    try:
        permission_window = float(window_raw)
    except ValueError:
        permission_window = -1.0
    if not 0 <= permission_window <= 3600:
        raise ConfigError(
            "VEEAM_SA_PERMISSION_CHECK_SECONDS",
            f"must be a number of seconds from 0 to 3600 (got {window_raw!r})",
        )
    secret_days = _int("VEEAM_SA_SECRET_DAYS", get("VEEAM_SA_SECRET_DAYS") or "365", 1, 730)
    credential = (get("VEEAM_SA_CREDENTIAL") or "secret").strip().lower()
    if credential not in CREDENTIALS:
        raise ConfigError(
            "VEEAM_SA_CREDENTIAL",
            f"must be 'secret' or 'certificate' (got {credential!r})",
        )

    warn_raw = get("VEEAM_SA_WARN_DAYS") or "30,14,7,1"
    warn: list[int] = []
    for part in warn_raw.split(","):
        if part.strip():
            warn.append(_int("VEEAM_SA_WARN_DAYS", part, 1, 365))
    if not warn:
        raise ConfigError(
            "VEEAM_SA_WARN_DAYS", "is empty", "give thresholds in days such as 30,14,7,1"
        )
    warn_days = tuple(sorted(set(warn), reverse=True))

    veeam = {n: get(n) for n in ("VEEAM_URL", "VEEAM_USERNAME", "VEEAM_PASSWORD")}
    if any(veeam.values()) and not all(veeam.values()):
        missing = next(n for n, v in veeam.items() if not v)
        raise ConfigError(
            missing,
            "is not set",
            "VEEAM_URL, VEEAM_USERNAME and VEEAM_PASSWORD go together; set all three or none",
        )
    veeam_url = _https_url("VEEAM_URL", veeam["VEEAM_URL"]) if veeam["VEEAM_URL"] else None
    veeam_api_version = get("VEEAM_API_VERSION") or "v8.1"
    if not re.match(r"^v\d+(\.\d+)*$", veeam_api_version):
        raise ConfigError("VEEAM_API_VERSION", f"must look like v8.1 (got {veeam_api_version!r})")
    purposes = tuple(
        p.strip()
        for p in (get("VEEAM_PURPOSES") or ",".join(DEFAULT_PURPOSES)).split(",")
        if p.strip()
    )
    unknown = [p for p in purposes if p not in AZURE_ACCOUNT_PURPOSES]
    if unknown or not purposes:
        raise ConfigError(
            "VEEAM_PURPOSES",
            f"names unknown purposes {unknown}" if unknown else "is empty",
            "use values from: " + ", ".join(sorted(AZURE_ACCOUNT_PURPOSES)),
        )

    cert_file = get("SSL_CERT_FILE")
    if cert_file is not None and not Path(cert_file).is_file():
        raise ConfigError("SSL_CERT_FILE", f"names {cert_file!r}, which is not a readable file")

    workers = _int("VEEAM_SA_WORKERS", get("VEEAM_SA_WORKERS") or "8", 1, 64)
    log_format = (get("VEEAM_SA_LOG_FORMAT") or "text").lower()
    if log_format not in ("text", "json"):
        raise ConfigError("VEEAM_SA_LOG_FORMAT", f"must be text or json (got {log_format!r})")
    scan_minutes = _int("VEEAM_SA_SCAN_MINUTES", get("VEEAM_SA_SCAN_MINUTES") or "60", 1, 24 * 60)
    health_hours = _int(
        "VEEAM_SA_HEALTH_INTERVAL", get("VEEAM_SA_HEALTH_INTERVAL") or "24", 1, 7 * 24
    )
    health_rate = _rate("VEEAM_SA_HEALTH_RATE", get("VEEAM_SA_HEALTH_RATE") or "2")
    log_level = (get("VEEAM_SA_LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            "VEEAM_SA_LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR (got {log_level!r})"
        )

    return Config(
        slack_bot_token=bot_token,
        slack_app_token=app_token,
        slack_signing_secret=signing_secret,
        slack_api_url=api_url,
        port=port,
        db_path=Path(get("VEEAM_SA_DB") or "./veeam-sa.db"),
        encryption_key=key,
        alert_channel=alert_channel,
        admins=admins,
        cloud=cloud,
        authority_host=urls["authority_host"],
        graph_url=urls["graph_url"],
        arm_url=urls["arm_url"],
        client_id=client_id.lower(),
        tenant=tenant,
        roles=roles,
        secret_days=secret_days,
        warn_days=warn_days,
        veeam_url=veeam_url,
        veeam_username=veeam["VEEAM_USERNAME"],
        veeam_password=veeam["VEEAM_PASSWORD"],
        ssl_cert_file=cert_file,
        allow_personal_accounts=_bool(
            "VEEAM_SA_ALLOW_PERSONAL_ACCOUNTS", get("VEEAM_SA_ALLOW_PERSONAL_ACCOUNTS") or "false"
        ),
        workers=workers,
        log_level=log_level,
        scan_minutes=scan_minutes,
        log_format=log_format,
        list_for_everyone=_bool(
            "VEEAM_SA_LIST_FOR_EVERYONE", get("VEEAM_SA_LIST_FOR_EVERYONE") or "false"
        ),
        veeam_api_version=veeam_api_version,
        veeam_purposes=purposes,
        role_mode=role_mode,
        permission_check_window_s=permission_window,
        health_hours=health_hours,
        health_rate=health_rate,
        require_email_match=_bool(
            "VEEAM_SA_REQUIRE_EMAIL_MATCH", get("VEEAM_SA_REQUIRE_EMAIL_MATCH") or "false"
        ),
        credential=credential,
    )
