"""`veeam-sa-bot doctor`: check the configuration and reach Slack, Microsoft and the appliance.

One line per check on stdout, `✓ name: detail` or `✗ name: problem — fix`; the configuration
line is followed by the effective value of every setting, secrets masked. Exit status 0 when
every check passes, 1 when one fails, 2 when the configuration itself does not load.

The doctor changes nothing: it does not create the database or the key file, does not
migrate the schema and does not open the Socket Mode websocket.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.core.config import Config
from bot.core.errors import ConfigError, StorageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

OK = "✓"
FAIL = "✗"

NETWORK_FIX = "check network/proxy/SSL_CERT_FILE"

#: The bot scopes of manifest.yml, for installs that do not ship the manifest (the wheel and
#: the Docker image hold only the packages). A test keeps the two lists equal.
MANIFEST_BOT_SCOPES: tuple[str, ...] = (
    "commands",
    "chat:write",
    "chat:write.public",
    "im:write",
    "users:read",
    "users:read.email",
    "usergroups:read",
)
MANIFEST_PATH = Path(__file__).resolve().parent.parent / "manifest.yml"


@dataclass(frozen=True)
class Result:
    """One check's verdict; `details` are extra indented lines printed under it."""

    name: str
    ok: bool
    text: str
    fix: str = ""
    details: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        head = f"{OK if self.ok else FAIL} {self.name}: {self.text}"
        if not self.ok and self.fix:
            head += f" — {self.fix}"
        return [head, *(f"    {line}" for line in self.details)]


# ------------------------------------------------------------------ configuration


def _token(value: str | None) -> str:
    if value is None:
        return "(unset)"
    prefix, dash, _rest = value.partition("-")
    return f"{prefix}-…" if dash else "set"


def _secret(value: str | None) -> str:
    return "set" if value else "(unset)"


def _plain(value: object) -> str:
    return "(unset)" if value is None else str(value)


def _joined(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)


#: Config field -> (environment variable, how its value is shown). Secrets show only a
#: prefix or "set"; a field missing here is shown as "(not shown)" and fails a test.
SETTINGS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "slack_bot_token": ("SLACK_BOT_TOKEN", _token),
    "slack_app_token": ("SLACK_APP_TOKEN", _token),
    "slack_signing_secret": ("SLACK_SIGNING_SECRET", _secret),
    "slack_api_url": ("SLACK_API_URL", _plain),
    "port": ("PORT", _plain),
    "db_path": ("VEEAM_SA_DB", _plain),
    "encryption_key": ("VEEAM_SA_ENCRYPTION_KEY", _secret),
    "alert_channel": ("VEEAM_SA_ALERT_CHANNEL", _plain),
    "admins": ("VEEAM_SA_ADMINS", _joined),
    "cloud": ("VEEAM_SA_CLOUD", _plain),
    "authority_host": ("VEEAM_SA_AUTHORITY_HOST", _plain),
    "graph_url": ("VEEAM_SA_GRAPH_URL", _plain),
    "arm_url": ("VEEAM_SA_ARM_URL", _plain),
    "client_id": ("VEEAM_SA_CLIENT_ID", _plain),
    "tenant": ("VEEAM_SA_TENANT", _plain),
    "roles": ("VEEAM_SA_ROLES", lambda roles: ", ".join(r.name for r in roles)),
    "secret_days": ("VEEAM_SA_SECRET_DAYS", _plain),
    "warn_days": ("VEEAM_SA_WARN_DAYS", _joined),
    "veeam_url": ("VEEAM_URL", _plain),
    "veeam_username": ("VEEAM_USERNAME", _plain),
    "veeam_password": ("VEEAM_PASSWORD", _secret),
    "ssl_cert_file": ("SSL_CERT_FILE", lambda v: v or "(unset: system store)"),
    "allow_personal_accounts": (
        "VEEAM_SA_ALLOW_PERSONAL_ACCOUNTS",
        lambda v: "true" if v else "false",
    ),
    "workers": ("VEEAM_SA_WORKERS", _plain),
    "scan_minutes": ("VEEAM_SA_SCAN_MINUTES", _plain),
    "log_level": ("VEEAM_SA_LOG_LEVEL", _plain),
    "log_format": ("VEEAM_SA_LOG_FORMAT", _plain),
    "list_for_everyone": ("VEEAM_SA_LIST_FOR_EVERYONE", lambda v: "true" if v else "false"),
    "require_email_match": ("VEEAM_SA_REQUIRE_EMAIL_MATCH", lambda v: "true" if v else "false"),
    "veeam_api_version": ("VEEAM_API_VERSION", _plain),
    "veeam_purposes": ("VEEAM_PURPOSES", _joined),
}


def check_configuration(config: Config) -> Result:
    present = [f.name for f in fields(config)]
    details = []
    for attr in [a for a in SETTINGS if a in present] + [a for a in present if a not in SETTINGS]:
        name, show = SETTINGS.get(attr, (attr, lambda _v: "(not shown)"))
        details.append(f"{name} = {show(getattr(config, attr))}")
    mode = "Socket Mode" if config.socket_mode else "HTTP mode"
    return Result("configuration", True, f"loaded ({mode})", details=tuple(details))


# ------------------------------------------------------------------ database and key


@dataclass
class DatabaseState:
    exists: bool = False
    encrypted: int = 0  # stored values encrypted with the key
    sample: str | None = None  # one of them, to try the key on


def check_database(config: Config) -> tuple[Result, DatabaseState]:
    from sqlite_utils import Database

    from storage import queries
    from storage.db import Store
    from storage.migrations import LATEST, migrations

    path = config.db_path
    state = DatabaseState()
    if not path.exists():
        directory = path.parent
        if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
            return Result(
                "database",
                False,
                f"{path} does not exist and {directory} is not writable",
                f"let the bot's user write to {directory}, or set VEEAM_SA_DB",
            ), state
        return Result(
            "database", True, f"{path} does not exist yet; it is created on first start"
        ), state
    state.exists = True
    if not path.is_file():
        return Result(
            "database", False, f"{path} is not a file", "set VEEAM_SA_DB to a file path"
        ), state
    if not (os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)):
        return Result(
            "database",
            False,
            f"{path} (or its directory) is not readable and writable by this user",
            "run the doctor as the bot's user, or fix the file's owner and permissions",
        ), state

    # Read-only: the bot itself migrates on start, so a pending migration is not a failure.
    store = Store(path)
    try:
        db = store.db
        known = {m.name for m in migrations.pending(Database(memory=True))}
        applied = [m.name for m in migrations.applied(db)]
        pending = [m.name for m in migrations.pending(db)]
        current = store.schema_current()
        state.encrypted, state.sample = queries.count_encrypted(db)
    except sqlite3.Error as exc:
        return Result(
            "database",
            False,
            f"cannot read {path}: {exc}",
            "check it is the bot's SQLite database; restore it from a backup if it is damaged",
        ), state
    finally:
        store.close()

    unknown = [name for name in applied if name not in known]
    if unknown:
        return Result(
            "database",
            False,
            f"{path} was migrated by a newer veeam-sa ({', '.join(unknown)})",
            "run that version, or restore a backup taken before the upgrade",
        ), state
    held = f"{state.encrypted} encrypted value(s) stored"
    if current:
        return Result(
            "database", True, f"{path} opens; schema is current ({LATEST}); {held}"
        ), state
    return Result(
        "database",
        True,
        f"{path} opens; schema is behind ({len(pending)} migration(s) pending: "
        f"{', '.join(pending)}), applied on next start; {held}",
    ), state


def check_key(config: Config, database: DatabaseState) -> Result:
    from bot.core.crypto import Cipher, key_file_for, load_or_create_key

    key_file = key_file_for(config.db_path)
    if config.encryption_key is not None:
        source = "VEEAM_SA_ENCRYPTION_KEY"
        cipher = Cipher(config.encryption_key)
    elif not key_file.exists():
        if database.encrypted:
            return Result(
                "encryption key",
                False,
                f"no key file {key_file} yet the database holds {database.encrypted} encrypted "
                "value(s); a key generated on first start could not decrypt them",
                f"restore {key_file} from the backup taken with the database, "
                "or set VEEAM_SA_ENCRYPTION_KEY to the key it was written with",
            )
        return Result(
            "encryption key",
            True,
            f"no key file yet; one is generated on first start into {key_file} — back it up",
        )
    else:
        source = f"key file {key_file}"
        try:
            # The file exists, so this reads it (and checks its mode) and creates nothing.
            cipher, _created = load_or_create_key(config.db_path, None)
        except ConfigError as exc:
            return Result("encryption key", False, exc.problem, exc.fix or "")
        except OSError as exc:
            return Result(
                "encryption key",
                False,
                f"cannot read {key_file}: {exc.strerror or exc}",
                "run the doctor as the bot's user, or fix the file's owner",
            )
    if database.sample is None:
        return Result("encryption key", True, f"loaded from {source}")
    try:
        cipher.decrypt(database.sample)
    except StorageError:
        return Result(
            "encryption key",
            False,
            f"the key from {source} does not decrypt the stored secrets",
            "use the key the database was written with (VEEAM_SA_ENCRYPTION_KEY or its key file)",
        )
    return Result("encryption key", True, f"loaded from {source}; it decrypts the stored secrets")


# ------------------------------------------------------------------ Slack


def _header(headers: Any, name: str) -> str | None:
    for key, value in dict(headers or {}).items():
        if str(key).lower() == name:
            return ", ".join(value) if isinstance(value, list) else str(value)
    return None


def _unreachable(name: str, what: str, exc: BaseException) -> Result:
    reason = getattr(exc, "reason", None) or exc
    return Result(name, False, f"cannot reach {what}: {reason}", NETWORK_FIX)


def read_manifest_scopes(path: Path = MANIFEST_PATH) -> tuple[str, ...] | None:
    """`oauth_config.scopes.bot` of a manifest.yml, read line by line; None when absent.

    Enough YAML for the manifest's block lists (no PyYAML at run time).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    wanted = ["oauth_config", "scopes", "bot"]
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    scopes: list[str] = []
    inside: int | None = None  # indent of the `bot:` key once found
    for raw in lines:
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if inside is not None:
            if indent < inside or (indent == inside and not text.startswith("- ")):
                break
            if text.startswith("- "):
                scopes.append(text[2:].strip().strip("'\""))
                continue
            break
        if text.endswith(":") and not text.startswith("- "):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, text[:-1].strip()))
            if [key for _i, key in stack] == wanted:
                inside = indent
    return tuple(scopes) if inside is not None else None


def required_scopes() -> tuple[str, ...]:
    return read_manifest_scopes() or MANIFEST_BOT_SCOPES


@dataclass
class SlackState:
    token_ok: bool = False
    granted: frozenset[str] | None = None
    bot_name: str | None = None
    results: list[Result] = field(default_factory=list)


def check_slack_token(config: Config, client: WebClient) -> SlackState:
    state = SlackState()
    try:
        response = client.auth_test()
    except SlackApiError as exc:
        state.results.append(
            Result(
                "Slack token",
                False,
                f"Slack rejected SLACK_BOT_TOKEN ({exc.response.get('error')})",
                "copy the Bot User OAuth Token (xoxb-…) from your Slack app's OAuth & "
                "Permissions page; reinstall the app if the token was revoked",
            )
        )
        return state
    except (SlackClientError, OSError) as exc:
        state.results.append(_unreachable("Slack token", config.slack_api_url, exc))
        return state
    state.token_ok = True
    state.bot_name = response.get("user")
    team = response.get("team") or response.get("team_id")
    state.results.append(
        Result(
            "Slack token",
            True,
            f"accepted for @{state.bot_name} in {team} ({response.get('team_id')})",
        )
    )

    header = _header(response.headers, "x-oauth-scopes")
    needed = required_scopes()
    if header is None:
        state.results.append(
            Result(
                "Slack scopes",
                False,
                "Slack's answer carried no x-oauth-scopes header, so the scopes are unknown",
                "check that SLACK_API_URL points at Slack's Web API (a proxy may strip headers)",
            )
        )
        return state
    granted = frozenset(s.strip() for s in header.split(",") if s.strip())
    state.granted = granted
    missing = [s for s in needed if s not in granted]
    if missing:
        state.results.append(
            Result(
                "Slack scopes",
                False,
                f"the bot token lacks {', '.join(missing)}",
                "add them under OAuth & Permissions → Bot Token Scopes (or re-create the app "
                "from manifest.yml), then reinstall the app to the workspace",
            )
        )
    else:
        extra = sorted(granted - set(needed))
        also = f" (also granted: {', '.join(extra)})" if extra else ""
        state.results.append(
            Result("Slack scopes", True, f"all {len(needed)} manifest scopes granted{also}")
        )
    return state


def check_connection_mode(config: Config, client: WebClient) -> Result:
    if not config.socket_mode:
        return Result(
            "HTTP mode",
            True,
            "SLACK_SIGNING_SECRET is set; Slack must reach https://YOUR-HOST/slack/events "
            f"(the bot listens on port {config.port})",
        )
    try:
        client.apps_connections_open(app_token=config.slack_app_token or "")
    except SlackApiError as exc:
        return Result(
            "Socket Mode",
            False,
            f"Slack rejected SLACK_APP_TOKEN ({exc.response.get('error')})",
            "create an app-level token with connections:write under Basic Information → "
            "App-Level Tokens, and turn Socket Mode on",
        )
    except (SlackClientError, OSError) as exc:
        return _unreachable("Socket Mode", config.slack_api_url, exc)
    return Result(
        "Socket Mode", True, "SLACK_APP_TOKEN accepted by apps.connections.open (not connected)"
    )


def check_alert_channel(config: Config, client: WebClient, slack: SlackState) -> Result | None:
    channel_id = config.alert_channel
    if channel_id is None:
        return None
    name = "alert channel"
    if not slack.token_ok:
        return Result(name, False, f"{channel_id} not checked", "fix the Slack token first")
    try:
        response = client.conversations_info(channel=channel_id)
    except SlackApiError as exc:
        error = exc.response.get("error")
        if error == "missing_scope":
            return Result(
                name,
                True,
                f"{channel_id} not looked up (conversations.info needs channels:read, which "
                "manifest.yml does not request); chat:write.public lets the bot post in public "
                "channels anyway — invite it to a private one",
            )
        if error == "channel_not_found":
            return Result(
                name,
                False,
                f"Slack does not know {channel_id} (channel_not_found)",
                "check VEEAM_SA_ALERT_CHANNEL (channel details → About → Channel ID); "
                "invite the bot first to a private channel",
            )
        return Result(
            name, False, f"conversations.info failed for {channel_id} ({error})", "retry later"
        )
    except (SlackClientError, OSError) as exc:
        return _unreachable(name, config.slack_api_url, exc)

    info = response.get("channel") or {}
    label = f"#{info['name']} ({channel_id})" if info.get("name") else channel_id
    invite = f"invite the bot: /invite @{slack.bot_name or 'veeam-sa'} in {label}"
    if info.get("is_archived"):
        return Result(
            name, False, f"{label} is archived", "unarchive it or set VEEAM_SA_ALERT_CHANNEL"
        )
    if info.get("is_member"):
        return Result(name, True, f"{label}; the bot is a member")
    if info.get("is_private"):
        return Result(name, False, f"{label} is private and the bot is not a member", invite)
    if slack.granted is not None and "chat:write.public" not in slack.granted:
        return Result(
            name, False, f"{label}: the bot is not a member and lacks chat:write.public", invite
        )
    return Result(
        name,
        True,
        f"{label}; the bot is not a member, but chat:write.public lets it post in public "
        "channels anyway",
    )


# ------------------------------------------------------------------ Microsoft and the appliance


def _http_failure(name: str, url: str, exc: httpx.HTTPError, tls_fix: str) -> Result:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        message = f"timed out ({message})"
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return Result(name, False, f"{url}: the certificate is not trusted ({message})", tls_fix)
    return Result(name, False, f"cannot reach {url}: {message}", NETWORK_FIX)


_MS_TLS_FIX = (
    "check network/proxy/SSL_CERT_FILE: set SSL_CERT_FILE to a CA bundle that includes your "
    "TLS-inspecting proxy's CA"
)


def check_sign_in(config: Config, http: httpx.Client) -> Result:
    name = "Microsoft sign-in"
    url = f"{config.authority}/v2.0/.well-known/openid-configuration"
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        return _http_failure(name, url, exc, _MS_TLS_FIX)
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        reason = ""
        if isinstance(body, dict) and body.get("error_description"):
            reason = ": " + str(body["error_description"]).splitlines()[0]
        return Result(
            name,
            False,
            f"{url} answered HTTP {response.status_code}{reason}",
            "check VEEAM_SA_TENANT and VEEAM_SA_CLOUD / VEEAM_SA_AUTHORITY_HOST",
        )
    endpoint = body.get("token_endpoint") if isinstance(body, dict) else None
    if not endpoint:
        return Result(
            name,
            False,
            f"{url} has no token_endpoint",
            "check that VEEAM_SA_AUTHORITY_HOST is the Microsoft identity platform",
        )
    return Result(name, True, f"{config.authority} answers; token endpoint {endpoint}")


def check_reachable(name: str, url: str, http: httpx.Client, tls_fix: str) -> Result:
    """Any HTTP answer (even 401) means reachable; connection and TLS errors do not."""
    try:
        response = http.get(url + "/")
    except httpx.HTTPError as exc:
        return _http_failure(name, url, exc, tls_fix)
    return Result(name, True, f"{url} reachable (HTTP {response.status_code})")


# ------------------------------------------------------------------ entry point


def run_checks(config: Config) -> list[Result]:
    from bot.flows.root import make_http_client
    from bot.slack.client import make_web_client

    results = [check_configuration(config)]
    database_result, database = check_database(config)
    results += [database_result, check_key(config, database)]

    client = make_web_client(config)
    slack = check_slack_token(config, client)
    results += slack.results
    results.append(check_connection_mode(config, client))
    alert = check_alert_channel(config, client, slack)
    if alert is not None:
        results.append(alert)

    with make_http_client(config) as http:
        results.append(check_sign_in(config, http))
        results.append(check_reachable("Microsoft Graph", config.graph_url, http, _MS_TLS_FIX))
        results.append(check_reachable("Azure Resource Manager", config.arm_url, http, _MS_TLS_FIX))
        if config.veeam_url:
            results.append(
                check_reachable(
                    "Veeam appliance",
                    config.veeam_url,
                    http,
                    "check network/proxy/SSL_CERT_FILE: add the appliance's certificate (or "
                    "its CA) to the bundle in SSL_CERT_FILE",
                )
            )
    return results


_ASCII = str.maketrans({"✓": "OK", "✗": "FAIL", "…": "...", "—": "-", "→": "->"})


def _emit(line: str, out: TextIO) -> None:
    try:
        print(line, file=out)
    except UnicodeEncodeError:  # a terminal without UTF-8
        print(line.translate(_ASCII).encode("ascii", "replace").decode("ascii"), file=out)


def main(out: TextIO | None = None) -> int:
    """Run every check, print one line each; return the exit status."""
    from bot.core.config import load_config

    stream = out or sys.stdout
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"veeam-sa-bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    results = run_checks(config)
    for result in results:
        for line in result.lines():
            _emit(line, stream)
    stream.flush()
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED
