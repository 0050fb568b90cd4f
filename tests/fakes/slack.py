"""A local Slack: Web API, response_url and Socket Mode, over real sockets.

``SlackDouble`` answers the Slack Web API for a ``slack_sdk.WebClient(base_url=dbl.api_url)``
(and therefore for a Bolt ``App(client=...)``), accepts ``response_url`` posts, and runs a
Socket Mode websocket endpoint that the real ``SocketModeHandler`` connects to.

    with SlackDouble() as dbl:
        client = WebClient(token=dbl.bot_token, base_url=dbl.api_url)
        client.chat_postMessage(channel="C0OPS", text="hi")
        call = dbl.wait_for("chat.postMessage", channel="C0OPS")

Wire facts it mirrors (from slack_sdk 3.x and Slack's docs):

- slack_sdk's sync client always POSTs. ``chat.postMessage``, ``chat.postEphemeral``,
  ``chat.update`` and ``views.open`` go as JSON; ``auth.test``, ``chat.delete``,
  ``conversations.*``, ``users.info``, ``usergroups.users.list`` and
  ``apps.connections.open`` go form-encoded; file uploads go multipart. The token is
  always in ``Authorization: Bearer``. The double also takes GET query strings and a
  ``token`` parameter.
- Errors are HTTP 200 with ``{"ok": false, "error": ...}``; rate limits are HTTP 429 with
  ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}``.
- ``xapp-`` tokens only work for ``apps.connections.open`` and bot tokens do not work
  there (``not_allowed_token_type``).
- Socket Mode: the client calls ``apps.connections.open`` with the app token, opens the
  returned ``ws://`` URL, gets ``{"type": "hello", ...}``, and answers each envelope with
  ``{"envelope_id": ...}`` (plus ``"payload"`` when the listener acked with content).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import re
import selectors
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from tests.fakes.blockkit import MAX_MESSAGE_TEXT, block_errors, view_ack_errors, view_errors

BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-test-token"
TEAM_ID = "T0TEST"
TEAM_NAME = "Contoso"
TEAM_DOMAIN = "contoso"
APP_ID = "A0TEST"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
BOT_NAME = "veeam-sa"
DEFAULT_SCOPES = (
    "commands,chat:write,chat:write.public,im:write,users:read,users:read.email,"
    "usergroups:read"
)

# Fields whose form-encoded value is JSON (slack_sdk serialises them with json.dumps).
_JSON_FIELDS = ("blocks", "attachments", "view", "metadata", "options")

_USER_ID = re.compile(r"^[UW][A-Z0-9]+$")

#: A trigger_id is good for one views.open / views.push, and only briefly: "Pass a valid
#: trigger_id within 3 seconds of receiving it" (https://docs.slack.dev/tools/bolt-python/
#: concepts/opening-modals); the views.open reference lists `invalid_trigger_id` ("The
#: trigger_id is invalid"), `expired_trigger_id` ("The trigger_id is expired") and
#: `exchanged_trigger_id` ("The trigger_id was already exchanged in a previous call").
TRIGGER_TTL_S = 3.0

Match = str | Callable[["Call"], bool] | None


@dataclass(frozen=True)
class Call:
    """One request the double received.

    ``args`` are the request parameters without the token (JSON body, form fields or
    query string; ``blocks``/``attachments``/``view`` decoded to lists/dicts). For
    ``response_url`` posts, ``method == "response_url"`` and ``args["response_url_id"]``
    names the URL. ``status`` and ``response`` are what the double answered.
    """

    method: str
    args: dict[str, Any]
    token: str | None
    at: float
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))


class _SlackError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


@dataclass
class _Fault:
    method: str
    kind: str  # "fail" | "rate_limit"
    remaining: int | None
    error: str = "ratelimited"
    retry_after: int = 1
    status: int = 200


def _unfurl_flags(args: dict[str, Any]) -> dict[str, Any]:
    """The unfurl flags a post asked for, as recorded on the message: ``None`` when absent.
    chat.postMessage unfurls text links only when ``unfurl_links`` is true and media by
    default unless ``unfurl_media`` is false (https://docs.slack.dev/reference/methods/
    chat.postMessage: "unfurl_links: Pass true to enable unfurling of primarily text-based
    content", "unfurl_media: Pass false to disable unfurling of media content"); Slack
    also unfurls links of bot messages it judges to be media, so the bot sends both as
    false. Form-encoded posts carry them as strings ("false", "0")."""
    flags: dict[str, Any] = {}
    for key in ("unfurl_links", "unfurl_media"):
        value = args.get(key)
        if isinstance(value, str):
            value = value.lower() not in ("false", "0", "")
        flags[key] = value
    return flags


def unfurls(message: dict[str, Any]) -> bool:
    """Whether Slack may unfurl links or media in ``message`` (a posted message or an
    ephemeral as the double records them): media unfurl unless switched off."""
    return message.get("unfurl_links") is True or message.get("unfurl_media") is not False


def _default_users() -> dict[str, dict[str, Any]]:
    return {
        "U0ADMIN": {"name": "ada", "real_name": "Ada Admin", "email": "ada@contoso.example"},
        "U0OTHER": {"name": "otto", "real_name": "Otto Other", "email": "otto@contoso.example"},
        BOT_USER_ID: {"name": BOT_NAME, "real_name": "Veeam SA", "is_bot": True},
    }


class SlackDouble:
    """Slack Web API + response_url + Socket Mode endpoint on 127.0.0.1 (see module doc).

    Configuration (plain attributes, change them any time): ``tokens`` (valid tokens),
    ``scopes`` (``x-oauth-scopes`` header), ``users`` (``{user_id: {"name", "real_name",
    "email", ...}}``), ``usergroups`` (``{group_id: [user_ids]}``), ``channels``
    (``{channel_id: {extra conversation fields}}``), ``latency`` (seconds added to every
    HTTP response), ``validate_blocks`` (reject bad Block Kit with ``invalid_blocks``).
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] | None = None,
        scopes: str = DEFAULT_SCOPES,
        latency: float = 0.0,
        validate_blocks: bool = True,
    ) -> None:
        self.bot_token = BOT_TOKEN
        self.app_token = APP_TOKEN
        self.tokens: set[str] = set(tokens) if tokens is not None else {BOT_TOKEN, APP_TOKEN}
        self.scopes = scopes
        self.latency = latency
        self.validate_blocks = validate_blocks
        self.team_id = TEAM_ID
        self.app_id = APP_ID
        self.bot_user_id = BOT_USER_ID
        self.bot_id = BOT_ID
        self.users: dict[str, dict[str, Any]] = _default_users()
        self.usergroups: dict[str, list[str]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        #: ``{channel_id: {user_ids}}``; a channel listed here has exactly these members
        #: (others get ``user_not_in_channel`` from chat.postEphemeral); unlisted: everyone.
        self.channel_members: dict[str, set[str]] = {}

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._calls: list[Call] = []
        self._faults: list[_Fault] = []
        self._handlers: dict[str, Callable[[dict[str, Any], str | None], dict[str, Any]]] = {}
        self._ts_seq = 0
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._views: list[dict[str, Any]] = []
        #: The Home tab each user sees (views.publish): ``{user_id: view}``.
        self._homes: dict[str, dict[str, Any]] = {}
        #: ``features.app_home.home_tab_enabled`` of the app's manifest: when False,
        #: views.publish of a home view answers ``not_enabled`` ("Error returned if a `home`
        #: view is published but the Home tab isn't enabled for the app", views.publish
        #: reference).
        self.home_tab_enabled = True
        self._triggers: dict[str, float] = {}
        self._exchanged: set[str] = set()
        self._dms: dict[str, str] = {}
        self._response_urls: dict[str, dict[str, Any]] = {}

        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        #: HTTP connections accepted so far (a client that keeps connections alive opens
        #: few); `_open_http` holds those still open.
        self.connections = 0
        self._open_http: set[socket.socket] = set()
        self.api_url = ""
        self.base_url = ""

        self._ws: Server | None = None
        self._ws_thread: threading.Thread | None = None
        self._ws_wakeup: tuple[int, int] | None = None
        self._ws_port = 0
        self._tickets: set[str] = set()
        self._ws_conns: list[ServerConnection] = []
        self._ws_retiring: list[ServerConnection] = []
        self._ws_total = 0
        self._acks: dict[str, dict[str, Any]] = {}
        self.socket_received: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SlackDouble:
        if self._http is not None:
            return self
        double = self

        class Handler(_Handler):
            dbl = double

        self._http = _Server(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        port = self._http.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.base_url}/api/"
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="slack-double-http",
            daemon=True,
        )
        self._http_thread.start()

        self._ws = serve(
            self._ws_handler,
            "127.0.0.1",
            0,
            process_request=self._ws_process_request,
            compression=None,
            ping_interval=None,
            close_timeout=1,
        )
        self._ws_port = self._ws.socket.getsockname()[1]
        self._ws_wakeup = os.pipe()
        self._ws_thread = threading.Thread(
            target=self._ws_accept_loop, name="slack-double-ws", daemon=True
        )
        self._ws_thread.start()
        return self

    def stop(self) -> None:
        if self._http is None:
            return
        self.socket_disconnect_all(mode="abort")
        if self._ws is not None:
            self._ws.socket.close()
            if self._ws_wakeup is not None:
                os.write(self._ws_wakeup[1], b"x")
        if self._ws_thread is not None:
            self._ws_thread.join(timeout=5)
        if self._ws_wakeup is not None:
            for fd in self._ws_wakeup:
                os.close(fd)
            self._ws_wakeup = None
        self._ws = None
        self._http.shutdown()
        self._http.server_close()
        self._http = None
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> SlackDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ recorded calls

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_since(self, index: int) -> list[Call]:
        """The calls recorded after the first `index` (a cheap look at what is new)."""
        with self._lock:
            return self._calls[index:]

    def calls_to(self, method: str, **arg_filters: Any) -> list[Call]:
        """Calls of ``method`` whose args equal every ``arg_filters`` item."""
        with self._lock:
            return [c for c in self._calls if _matches(c, method, arg_filters)]

    def mark(self) -> int:
        """Number of calls so far; pass as ``after=`` to ``wait_for`` to see only newer ones."""
        with self._lock:
            return len(self._calls)

    def clear(self) -> None:
        """Forget recorded calls (and Socket Mode acks). Messages and faults stay."""
        with self._lock:
            self._calls.clear()
            self._acks.clear()
            self.socket_received.clear()

    def wait_for(
        self, match: Match = None, timeout: float = 5.0, *, after: int = 0, **arg_filters: Any
    ) -> Call:
        """Block until a call matching ``match`` (a method name or a predicate on ``Call``)
        and ``arg_filters`` has been recorded (already-recorded calls count; use
        ``after=dbl.mark()`` to skip them). Returns the first such call. Raises
        ``AssertionError`` listing the recorded calls on timeout."""
        return self.wait_for_count(match, 1, timeout, after=after, **arg_filters)[0]

    def wait_for_count(
        self,
        match: Match,
        count: int,
        timeout: float = 5.0,
        *,
        after: int = 0,
        **arg_filters: Any,
    ) -> list[Call]:
        """Like :meth:`wait_for` but waits for ``count`` matching calls and returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [c for c in self._calls[after:] if _matches(c, match, arg_filters)]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {count} call(s) matching "
                        f"{_describe(match, arg_filters)}; got {len(found)}. Recorded calls:\n"
                        + "\n".join(
                            f"  {c.method} {c.args!r} -> {c.response!r}" for c in self._calls
                        )
                    )
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ state

    def messages(
        self, channel: str | None = None, *, include_deleted: bool = False
    ) -> list[dict[str, Any]]:
        """Current state (after updates) of every posted message, oldest first.

        Each is ``{"channel", "ts", "text", "blocks", "thread_ts"?, "user", "bot_id",
        "edited"?, "reply_count", "deleted"}``; replies are included.
        """
        with self._lock:
            out = [
                _copy(m)
                for m in self._messages.values()
                if (channel is None or m["channel"] == channel)
                and (include_deleted or not m["deleted"])
            ]
        return sorted(out, key=lambda m: float(m["ts"]))

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        """One message by (channel, ts); KeyError if unknown."""
        with self._lock:
            return _copy(self._messages[(channel, ts)])

    def channel_view(self, channel: str) -> list[dict[str, Any]]:
        """What the channel itself shows, oldest first: top-level messages and thread replies
        broadcast to the channel (``reply_broadcast``), not the other replies."""
        return [
            m
            for m in self.messages(channel)
            if not m.get("thread_ts")
            or m["thread_ts"] == m["ts"]
            or m.get("subtype") == "thread_broadcast"
        ]

    def post_as_user(
        self, channel: str, user: str, text: str, thread_ts: str | None = None
    ) -> str:
        """A message a person wrote (not the bot): returns its ts."""
        with self._lock:
            msg = self._post(channel, {"text": text, "thread_ts": thread_ts})
            msg["user"] = user
            msg.pop("bot_id", None)
            msg.pop("app_id", None)
            return str(msg["ts"])

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """Replies in the thread under ``thread_ts`` (parent excluded), oldest first."""
        return [
            m
            for m in self.messages(channel)
            if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts
        ]

    def ephemerals(
        self, channel: str | None = None, user: str | None = None, *, shown: bool | None = None
    ) -> list[dict[str, Any]]:
        """Ephemeral messages (``chat.postEphemeral`` and ephemeral response_url posts).

        Each carries ``shown``: False for one Slack accepted but never displayed (a threaded
        ephemeral to a thread with no replies); pass ``shown=True`` for the displayed ones.
        """
        with self._lock:
            return [
                _copy(e)
                for e in self._ephemerals
                if (channel is None or e["channel"] == channel)
                and (user is None or e["user"] == user)
                and (shown is None or e["shown"] == shown)
            ]

    def seen_by(self, user: str) -> list[dict[str, Any]]:
        """What Slack actually displayed to ``user`` alone: the ephemerals it showed them and
        the bot's messages in their DM, oldest first (``text``, ``blocks``, ``where``)."""
        dm = self.dm_channel(user)
        with self._lock:
            seen = [
                {**_copy(e), "where": "ephemeral"}
                for e in self._ephemerals
                if e["user"] == user and e["shown"]
            ]
            seen += [
                {**_copy(m), "where": "dm"}
                for m in self._messages.values()
                if m["channel"] == dm and not m["deleted"]
            ]
        return sorted(seen, key=lambda m: float(m["ts"]))

    def _ephemeral_shown(self, channel: str, thread_ts: str | None) -> bool:
        """Slack's chat.postEphemeral reference: "Ephemeral messages in threads are only shown
        if there is already an active thread." (https://api.slack.com/methods/chat.postEphemeral)
        A thread is active once its parent has a reply; to any other thread Slack still answers
        ok and displays nothing."""
        if not thread_ts:
            return True
        parent = self._messages.get((channel, thread_ts))
        return bool(parent is not None and not parent["deleted"] and parent.get("reply_count"))

    @property
    def views(self) -> list[dict[str, Any]]:
        """Views opened with ``views.open`` (as returned to the caller)."""
        with self._lock:
            return [_copy(v) for v in self._views]

    def view(self, view_id: str) -> dict[str, Any]:
        """One view opened with views.open (as updated since); KeyError if unknown."""
        with self._lock:
            for view in self._views:
                if view["id"] == view_id:
                    return _copy(view)
        raise KeyError(view_id)

    def home(self, user_id: str) -> dict[str, Any] | None:
        """The Home tab ``user_id`` sees now (the last view published for them), or None."""
        with self._lock:
            view = self._homes.get(user_id)
            return _copy(view) if view is not None else None

    def trigger_id(self, *, age: float = 0.0) -> str:
        """A trigger_id as Slack puts in an interaction payload; ``age`` back-dates it (a
        trigger older than ``TRIGGER_TTL_S`` is expired)."""
        with self._lock:
            n = len(self._triggers) + 1
            trigger = f"{1700000000 + n}.{n:07d}.{uuid.uuid4().hex[:20]}"
            self._triggers[trigger] = time.monotonic() - age
        return trigger

    def check_view_ack(self, view_id: str, ack: Any) -> dict[str, Any]:
        """Apply an app's answer to a view_submission of ``view_id`` as Slack does: refuse
        what Slack would refuse (AssertionError), close the modal on an empty answer or
        ``clear``, swap the view on ``update``. Returns ``{"closed": bool, "errors": {...}}``."""
        with self._lock:
            stored = next((v for v in self._views if v["id"] == view_id), None)
            if stored is None:
                raise KeyError(view_id)
            refused = view_ack_errors(stored, ack) if self.validate_blocks else []
            if refused:
                raise AssertionError(f"Slack would refuse this view_submission answer: {refused}")
            action = ack.get("response_action") if isinstance(ack, dict) else None
            if action == "update":
                stored.update(ack["view"])
            closed = action in (None, "clear")
            if closed:
                stored["closed"] = True
            return {"closed": closed, "errors": dict(ack.get("errors") or {}) if action else {}}

    def _exchange_trigger(self, args: dict[str, Any]) -> None:
        trigger = args.get("trigger_id")
        if not trigger:
            raise _SlackError("invalid_arguments")
        issued = self._triggers.get(str(trigger))
        if issued is None:
            raise _SlackError("invalid_trigger_id")
        if trigger in self._exchanged:
            raise _SlackError("exchanged_trigger_id")
        self._exchanged.add(str(trigger))
        if time.monotonic() - issued > TRIGGER_TTL_S:
            raise _SlackError("expired_trigger_id")

    def dm_channel(self, user_id: str) -> str:
        """The DM channel id ``conversations.open`` returns for ``user_id``."""
        return "D" + user_id[1:] if len(user_id) > 1 else "D" + user_id

    def add_user(
        self,
        user_id: str,
        name: str | None = None,
        email: str | None = None,
        real_name: str | None = None,
        **extra: Any,
    ) -> None:
        spec: dict[str, Any] = {"name": name or user_id.lower()}
        if email is not None:
            spec["email"] = email
        if real_name is not None:
            spec["real_name"] = real_name
        spec.update(extra)
        with self._lock:
            self.users[user_id] = spec

    # ------------------------------------------------------------------ faults & hooks

    def drop_connections(self) -> int:
        """Close every open HTTP connection from the server's side, as a front end does
        with idle kept-alive connections; returns how many were closed."""
        with self._lock:
            open_now, self._open_http = list(self._open_http), set()
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(open_now)

    def fail(
        self,
        method: str,
        error: str = "channel_not_found",
        times: int | None = 1,
        *,
        status: int = 200,
    ) -> None:
        """The next ``times`` calls of ``method`` (None: all, until ``clear_faults``) answer
        ``{"ok": false, "error": error}`` with HTTP ``status``."""
        with self._lock:
            self._faults.append(_Fault(method, "fail", times, error=error, status=status))

    def rate_limit(self, method: str, retry_after: int = 1, times: int | None = 1) -> None:
        """The next ``times`` calls of ``method`` answer HTTP 429, ``Retry-After``."""
        with self._lock:
            self._faults.append(
                _Fault(method, "rate_limit", times, retry_after=retry_after, status=429)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def on(
        self, method: str, handler: Callable[[dict[str, Any], str | None], dict[str, Any]]
    ) -> None:
        """Answer ``method`` with ``handler(args, token)`` (after the token check).
        Overrides a built-in method; raise nothing, return the full response dict."""
        with self._lock:
            self._handlers[method] = handler

    # ------------------------------------------------------------------ response_url

    def response_url(
        self,
        name: str | None = None,
        *,
        channel: str | None = None,
        message_ts: str | None = None,
        user: str | None = None,
        thread_ts: str | None = None,
    ) -> str:
        """A URL to hand out as a payload's ``response_url``.

        Posts to it are recorded as ``Call("response_url", args={**body,
        "response_url_id": id})`` and answered ``{"ok": true}``. When ``channel`` is given
        the post takes effect like Slack's: ``delete_original`` deletes and
        ``replace_original`` updates the message ``message_ts``; ``response_type:
        "in_channel"`` posts to the channel; otherwise an ephemeral message for ``user``.
        """
        rid = name or uuid.uuid4().hex[:12]
        with self._lock:
            self._response_urls[rid] = {
                "channel": channel,
                "message_ts": message_ts,
                "user": user,
                "thread_ts": thread_ts,
            }
        return f"{self.base_url}/respond/{rid}"

    # ------------------------------------------------------------------ Socket Mode

    @property
    def socket_url(self) -> str:
        return f"ws://127.0.0.1:{self._ws_port}/link/"

    @property
    def socket_connection_count(self) -> int:
        """Connections that received ``hello`` since start (reconnects count)."""
        with self._lock:
            return self._ws_total

    def socket_connected(self, timeout: float = 5.0, count: int = 1) -> bool:
        """Wait until a client is connected (and at least ``count`` connections have been
        made in total). True if so, False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self._ws_conns and self._ws_total >= count):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def socket_send(
        self,
        payload_type: str,
        payload: dict[str, Any],
        timeout: float = 5.0,
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
    ) -> dict[str, Any]:
        """Send an envelope to the newest connection and wait for the ack with the same
        ``envelope_id``; return the ack (``{"envelope_id"[, "payload"]}``).

        Note: Bolt sends no ack when no listener matched (404) — this then times out.
        """
        if accepts_response_payload is None:
            accepts_response_payload = payload_type != "events_api"
        eid = str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "envelope_id": eid,
            "type": payload_type,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        }
        if payload_type == "events_api" or retry_attempt is not None:
            envelope["retry_attempt"] = retry_attempt or 0
            envelope["retry_reason"] = retry_reason or ""
        if not self.socket_connected(timeout):
            raise AssertionError(f"no Socket Mode client connected within {timeout}s")
        with self._lock:
            conn = self._ws_conns[-1]
        conn.send(json.dumps(envelope))
        deadline = time.monotonic() + timeout
        with self._cond:
            while eid not in self._acks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no ack for {payload_type} envelope {eid} within {timeout}s; "
                        f"received: {self.socket_received!r}"
                    )
                self._cond.wait(remaining)
            ack = dict(self._acks[eid])
        # An ack's payload is shown like a message: Slack holds it to Block Kit's rules and
        # shows the user an error instead of an invalid one.
        answer = ack.get("payload")
        if self.validate_blocks and isinstance(answer, dict) and "blocks" in answer:
            refused = block_errors(answer["blocks"], "message")
            if refused:
                raise AssertionError(f"Slack would refuse this ack (invalid_blocks): {refused}")
        return ack

    def socket_disconnect_all(self, mode: str = "close") -> None:
        """Drop every Socket Mode connection.

        ``mode``:

        - ``"disconnect"``: Slack's refresh warning ``{"type": "disconnect", "reason":
          "refresh_requested"}``; the builtin client opens a new connection at once, and
          the double then cuts the old one (as Slack does).
        - ``"close"``: a close frame (1001). The builtin client does *not* reconnect at
          once: its monitor notices on its next ``ping_interval`` tick (Bolt: 10 s).
        - ``"abort"``: TCP cut without a close frame (the client only notices after
          several failed pings; it spins on ``recv`` meanwhile).
        """
        if mode not in ("disconnect", "close", "abort"):
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            conns = list(self._ws_conns)
            if mode == "disconnect":
                self._ws_retiring.extend(conns)
        for conn in conns:
            try:
                if mode == "disconnect":
                    conn.send(
                        json.dumps(
                            {
                                "type": "disconnect",
                                "reason": "refresh_requested",
                                "debug_info": {"host": "applink-test-1"},
                            }
                        )
                    )
                elif mode == "close":
                    conn.close(code=1001, reason="going away")
                else:
                    _abort(conn)
            except (OSError, ConnectionClosed):
                pass

    @contextmanager
    def socket_mode(
        self, app: Any, app_token: str = APP_TOKEN, timeout: float = 5.0, **handler_kwargs: Any
    ) -> Iterator[Any]:
        """Run Bolt's builtin ``SocketModeHandler(app, app_token)`` against the double:
        connect, wait for ``hello``, yield the handler, then close it quickly
        (:meth:`close_socket_mode`). ``app.client.base_url`` must be ``api_url``."""
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        handler = SocketModeHandler(app, app_token, **handler_kwargs)
        try:
            handler.connect()
            if not self.socket_connected(timeout):
                raise AssertionError(f"SocketModeHandler did not connect within {timeout}s")
            yield handler
        finally:
            self.close_socket_mode(handler)

    def close_socket_mode(self, handler: Any) -> None:
        """Close a builtin ``SocketModeHandler`` (or ``SocketModeClient``) in milliseconds.

        ``handler.close()`` alone takes ~4 s: the client's reader thread sits in a
        ``recv()`` with a 3 s timeout that closing its own socket does not interrupt, and
        its message processor polls its queue with a 1 s timeout. Here the client is
        marked closed first, its queue is woken, and the double hangs up the socket."""
        client = getattr(handler, "client", handler)
        client.auto_reconnect_enabled = False
        client.closed = True
        client.current_session_state.terminated = True
        client.message_queue.put(None)
        self.socket_disconnect_all(mode="abort")
        handler.close()

    def _ws_accept_loop(self) -> None:
        # websockets' own serve_forever starts non-daemon threads; use daemon ones so a
        # forgotten client never blocks interpreter exit.
        assert self._ws is not None and self._ws_wakeup is not None
        server, wake = self._ws, self._ws_wakeup[0]
        poller = selectors.DefaultSelector()
        try:
            poller.register(server.socket, selectors.EVENT_READ)
            poller.register(wake, selectors.EVENT_READ)
            while True:
                poller.select()
                try:
                    sock, addr = server.socket.accept()
                except OSError:
                    break
                threading.Thread(
                    target=server.handler,
                    args=(sock, addr),
                    name="slack-double-ws-conn",
                    daemon=True,
                ).start()
        except (OSError, ValueError):
            pass
        finally:
            poller.close()

    def _ws_process_request(self, conn: ServerConnection, request: Any) -> Any:
        url = urlsplit(request.path)
        ticket = dict(parse_qsl(url.query)).get("ticket")
        with self._lock:
            known = ticket in self._tickets
        if not url.path.startswith("/link") or not known:
            return conn.respond(401, "invalid ticket\n")
        return None

    def _ws_handler(self, conn: ServerConnection) -> None:
        try:
            conn.send(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": 1,
                        "debug_info": {
                            "host": "applink-test-1",
                            "build_number": 1,
                            "approximate_connection_time": 18060,
                        },
                        "connection_info": {"app_id": self.app_id},
                    }
                )
            )
            with self._cond:
                self._ws_conns.append(conn)
                self._ws_total += 1
                retiring, self._ws_retiring = self._ws_retiring, []
                self._cond.notify_all()
            # A client that reconnected after "disconnect" has closed its old socket, but
            # its reader thread sits in recv() until the peer hangs up: hang up.
            for old in retiring:
                _abort(old)
            for raw in conn:
                try:
                    msg = json.loads(raw)
                except (TypeError, ValueError):
                    msg = {"raw": raw}
                with self._cond:
                    self.socket_received.append(msg)
                    if isinstance(msg, dict) and "envelope_id" in msg:
                        self._acks[msg["envelope_id"]] = msg
                    self._cond.notify_all()
        except (ConnectionClosed, OSError):
            pass
        finally:
            with self._cond:
                if conn in self._ws_conns:
                    self._ws_conns.remove(conn)
                if conn in self._ws_retiring:
                    self._ws_retiring.remove(conn)
                self._cond.notify_all()

    # ------------------------------------------------------------------ HTTP dispatch

    def _record(self, call: Call) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def _handle_api(
        self, method: str, args: dict[str, Any], token: str | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        headers = {"x-oauth-scopes": self.scopes, "x-slack-req-id": uuid.uuid4().hex}
        fault = self._take_fault(method)
        if fault is not None and fault.kind == "rate_limit":
            headers["Retry-After"] = str(fault.retry_after)
            return 429, headers, {"ok": False, "error": "ratelimited"}
        if fault is not None:
            return fault.status, headers, {"ok": False, "error": fault.error}
        try:
            with self._lock:
                custom = self._handlers.get(method)
            builtin = getattr(self, "_m_" + method.replace(".", "_"), None)
            if custom is None and builtin is None:
                raise _SlackError("unknown_method", req_method=method)
            self._check_token(method, token)
            if custom is not None:
                return 200, headers, custom(args, token)
            with self._lock:
                return 200, headers, {"ok": True, **builtin(args, token)}
        except _SlackError as e:
            return 200, headers, {"ok": False, "error": e.error, **e.extra}

    def _check_token(self, method: str, token: str | None) -> None:
        if not token:
            raise _SlackError("not_authed")
        if token not in self.tokens:
            raise _SlackError("invalid_auth")
        is_app_token = token.startswith("xapp-")
        if method.startswith("apps.connections.") and not is_app_token:
            raise _SlackError("not_allowed_token_type")
        if is_app_token and not method.startswith("apps.connections.") and method != "auth.test":
            raise _SlackError("not_allowed_token_type")

    def _handle_response_url(self, rid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fault = self._take_fault("response_url")
        if fault is not None:
            return (429 if fault.kind == "rate_limit" else 404), {"ok": False, "error": fault.error}
        with self._lock:
            link = self._response_urls.get(rid)
            if link is None:
                return 404, {"ok": False, "error": "invalid_url"}
            refused = self._refuse_response_url_content(body)
            if refused is not None:
                return refused
            channel = link["channel"]
            if channel is None:
                return 200, {"ok": True}
            ts = link["message_ts"]
            msg = self._messages.get((channel, ts)) if ts else None
            if body.get("delete_original"):
                if msg is None:
                    return 404, {"ok": False, "error": "message_not_found"}
                msg["deleted"] = True
            elif body.get("replace_original"):
                if msg is None:
                    return 404, {"ok": False, "error": "message_not_found"}
                self._apply_update(msg, body)
            elif body.get("response_type") == "in_channel":
                self._post(
                    channel, {**body, "thread_ts": body.get("thread_ts") or link["thread_ts"]}
                )
            else:
                thread_ts = body.get("thread_ts") or link["thread_ts"]
                self._ephemerals.append(
                    {
                        "channel": channel,
                        "user": link["user"],
                        "ts": self._next_ts(),
                        "text": body.get("text", ""),
                        "blocks": body.get("blocks") or [],
                        "thread_ts": thread_ts,
                        "shown": self._ephemeral_shown(channel, thread_ts),
                    }
                )
        return 200, {"ok": True}

    def _refuse_response_url_content(
        self, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]] | None:
        """A response_url post is checked like a message (``blocks``, ``text``) unless it
        only deletes the original. Slack reports a refused webhook-style post with HTTP 400
        and the error name (https://docs.slack.dev/messaging/sending-messages-using-
        incoming-webhooks#handling_errors: "invalid_payload", "invalid_blocks", ...); the
        double adds the JSON ``ok``/``error``/``errors`` fields so tests can read why."""
        if body.get("delete_original") or not self.validate_blocks:
            return None
        text = body.get("text")
        if isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
            return 400, {"ok": False, "error": "msg_too_long"}
        blocks = body.get("blocks")
        if blocks is None:
            return None
        if not isinstance(blocks, list):
            return 400, {"ok": False, "error": "invalid_blocks_format"}
        errors = block_errors(blocks, "message")
        if errors:
            return 400, {"ok": False, "error": "invalid_blocks", "errors": errors}
        return None

    # ------------------------------------------------------------------ Web API methods

    def _next_ts(self) -> str:
        self._ts_seq += 1
        n = self._ts_seq
        return f"{1700000000 + n // 10000}.{(n % 10000) * 100:06d}"

    def _resolve_channel(self, channel: Any) -> str:
        if not channel or not isinstance(channel, str):
            raise _SlackError("channel_not_found")
        if channel[0] in "UW":
            return self.dm_channel(channel)
        return channel

    def _check_content(self, args: dict[str, Any], *, required: bool = True) -> None:
        text, blocks = args.get("text"), args.get("blocks")
        if required and not text and not blocks and not args.get("attachments"):
            raise _SlackError("no_text")
        if isinstance(text, str) and len(text) > MAX_MESSAGE_TEXT:
            raise _SlackError("msg_too_long")
        if blocks is not None and self.validate_blocks:
            _validate_blocks(blocks)

    def _bot_message(self, channel: str, ts: str, args: dict[str, Any]) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "ts": ts,
            "text": args.get("text") or "",
            "blocks": args.get("blocks") or [],
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "reply_count": 0,
            "deleted": False,
        }
        if args.get("thread_ts"):
            msg["thread_ts"] = str(args["thread_ts"])
        if args.get("attachments"):
            msg["attachments"] = args["attachments"]
        msg.update(_unfurl_flags(args))
        if args.get("metadata"):
            msg["metadata"] = args["metadata"]
        return msg

    def _post(self, channel: str, args: dict[str, Any]) -> dict[str, Any]:
        ts = self._next_ts()
        msg = self._bot_message(channel, ts, args)
        self._messages[(channel, ts)] = msg
        parent_ts = msg.get("thread_ts")
        parent = self._messages.get((channel, parent_ts)) if parent_ts else None
        if parent is not None:
            parent["thread_ts"] = parent_ts
            parent["reply_count"] = parent.get("reply_count", 0) + 1
            parent["latest_reply"] = ts
        return msg

    @staticmethod
    def _apply_update(msg: dict[str, Any], args: dict[str, Any]) -> None:
        if "text" in args and args["text"] is not None:
            msg["text"] = args["text"]
        if "blocks" in args and args["blocks"] is not None:
            msg["blocks"] = args["blocks"]
        if "attachments" in args and args["attachments"] is not None:
            msg["attachments"] = args["attachments"]
        msg["edited"] = {"user": BOT_USER_ID, "ts": f"{time.time():.6f}"}

    def _echo(self, msg: dict[str, Any]) -> dict[str, Any]:
        out = {
            k: v
            for k, v in msg.items()
            if k
            not in ("channel", "deleted", "reply_count", "latest_reply", "unfurl_links", "unfurl_media")
        }
        out["bot_profile"] = {
            "id": self.bot_id,
            "app_id": self.app_id,
            "name": BOT_NAME,
            "team_id": self.team_id,
            "deleted": False,
        }
        return out

    def _m_api_test(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        return {"args": args} if args else {}

    def _m_auth_test(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": BOT_NAME,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"url": f"{self.socket_url}?ticket={ticket}&app_id={self.app_id}"}

    def _m_chat_postMessage(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._resolve_channel(args.get("channel"))
        self._check_content(args)
        broadcast = _truthy(args.get("reply_broadcast"))
        if broadcast:
            # chat.postMessage reference, argument reply_broadcast: "Used in conjunction with
            # thread_ts and indicates whether reply should be made visible to everyone in the
            # channel or conversation." (https://api.slack.com/methods/chat.postMessage
            # #arg_reply_broadcast). Without a thread_ts there is nothing to broadcast and
            # Slack would post a plain message; the double refuses it ("invalid_arguments",
            # from the method's error list) so a broadcast that would be lost shows up.
            if not args.get("thread_ts"):
                raise _SlackError("invalid_arguments")
        msg = self._post(channel, args)
        if broadcast:
            # A broadcast reply is also a channel message, subtype "thread_broadcast"
            # (https://docs.slack.dev/reference/events/message/thread_broadcast).
            msg["subtype"] = "thread_broadcast"
        return {"channel": channel, "ts": msg["ts"], "message": self._echo(msg)}

    def _m_chat_postEphemeral(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._resolve_channel(args.get("channel"))
        user = args.get("user")
        if not isinstance(user, str) or not _USER_ID.match(user):
            raise _SlackError("user_not_found")
        members = self.channel_members.get(channel)
        if members is not None and user not in members:
            # "user_not_in_channel: Intended recipient is not in the specified channel."
            # (https://api.slack.com/methods/chat.postEphemeral#errors)
            raise _SlackError("user_not_in_channel")
        self._check_content(args)
        ts = self._next_ts()
        thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
        self._ephemerals.append(
            {
                "channel": channel,
                "user": user,
                "ts": ts,
                "text": args.get("text") or "",
                "blocks": args.get("blocks") or [],
                "thread_ts": thread_ts,
                "shown": self._ephemeral_shown(channel, thread_ts),
                **_unfurl_flags(args),
            }
        )
        return {"message_ts": ts}

    def _m_chat_update(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._resolve_channel(args.get("channel"))
        ts = args.get("ts")
        if not ts:
            raise _SlackError("message_not_found")
        msg = self._messages.get((channel, str(ts)))
        if msg is None or msg["deleted"]:
            raise _SlackError("message_not_found")
        self._check_content(args, required=False)
        # chat.update reference, errors: "cant_update_message: Authenticated user does not
        # have permission to update this message." A bot token may edit only the messages
        # its bot posted (https://api.slack.com/methods/chat.update#errors).
        if msg["user"] != self.bot_user_id:
            raise _SlackError("cant_update_message")
        self._apply_update(msg, args)
        return {
            "channel": channel,
            "ts": msg["ts"],
            "text": msg["text"],
            "message": self._echo(msg),
        }

    def _m_chat_delete(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        channel = self._resolve_channel(args.get("channel"))
        msg = self._messages.get((channel, str(args.get("ts"))))
        if msg is None or msg["deleted"]:
            raise _SlackError("message_not_found")
        msg["deleted"] = True
        return {"channel": channel, "ts": msg["ts"]}

    def _m_conversations_open(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        users = args.get("users")
        if isinstance(users, list):
            users = ",".join(users)
        if not users:
            if args.get("channel"):
                return {"channel": {"id": args["channel"]}}
            raise _SlackError("users_list_not_supplied")
        ids = [u.strip() for u in str(users).split(",") if u.strip()]
        for uid in ids:
            if not _USER_ID.match(uid):
                raise _SlackError("user_not_found")
        if len(ids) == 1:
            cid = self.dm_channel(ids[0])
        else:
            cid = "G" + uuid.uuid5(uuid.NAMESPACE_OID, ",".join(sorted(ids))).hex[:10].upper()
        already = cid in self._dms.values()
        self._dms[",".join(sorted(ids))] = cid
        out: dict[str, Any] = {"channel": {"id": cid}}
        if already:
            out.update(no_op=True, already_open=True)
        return out

    def _m_conversations_info(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        cid = args.get("channel")
        if not cid or not isinstance(cid, str):
            raise _SlackError("channel_not_found")
        if cid not in self.channels and not (cid[0] in "CGD" and cid[1:].isalnum()):
            raise _SlackError("channel_not_found")
        is_im = cid.startswith("D")
        info: dict[str, Any] = {
            "id": cid,
            "name": cid.lower(),
            "is_channel": cid.startswith("C"),
            "is_group": cid.startswith("G"),
            "is_im": is_im,
            "is_private": not cid.startswith("C"),
            "is_archived": False,
            "is_member": True,
            "created": 1700000000,
            "context_team_id": self.team_id,
        }
        if is_im:
            info.pop("name")
            info["user"] = next((u for u in self.users if self.dm_channel(u) == cid), None)
        info.update(self.channels.get(cid, {}))
        return {"channel": info}

    def _m_views_open(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        self._exchange_trigger(args)
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not isinstance(view, dict) or view.get("type") != "modal":
            raise _SlackError("invalid_arguments")  # views.open and views.push open modals
        if self.validate_blocks:
            _validate_view(view)
        vid = "V" + uuid.uuid4().hex[:10].upper()
        full = {
            "id": vid,
            "team_id": self.team_id,
            "app_id": self.app_id,
            "bot_id": self.bot_id,
            "state": {"values": {}},
            "hash": f"{time.time():.6f}.{uuid.uuid4().hex[:8]}",
            "previous_view_id": None,
            "root_view_id": vid,
            "callback_id": "",
            "private_metadata": "",
            "external_id": "",
            **view,
        }
        self._views.append(full)
        return {"view": _copy(full)}

    def _view_arg(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view")
        if isinstance(view, str):
            view = json.loads(view)
        if not isinstance(view, dict) or "type" not in view:
            raise _SlackError("invalid_arguments")
        if self.validate_blocks:
            _validate_view(view)
        return view

    def _m_views_push(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        return self._m_views_open(args, token)

    def _m_views_update(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        view = self._view_arg(args)
        vid = args.get("view_id")
        external = args.get("external_id")
        for stored in self._views:
            if (vid and stored["id"] == vid) or (external and stored["external_id"] == external):
                stored.update(view)
                return {"view": _copy(stored)}
        raise _SlackError("not_found")

    def _m_views_publish(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        view = self._view_arg(args)
        if view.get("type") != "home":
            raise _SlackError("invalid_arguments")
        if not self.home_tab_enabled:
            raise _SlackError("not_enabled")
        user = args.get("user_id")
        if not isinstance(user, str) or not _USER_ID.match(user):
            raise _SlackError("user_not_found")
        full = {
            "id": "V" + uuid.uuid4().hex[:10].upper(),
            "team_id": self.team_id,
            "app_id": self.app_id,
            "bot_id": self.bot_id,
            "state": {"values": {}},
            "hash": f"{time.time():.6f}.{uuid.uuid4().hex[:8]}",
            "private_metadata": "",
            "callback_id": "",
            "external_id": "",
            **view,
        }
        self._views.append(full)
        self._homes[user] = full
        return {"view": _copy(full)}

    def _m_users_info(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        uid = args.get("user")
        spec = self.users.get(uid) if isinstance(uid, str) else None
        if spec is None:
            raise _SlackError("user_not_found")
        return {"user": _user_object(uid, spec, self.team_id)}  # type: ignore[arg-type]

    def _m_usergroups_users_list(self, args: dict[str, Any], token: str | None) -> dict[str, Any]:
        gid = args.get("usergroup")
        if not isinstance(gid, str) or gid not in self.usergroups:
            raise _SlackError("no_such_subteam")
        return {"users": list(self.usergroups[gid])}


# ---------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    #: A real listen backlog: the standard library's 5 resets connections under a burst,
    #: which Slack's API never does.
    request_queue_size = 1024


class _Handler(BaseHTTPRequestHandler):
    dbl: SlackDouble
    protocol_version = "HTTP/1.1"
    server_version = "SlackDouble/1.0"
    #: The answer goes out as headers then body, in two writes. On a kept-alive connection,
    #: with Nagle's algorithm on, the body would wait for the client's delayed ACK (~40 ms)
    #: after the headers: Slack's front ends (like any HTTP server) send with TCP_NODELAY.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        with self.dbl._lock:
            self.dbl.connections += 1
            self.dbl._open_http.add(self.connection)

    def finish(self) -> None:
        with self.dbl._lock:
            self.dbl._open_http.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.dbl.latency:
            time.sleep(self.dbl.latency)
        url = urlsplit(self.path)
        try:
            args = _parse_args(url.query, body, self.headers.get("Content-Type", ""))
        except ValueError:
            self._send(400, {}, {"ok": False, "error": "invalid_json"})
            return
        if url.path.startswith("/api/"):
            method = url.path[len("/api/") :].strip("/")
            token = None
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            form_token = args.pop("token", None)
            token = token or form_token
            status, headers, resp = self.dbl._handle_api(method, args, token)
            self.dbl._record(Call(method, args, token, time.time(), status, resp))
            self._send(status, headers, resp)
        elif url.path.startswith("/respond/") and self.command == "POST":
            rid = url.path[len("/respond/") :].strip("/")
            status, resp = self.dbl._handle_response_url(rid, args)
            self.dbl._record(
                Call(
                    "response_url",
                    {**args, "response_url_id": rid},
                    None,
                    time.time(),
                    status,
                    resp,
                )
            )
            self._send(status, {}, resp)
        else:
            self._send(404, {}, {"ok": False, "error": "not_found"})

    def _send(self, status: int, headers: dict[str, str], payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _abort(conn: ServerConnection) -> None:
    try:
        conn.socket.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.socket.close()


def _parse_args(query: str, body: bytes, content_type: str) -> dict[str, Any]:
    args: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    ctype = content_type.split(";")[0].strip().lower()
    if body:
        if ctype == "application/json":
            parsed = json.loads(body.decode("utf-8"))
            if not isinstance(parsed, dict):
                raise ValueError("JSON body must be an object")
            args.update(parsed)
            return args
        if ctype == "multipart/form-data":
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
            )
            for part in msg.iter_parts():  # type: ignore[attr-defined]
                name = part.get_param("name", header="content-disposition")
                data = part.get_payload(decode=True)
                if part.get_filename():
                    args[name] = data
                else:
                    args[name] = data.decode("utf-8")
        else:
            args.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    for key in _JSON_FIELDS:
        value = args.get(key)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                args[key] = json.loads(value)
            except ValueError:
                pass
    return args


def _validate_blocks(blocks: Any, surface: str = "message") -> None:
    """Refuse ``blocks`` as Slack does: ``invalid_blocks`` with the list of violations
    (rules and their sources: ``tests/fakes/blockkit.py``); a non-array is
    ``invalid_blocks_format``."""
    if not isinstance(blocks, list):
        raise _SlackError("invalid_blocks_format")
    errors = block_errors(blocks, surface)
    if errors:
        raise _SlackError(
            "invalid_blocks",
            errors=errors,
            response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
        )


def _validate_view(view: Any) -> None:
    errors = view_errors(view)
    if errors:
        raise _SlackError(
            "invalid_arguments",
            errors=errors,
            response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
        )


def _user_object(uid: str, spec: dict[str, Any], team_id: str) -> dict[str, Any]:
    name = spec.get("name", uid.lower())
    real_name = spec.get("real_name", name)
    profile = {
        "real_name": real_name,
        "real_name_normalized": real_name,
        "display_name": spec.get("display_name", name),
        "display_name_normalized": spec.get("display_name", name),
        "team": team_id,
    }
    if spec.get("email"):
        profile["email"] = spec["email"]
    if spec.get("is_bot"):
        profile["bot_id"] = BOT_ID if uid == BOT_USER_ID else "B" + uid[1:]
    reserved = {"name", "real_name", "email", "display_name"}
    user = {
        "id": uid,
        "team_id": team_id,
        "name": name,
        "deleted": False,
        "real_name": real_name,
        "tz": "Europe/Berlin",
        "tz_label": "Central European Time",
        "tz_offset": 3600,
        "profile": profile,
        "is_admin": False,
        "is_owner": False,
        "is_primary_owner": False,
        "is_restricted": False,
        "is_ultra_restricted": False,
        "is_bot": False,
        "is_app_user": False,
        "updated": 1700000000,
    }
    user.update({k: v for k, v in spec.items() if k not in reserved})
    return user


def _matches(call: Call, match: Match, arg_filters: dict[str, Any]) -> bool:
    if isinstance(match, str):
        if call.method != match:
            return False
    elif match is not None and not match(call):
        return False
    return all(call.args.get(k) == v for k, v in arg_filters.items())


def _describe(match: Match, arg_filters: dict[str, Any]) -> str:
    what = (
        match
        if isinstance(match, str)
        else ("any call" if match is None else getattr(match, "__name__", repr(match)))
    )
    return f"{what} {arg_filters}" if arg_filters else str(what)


def _truthy(value: Any) -> bool:
    """A boolean argument as JSON (``true``) or form-encoded (``"true"``, ``"1"``)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(value))
