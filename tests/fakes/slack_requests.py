"""Build and sign the requests Slack sends to an app, for driving a Bolt app in tests.

Everything here is pure (no network) except :func:`post_signed`.

- :func:`sign` computes Slack's request signature headers (``v0=`` HMAC-SHA256 of
  ``v0:{timestamp}:{body}``) exactly as Slack does for HTTP-mode apps.
- :func:`slash_command_payload` / :func:`slash_command_body` are a slash-command
  invocation as a dict (the Socket Mode ``slash_commands`` envelope payload, where every
  value is a string) or as the form-encoded HTTP body.
- :func:`block_action_payload` / :func:`block_action_body` are a ``block_actions``
  interaction as a dict (Socket Mode ``interactive`` payload) or as the HTTP body
  ``payload=<json>``.

Default ids match :class:`tests.fakes.slack.SlackDouble`: team ``T0TEST``, app
``A0TEST``, bot user ``U0BOT``, requester ``U0ADMIN``, channel ``C0OPS``.

The default ``response_url`` points at a closed local port (``127.0.0.1:9``) so that a
test which forgets to pass ``response_url=dbl.response_url()`` fails fast instead of
reaching the Internet.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import urlencode

import httpx

TEAM_ID = "T0TEST"
TEAM_DOMAIN = "contoso"
APP_ID = "A0TEST"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
VERIFICATION_TOKEN = "verification-token-deprecated"
UNROUTABLE_RESPONSE_URL = "http://127.0.0.1:9/respond/unset"
DEFAULT_TRIGGER_ID = "13345224609.738474920.8088930838d88f008e0"

_counter = 0


def _next_seq() -> int:
    global _counter
    _counter += 1
    return _counter


def sign(body: bytes | str, signing_secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Return the headers Slack sends with ``body``: timestamp, signature, content type.

    ``timestamp`` defaults to now; pass an old one to test the 5-minute replay window.
    Content-Type is ``application/json`` for a JSON body (Events API) and
    ``application/x-www-form-urlencoded`` otherwise (commands, interactivity).
    """
    raw = body.encode("utf-8") if isinstance(body, str) else body
    ts = str(int(time.time()) if timestamp is None else int(timestamp))
    base = b"v0:" + ts.encode("ascii") + b":" + raw
    digest = hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    content_type = (
        "application/json" if raw.lstrip().startswith(b"{") else "application/x-www-form-urlencoded"
    )
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": content_type,
    }


def slash_command_payload(
    text: str,
    user_id: str = "U0ADMIN",
    channel_id: str = "C0OPS",
    command: str = "/veeam-sa",
    response_url: str | None = None,
    trigger_id: str | None = None,
    team_id: str = TEAM_ID,
    user_name: str | None = None,
    channel_name: str | None = None,
    team_domain: str = TEAM_DOMAIN,
    api_app_id: str = APP_ID,
) -> dict[str, str]:
    """A slash command as Slack sends it: every field, every value a string.

    This is the ``payload`` of a Socket Mode ``slash_commands`` envelope and, form-encoded,
    the HTTP body (see :func:`slash_command_body`).
    """
    if channel_name is None:
        channel_name = "directmessage" if channel_id.startswith("D") else channel_id.lower()
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name if user_name is not None else user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url or UNROUTABLE_RESPONSE_URL,
        "trigger_id": trigger_id or DEFAULT_TRIGGER_ID,
    }


def slash_command_body(text: str, **kwargs: Any) -> str:
    """The form-encoded HTTP body of a slash command (same arguments as the payload)."""
    return urlencode(slash_command_payload(text, **kwargs))


def _option(value: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {"text": {"type": "plain_text", "text": value, "emoji": True}, "value": value}


def block_action_payload(
    action_id: str,
    value: str | None = None,
    user_id: str = "U0ADMIN",
    channel_id: str = "C0OPS",
    message_ts: str = "1700000000.000100",
    thread_ts: str | None = None,
    block_id: str = "actions",
    selected_options: list[str] | list[dict[str, Any]] | None = None,
    container: dict[str, Any] | None = None,
    *,
    action_type: str | None = None,
    message: dict[str, Any] | None = None,
    state_values: dict[str, dict[str, dict[str, Any]]] | None = None,
    is_ephemeral: bool = False,
    response_url: str | None = None,
    trigger_id: str | None = None,
    team_id: str = TEAM_ID,
    user_name: str | None = None,
    button_text: str | None = None,
    api_app_id: str = APP_ID,
) -> dict[str, Any]:
    """A ``block_actions`` interaction payload, as Slack sends it for a click.

    - A button (default): the action has ``type: "button"`` and ``value``.
    - ``selected_options`` given: the action is a ``multi_static_select`` carrying
      ``selected_options`` (plain strings become ``{"text": …, "value": s}`` options).
    - ``state_values``: ``state.values`` (``{block_id: {action_id: {...}}}``), i.e. what
      the other inputs of the message currently hold. Slack sends this with every click,
      so a Create button handler reads the multi-select from here.
    - ``message``: the message carrying the button (merged over a minimal bot message);
      omitted from the payload for an ephemeral message (``is_ephemeral=True``), as Slack
      does.
    """
    name = user_name if user_name is not None else user_id.lower()
    seq = _next_seq()
    action_ts = f"{int(time.time())}.{seq:06d}"
    kind = action_type or ("multi_static_select" if selected_options is not None else "button")
    action: dict[str, Any] = {"action_id": action_id, "block_id": block_id, "type": kind}
    if kind == "button":
        action["text"] = {"type": "plain_text", "text": button_text or action_id, "emoji": True}
        if value is not None:
            action["value"] = value
    elif selected_options is not None:
        action["selected_options"] = [_option(o) for o in selected_options]
    elif value is not None:
        action["value"] = value
    action["action_ts"] = action_ts

    cont: dict[str, Any] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel_id,
        "is_ephemeral": is_ephemeral,
    }
    if thread_ts is not None:
        cont["thread_ts"] = thread_ts
    if container is not None:
        cont = container

    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": name, "name": name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": cont,
        "trigger_id": trigger_id or DEFAULT_TRIGGER_ID,
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {
            "id": channel_id,
            "name": "directmessage" if channel_id.startswith("D") else channel_id.lower(),
        },
    }
    if not is_ephemeral:
        msg: dict[str, Any] = {
            "user": BOT_USER_ID,
            "type": "message",
            "ts": message_ts,
            "bot_id": BOT_ID,
            "app_id": api_app_id,
            "text": "",
            "team": team_id,
            "blocks": [],
        }
        if thread_ts is not None:
            msg["thread_ts"] = thread_ts
        if message:
            msg.update(message)
        payload["message"] = msg
    payload["state"] = {"values": state_values or {}}
    payload["response_url"] = response_url or UNROUTABLE_RESPONSE_URL
    payload["actions"] = [action]
    return payload


def block_action_body(action_id: str, value: str | None = None, **kwargs: Any) -> str:
    """The HTTP body of a ``block_actions`` interaction: form-encoded ``payload=<json>``."""
    payload = block_action_payload(action_id, value, **kwargs)
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))})


def multi_select_state(
    block_id: str, action_id: str, values: list[str] | list[dict[str, Any]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """``state.values`` for one ``multi_static_select`` holding ``values``."""
    return {
        block_id: {
            action_id: {
                "type": "multi_static_select",
                "selected_options": [_option(v) for v in values],
            }
        }
    }


def event_callback_payload(
    event: dict[str, Any], team_id: str = TEAM_ID, api_app_id: str = APP_ID
) -> dict[str, Any]:
    """The Events API wrapper Slack posts (HTTP mode: a signed JSON body; Socket Mode: the
    ``events_api`` envelope's payload) around one ``event``
    (https://docs.slack.dev/apis/events-api/#callback-field)."""
    seq = _next_seq()
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": f"Ev{seq:08d}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }


def app_home_opened_event(
    user_id: str = "U0ADMIN", view: dict[str, Any] | None = None, tab: str = "home"
) -> dict[str, Any]:
    """``app_home_opened`` (https://docs.slack.dev/reference/events/app_home_opened): the
    user's DM channel with the app, the tab, and the Home view when one was published."""
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": user_id,
        "channel": "D" + user_id[1:],
        "tab": tab,
        "event_ts": f"{time.time():.6f}",
    }
    if view is not None:
        event["view"] = view
    return event


def view_action_payload(
    action_id: str,
    value: str | None,
    view: dict[str, Any],
    user_id: str = "U0ADMIN",
    trigger_id: str | None = None,
    block_id: str = "actions",
    team_id: str = TEAM_ID,
    api_app_id: str = APP_ID,
) -> dict[str, Any]:
    """A ``block_actions`` click on a button of a view (a Home tab or a modal): the container
    is the view, the payload carries the whole view and no channel, message or
    ``response_url`` (https://docs.slack.dev/reference/interaction-payloads/block_actions-payload)."""
    name = user_id.lower()
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "type": "button",
        "text": {"type": "plain_text", "text": action_id, "emoji": True},
        "action_ts": f"{int(time.time())}.{_next_seq():06d}",
    }
    if value is not None:
        action["value"] = value
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": name, "name": name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": {"type": "view", "view_id": view.get("id", "")},
        "trigger_id": trigger_id or DEFAULT_TRIGGER_ID,
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "view": view,
        "actions": [action],
    }


def view_submission_payload(
    view: dict[str, Any],
    values: dict[str, dict[str, dict[str, Any]]],
    user_id: str = "U0ADMIN",
    trigger_id: str | None = None,
    team_id: str = TEAM_ID,
    api_app_id: str = APP_ID,
) -> dict[str, Any]:
    """A ``view_submission`` (https://docs.slack.dev/reference/interaction-payloads/view-interactions-payload):
    the submitted view with ``state.values`` (``{block_id: {action_id: {...}}}``)."""
    name = user_id.lower()
    return {
        "type": "view_submission",
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": {"id": user_id, "username": name, "name": name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or DEFAULT_TRIGGER_ID,
        "view": {**view, "state": {"values": values}},
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def text_inputs(**values: str | None) -> dict[str, dict[str, dict[str, Any]]]:
    """``state.values`` of plain_text_input fields whose block_id and action_id are both the
    keyword's name (an empty optional field arrives as ``None``)."""
    return {
        key: {key: {"type": "plain_text_input", "value": value if value else None}}
        for key, value in values.items()
    }


def interaction_body(payload: dict[str, Any]) -> str:
    """The HTTP body of any interaction payload: form-encoded ``payload=<json>``."""
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))})


def post_signed(
    url: str,
    body: bytes | str,
    signing_secret: str,
    timestamp: int | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:
    """POST ``body`` to ``url`` with Slack's signature headers; return the response.

    Without ``client`` a one-shot client is used that ignores proxy/CA environment
    variables (``trust_env=False``).
    """
    raw = body.encode("utf-8") if isinstance(body, str) else body
    headers = sign(raw, signing_secret, timestamp)
    if client is not None:
        return client.post(url, content=raw, headers=headers)
    with httpx.Client(trust_env=False, timeout=10.0) as one_shot:
        return one_shot.post(url, content=raw, headers=headers)
