"""The doctor's remote checks: Slack, Microsoft and the appliance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.core.config import Config
from bot.ops.doctor.result import MANIFEST_BOT_SCOPES, MANIFEST_PATH, NETWORK_FIX, Result

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
