"""The HTTP listener: `GET /healthz` and `GET /metrics` in both modes, `POST /slack/events`
in HTTP mode.

A stdlib threading server: each request gets a thread, and Bolt answers within Slack's
3 seconds because listeners only ack and hand long work to `bot.workers`. `stop()` stops
accepting first, then waits (bounded) for the requests already being answered.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slack_bolt import App, BoltRequest

log = logging.getLogger(__name__)

MAX_BODY = 1_000_000

#: `GET /metrics`: returns the exposition body and its content type.
MetricsSource = Callable[[], tuple[bytes, str]]


class Health:
    """The answer of `/healthz`: the database and the Slack connection."""

    def __init__(self, database_ok: Callable[[], bool], slack_ok: Callable[[], bool], mode: str):
        self._database_ok = database_ok
        self._slack_ok = slack_ok
        self.mode = mode

    def check(self) -> tuple[bool, dict[str, Any]]:
        database = self._database_ok()
        slack = self._slack_ok()
        body = {
            "status": "ok" if database and slack else "unavailable",
            "database": "ok" if database else "unreachable",
            "slack": "ok" if slack else "disconnected",
            "mode": self.mode,
        }
        return database and slack, body


class _InFlight:
    """Counts requests being answered, so that `stop()` can let them finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def __enter__(self) -> None:
        with self._cond:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait(self, timeout: float) -> int:
        """Wait until no request is in flight; return how many still are."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._count and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            return self._count


def _handler_class(
    app: App | None, health: Health, metrics: MetricsSource | None, in_flight: _InFlight
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "veeam-sa"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            log.debug("http %s", format % args)

        def _send(self, status: int, body: bytes, headers: dict[str, Any] | None = None) -> None:
            self.send_response(status)
            sent_type = False
            for name, value in (headers or {}).items():
                values = value if isinstance(value, list | tuple) else [value]
                for item in values:
                    self.send_header(name, str(item))
                sent_type = sent_type or name.lower() == "content-type"
            if not sent_type:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                ok, body = health.check()
                self._send(200 if ok else 503, json.dumps(body).encode())
            elif path == "/metrics" and metrics is not None:
                try:
                    text, content_type = metrics()
                except Exception:  # noqa: BLE001 - a scrape must not kill the listener
                    log.exception("cannot render /metrics")
                    self._send(500, b'{"error": "metrics_failed"}')
                    return
                self._send(200, text, {"Content-Type": content_type})
            else:
                self._send(404, b'{"error": "not_found"}')

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            with in_flight:
                self._post()

        def _post(self) -> None:
            if app is None or self.path.split("?", 1)[0] != "/slack/events":
                self._send(404, b'{"error": "not_found"}')
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._send(413 if length > MAX_BODY else 400, b'{"error": "bad_length"}')
                return
            body = self.rfile.read(length).decode("utf-8", errors="replace")
            headers: dict[str, str | Sequence[str]] = {}
            for key in self.headers.keys():
                headers[key.lower()] = self.headers.get_all(key) or []
            request = BoltRequest(body=body, query=self.path.partition("?")[2], headers=headers)
            response = app.dispatch(request)
            self._send(
                response.status,
                response.body.encode() if isinstance(response.body, str) else response.body,
                {k: v for k, v in response.headers.items() if k.lower() != "content-length"},
            )

    return Handler


class HttpServer:
    def __init__(
        self,
        port: int,
        app: App | None,
        health: Health,
        host: str = "0.0.0.0",  # noqa: S104
        *,
        metrics: MetricsSource | None = None,
    ) -> None:
        self._in_flight = _InFlight()
        self._server = ThreadingHTTPServer(
            (host, port), _handler_class(app, health, metrics, self._in_flight)
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="veeam-sa-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> int:
        """Stop accepting, close the listening socket, then give the Slack requests being
        answered up to `timeout` seconds; return how many were still running."""
        self._server.shutdown()
        self._server.server_close()
        return self._in_flight.wait(timeout)
