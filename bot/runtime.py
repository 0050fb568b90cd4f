"""A running bot: database, key, Slack client, workers, Bolt app, HTTP listener, Socket Mode.

`Runtime.start(config)` builds and starts everything in order and `stop()` takes it down
in reverse, within a bounded time; the CLI and the process-level tests both go through here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.app import build_app
from bot.core import metrics
from bot.core.config import Config
from bot.core.errors import VeeamSAError
from bot.flows import stats
from bot.flows.root import Services, build_services
from bot.scheduler import start_scheduler
from bot.server import Health, HttpServer
from bot.slack.client import make_web_client
from storage.keys import open_bound

log = logging.getLogger("veeam_sa")

#: How long `stop()` lets running work finish before giving up on it.
STOP_TIMEOUT_S = 20.0


@dataclass
class Runtime:
    services: Services
    server: HttpServer
    socket_handler: Any = None
    scheduler: Any = None
    app: Any = None
    collector: stats.DatabaseCollector | None = None

    @classmethod
    def start(cls, config: Config) -> Runtime:
        bound = open_bound(config)
        store, cipher = bound.store, bound.cipher
        slack = make_web_client(config)
        try:
            identity = slack.auth_test()
        except OSError as exc:
            raise VeeamSAError(
                f"cannot reach Slack at {config.slack_api_url} ({exc}); check SLACK_API_URL "
                "and the network"
            ) from None
        log.info("signed in to Slack as %s in team %s", identity.get("user"), identity.get("team"))
        services = build_services(config, store=store, cipher=cipher, slack=slack)
        app = build_app(services)
        collector = stats.DatabaseCollector(store, services.clock)
        metrics.REGISTRY.register(collector)

        socket_handler = None
        if config.socket_mode:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            socket_handler = SocketModeHandler(app, config.slack_app_token)

            def slack_ok() -> bool:
                return bool(socket_handler.client.is_connected())

            health = Health(store.ping, slack_ok, "socket", database_problem=store.problem)
            server = HttpServer(config.port, None, health, metrics=metrics.exposition)
        else:
            health = Health(store.ping, lambda: True, "http", database_problem=store.problem)
            server = HttpServer(
                config.port,
                app,
                health,
                metrics=metrics.exposition,
                signing_secret=config.slack_signing_secret,
            )
        server.start()
        log.info("listening on port %d (%s mode)", server.port, health.mode)
        if socket_handler is not None:
            socket_handler.connect()
            log.info("connected to Slack in Socket Mode")
        services.authz.warm()
        services.endings.resume_all()
        scheduler = start_scheduler(services)
        return cls(
            services=services,
            server=server,
            socket_handler=socket_handler,
            scheduler=scheduler,
            app=app,
            collector=collector,
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[str]:
        """Take the bot down within about `timeout` seconds, in this order:

        1. start nothing new: the workers' timer stops (no new polls) and new jobs are
           refused; the expiry scheduler starts no new scan;
        2. take no more requests: Socket Mode closes its websocket (no reconnect) and
           finishes the envelopes it is handling; the HTTP listener stops accepting and
           finishes the requests it is answering; Bolt's listeners still running after
           their ack finish;
        3. the running jobs finish their step, the ones not started are dropped: every
           flow's state is in its database row and the next start resumes it (a pending
           sign-in keeps its device code); a scan in progress finishes;
        4. the Microsoft client and the database close.

        Returns what was still running when the time ran out (empty after a clean stop);
        the caller then exits anyway.
        """
        log.info("stopping (waiting up to %.0fs for running work)", timeout)
        deadline = time.monotonic() + timeout
        left: list[str] = []

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        workers = self.services.workers
        workers.quiesce()
        scan: threading.Thread | None = None
        if self.scheduler is not None:
            scheduler = self.scheduler
            scan = _start(lambda: scheduler.shutdown(wait=True), "scheduler-stop")
        if self.socket_handler is not None:
            if not _bounded(self._close_socket_mode, min(remaining(), 10.0), "socket-close"):
                left.append("closing the Socket Mode connection")
        busy = self.server.stop(timeout=min(remaining(), 10.0))
        if busy:
            left.append(f"{busy} Slack request(s) being answered")
        if self.app is not None:
            executor = self.app.listener_runner.listener_executor
            if not _bounded(lambda: executor.shutdown(wait=True), remaining(), "bolt-drain"):
                left.append("Slack listeners")
        running = workers.running()
        if running:
            log.info("letting %d running job(s) finish: %s", len(running), "; ".join(running))
        left.extend(workers.shutdown(wait=True, timeout=remaining()))
        if scan is not None:
            scan.join(remaining())
            if scan.is_alive():
                left.append("the expiry scan")
        if self.collector is not None:
            metrics.REGISTRY.unregister(self.collector)
            self.collector = None
        if left:
            # Something still runs and may use them: leave the client and the database
            # open; the process exits and SQLite's journal keeps the file consistent.
            return left
        self.services.notifier.close()  # the last status edits
        self.services.http.close()
        self.services.store.close()
        return []

    def _close_socket_mode(self) -> None:
        try:
            self.socket_handler.close()
        except Exception:  # noqa: BLE001 - shutting down regardless
            log.warning("closing the Socket Mode connection failed", exc_info=True)
        else:
            log.info("closed the Socket Mode connection")


def _start(fn: Callable[[], Any], name: str) -> threading.Thread:
    thread = threading.Thread(target=fn, name=f"veeam-sa-{name}", daemon=True)
    thread.start()
    return thread


def _bounded(fn: Callable[[], Any], timeout: float, name: str) -> bool:
    """Run `fn` on a helper thread for at most `timeout` seconds; False when it is still
    running then."""
    thread = _start(fn, name)
    thread.join(timeout)
    return not thread.is_alive()
