"""The HTTP listener: `GET /healthz` and `GET /metrics` in both modes, `POST /slack/events`
in HTTP mode.

Served by waitress, a production WSGI server: one thread reads and writes every
connection (a slow or idle client holds a socket, never a thread), complete requests go
to a fixed pool of `THREADS` threads, the listening socket has a real backlog, and a
connection idle for `CHANNEL_TIMEOUT_S` is closed. Slack's requests go through Bolt's WSGI
adapter (`slack_bolt.adapter.wsgi.SlackRequestHandler`) after the front door has checked
what Bolt would otherwise trip over: a timestamp that is not a number, a body that is not
UTF-8 or not an object, and a signed request seen before (a replay).

Bolt answers within Slack's 3 seconds because listeners only ack and hand long work to
`bot.core.workers`. `stop()` stops accepting first, then waits (bounded) for the requests already
being answered, then closes every connection.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.adapter.wsgi.http_request import WsgiHttpRequest
from slack_sdk.signature import SignatureVerifier
from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.server import create_server  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

MAX_BODY = 1_000_000
#: Threads that run requests (Bolt's acks, /healthz, /metrics).
THREADS = 12
#: Connections waiting to be accepted (the kernel caps it at net.core.somaxconn).
BACKLOG = 2048
#: Open connections at most; past it new ones wait in the backlog.
CONNECTION_LIMIT = 1000
#: A connection that sends or reads nothing for this long is closed.
CHANNEL_TIMEOUT_S = 30
#: Slack's window for a request's timestamp, and so how long a signature is remembered.
REPLAY_WINDOW_S = 5 * 60
#: A Slack timestamp: whole seconds, ASCII digits (Python's `int` accepts `١٢`, ` 12`, `1_2`).
MAX_TIMESTAMP_DIGITS = 12

#: `GET /metrics`: returns the exposition body and its content type.
MetricsSource = Callable[[], tuple[bytes, str]]


class Health:
    """The answer of `/healthz`: the database and the Slack connection.

    `database_problem`, when given, says what is wrong with the database (None when
    nothing is) and is shown in the body; otherwise `database_ok` decides alone.
    """

    def __init__(
        self,
        database_ok: Callable[[], bool],
        slack_ok: Callable[[], bool],
        mode: str,
        *,
        database_problem: Callable[[], str | None] | None = None,
    ):
        self._database_ok = database_ok
        self._database_problem = database_problem
        self._slack_ok = slack_ok
        self.mode = mode

    def check(self) -> tuple[bool, dict[str, Any]]:
        if self._database_problem is not None:
            problem = self._database_problem()
            database = problem is None
        else:
            database = self._database_ok()
            problem = None if database else "unreachable"
        slack = self._slack_ok()
        body: dict[str, Any] = {
            "status": "ok" if database and slack else "unavailable",
            "database": "ok" if database else "unreachable",
            "slack": "ok" if slack else "disconnected",
            "mode": self.mode,
        }
        if problem is not None:
            body["database_problem"] = problem
        return database and slack, body


class ReplayGuard:
    """Remembers the signatures of the signed requests of the last five minutes.

    A signature covers the timestamp and the whole body, and Slack signs every delivery
    (a retry carries a new timestamp), so the same signature twice is a replay.
    """

    def __init__(self, window_s: float = REPLAY_WINDOW_S, clock: Callable[[], float] = time.time):
        self._window = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._order: collections.deque[tuple[float, str]] = collections.deque()

    def first_time(self, signature: str, timestamp: int) -> bool:
        """Record `signature`; False when it was seen before inside the window."""
        now = self._clock()
        with self._lock:
            while self._order and self._order[0][0] < now:
                self._seen.discard(self._order.popleft()[1])
            if signature in self._seen:
                return False
            self._seen.add(signature)
            # Remembered until the timestamp leaves the window (plus a minute of clock skew).
            self._order.append((max(now, timestamp + self._window + 60), signature))
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


class _Refused(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.error = error
        self.reason = reason


def _header(headers: dict[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return None if value is None else str(value)


class SlackEvents(SlackRequestHandler):
    """Bolt's WSGI adapter behind the front door's checks."""

    def __init__(
        self, app: App, signing_secret: str | None, replay: ReplayGuard | None = None
    ) -> None:
        super().__init__(app, path="/slack/events")
        self._verifier = SignatureVerifier(signing_secret) if signing_secret else None
        self._replay = replay if replay is not None else ReplayGuard()

    def dispatch(self, request: WsgiHttpRequest) -> BoltResponse:
        try:
            bolt_request = self._checked(request)
        except _Refused as refused:
            log.warning(
                "refused a request to /slack/events: %s",
                refused.reason,
                extra={"step": "front_door"},
            )
            return BoltResponse(
                status=refused.status,
                body=json.dumps({"error": refused.error}),
                headers={"content-type": "application/json"},
            )
        if bolt_request is None:
            return BoltResponse(status=200, body="")
        return self.app.dispatch(bolt_request)

    def _checked(self, request: WsgiHttpRequest) -> BoltRequest | None:
        raw = self._body(request)
        headers = request.get_headers()
        timestamp = _header(headers, "x-slack-request-timestamp")
        signature = _header(headers, "x-slack-signature")
        if timestamp is None or signature is None:
            raise _Refused(401, "invalid_request", "no Slack signature or timestamp")
        if not (
            timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS
        ):
            raise _Refused(401, "invalid_request", "the timestamp is not whole seconds")
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(400, "invalid_body", "the body is not UTF-8") from None
        if self._verifier is not None:
            if not self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
                raise _Refused(401, "invalid_request", "bad or stale signature")
            if not self._replay.first_time(signature, int(timestamp)):
                log.warning(
                    "ignored a Slack request already answered (same signature)",
                    extra={"step": "front_door"},
                )
                return None
        _check_shape(body, _header(headers, "content-type") or "")
        try:
            bolt_request = BoltRequest(
                body=body, query=request.query_string, headers=dict(headers)
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise _Refused(400, "invalid_body", f"unreadable body ({type(exc).__name__})") from None
        if not isinstance(bolt_request.body, dict):
            raise _Refused(400, "invalid_body", "the payload is not an object")
        return bolt_request

    @staticmethod
    def _body(request: WsgiHttpRequest) -> bytes:
        try:
            length = int(request.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise _Refused(400, "bad_length", "the Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY:
            raise _Refused(413, "bad_length", f"a body of {length} bytes")
        stream = request.environ.get("wsgi.input")
        return stream.read(length) if stream is not None and length else b""


def _check_shape(body: str, content_type: str) -> None:
    """The payload Bolt will parse is JSON of an object (interactivity's `payload=`, or a
    JSON body); a form without `payload` is a slash command."""
    if content_type.startswith("application/json"):
        text = body
    else:
        values = parse_qs(body, keep_blank_values=True).get("payload")
        if not values:
            return
        text = values[0]
    try:
        value = json.loads(text)
    except ValueError:
        raise _Refused(400, "invalid_body", "the payload is not JSON") from None
    if not isinstance(value, dict):
        raise _Refused(400, "invalid_body", "the payload is not a JSON object")


class _InFlight:
    """Counts requests being answered, so that `stop()` can let them finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0

    def __enter__(self) -> None:
        with self._cond:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self.count -= 1
            self._cond.notify_all()


class FrontDoor:
    """The WSGI application: health and metrics, and Slack's requests in HTTP mode."""

    def __init__(
        self,
        health: Health,
        metrics: MetricsSource | None = None,
        slack: SlackEvents | None = None,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.slack = slack
        self.in_flight = _InFlight()

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        with self.in_flight:
            status, headers, body = self._answer(environ)
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [*headers, ("Content-Length", str(len(body)))],
        )
        return [body]

    def _answer(self, environ: WSGIEnvironment) -> tuple[int, list[tuple[str, str]], bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        json_type = [("Content-Type", "application/json")]
        if method == "GET" and path == "/healthz":
            ok, state = self.health.check()
            return (200 if ok else 503), json_type, json.dumps(state).encode()
        if method == "GET" and path == "/metrics" and self.metrics is not None:
            try:
                text, content_type = self.metrics()
            except Exception:  # noqa: BLE001 - a scrape must not kill the listener
                log.exception("cannot render /metrics")
                return 500, json_type, b'{"error": "metrics_failed"}'
            return 200, [("Content-Type", content_type)], text
        if method == "POST" and path == "/slack/events" and self.slack is not None:
            try:
                response = self.slack.dispatch(WsgiHttpRequest(environ))
            except Exception:  # noqa: BLE001 - one line, never a traceback on the wire
                log.exception("a request to /slack/events failed")
                return 500, json_type, b'{"error": "internal"}'
            body = response.body.encode() if isinstance(response.body, str) else response.body
            headers = [
                (name, str(value))
                for name, values in response.headers.items()
                if name.lower() != "content-length"
                for value in (values if isinstance(values, list | tuple) else [values])
            ]
            return response.status, headers, body
        return 404, json_type, b'{"error": "not_found"}'


class HttpServer:
    def __init__(
        self,
        port: int,
        app: App | None,
        health: Health,
        host: str = "0.0.0.0",  # noqa: S104
        *,
        metrics: MetricsSource | None = None,
        signing_secret: str | None = None,
        threads: int = THREADS,
        channel_timeout: int = CHANNEL_TIMEOUT_S,
    ) -> None:
        slack = SlackEvents(app, signing_secret) if app is not None else None
        self.front_door = FrontDoor(health, metrics, slack)
        self._map: dict[int, Any] = {}
        self._server: Any = create_server(
            self.front_door,
            map=self._map,
            host=host,
            port=port,
            threads=threads,
            backlog=BACKLOG,
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=channel_timeout,
            cleanup_interval=min(10, channel_timeout),
            max_request_body_size=MAX_BODY,
            asyncore_use_poll=True,  # select() stops at descriptor 1024
            ident="veeam-sa",
        )
        self._thread = threading.Thread(
            target=self._server.run, name="veeam-sa-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def start(self) -> None:
        self._thread.start()

    def _in_loop(self, fn: Callable[[], None], timeout: float = 2.0) -> bool:
        """Run `fn` on the listener's own thread (which owns the sockets); wait for it."""
        done = threading.Event()

        def thunk() -> None:
            try:
                fn()
            finally:
                done.set()

        if not self._thread.is_alive():
            fn()
            return True
        self._server.trigger.pull_trigger(thunk)
        return done.wait(timeout)

    def _busy(self) -> int:
        """Requests being answered, queued, or with an answer not yet sent."""
        pending = sum(
            1
            for channel in list(self._map.values())
            if isinstance(channel, HTTPChannel) and (channel.requests or channel.total_outbufs_len)
        )
        return max(self.front_door.in_flight.count, pending)

    def _close_all(self) -> None:
        for dispatcher in list(self._map.values()):
            try:
                if isinstance(dispatcher, HTTPChannel):
                    dispatcher.handle_close()  # also wakes a thread waiting to write to it
                else:
                    dispatcher.close()
            except OSError:
                pass
        self._map.clear()

    def stop(self, timeout: float = 5.0) -> int:
        """Stop accepting, close the listening socket, give the requests being answered up to
        `timeout` seconds, then close every connection (idle and half-sent ones too); return
        how many requests were still running."""
        deadline = time.monotonic() + timeout
        server = self._server

        def stop_accepting() -> None:
            server.accepting = False
            server.del_channel()
            server.socket.close()

        self._in_loop(stop_accepting)
        while (busy := self._busy()) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._in_loop(self._close_all, timeout=1.0):
            self._close_all()
        self._thread.join(1.0)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=0.5)
        return busy
