"""A running bot: database, key, Slack client, workers, Bolt app, HTTP listener, Socket Mode.

`Runtime.start(config)` builds and starts everything in order and `stop()` takes it down
in reverse; the CLI and the process-level tests both go through here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bot.app import build_app
from bot.config import Config
from bot.crypto import load_or_create_key
from bot.errors import VeeamSAError
from bot.scheduler import start_scheduler
from bot.server import Health, HttpServer
from bot.services import Services, build_services
from bot.slack import make_web_client
from storage.db import open_store

log = logging.getLogger("veeam_sa")


@dataclass
class Runtime:
    services: Services
    server: HttpServer
    socket_handler: Any = None
    scheduler: Any = None

    @classmethod
    def start(cls, config: Config) -> Runtime:
        store = open_store(config.db_path)
        cipher, _key_file = load_or_create_key(config.db_path, config.encryption_key)
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

        socket_handler = None
        if config.socket_mode:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            socket_handler = SocketModeHandler(app, config.slack_app_token)

            def slack_ok() -> bool:
                return bool(socket_handler.client.is_connected())

            health = Health(store.ping, slack_ok, "socket")
            server = HttpServer(config.port, None, health)
        else:
            health = Health(store.ping, lambda: True, "http")
            server = HttpServer(config.port, app, health)
        server.start()
        log.info("listening on port %d (%s mode)", server.port, health.mode)
        if socket_handler is not None:
            socket_handler.connect()
            log.info("connected to Slack in Socket Mode")
        services.create.resume_all()
        scheduler = start_scheduler(services)
        return cls(
            services=services, server=server, socket_handler=socket_handler, scheduler=scheduler
        )

    def stop(self) -> None:
        log.info("stopping")
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.socket_handler is not None:
            try:
                self.socket_handler.close()
            except Exception:  # noqa: BLE001 - shutting down regardless
                log.warning("closing the Socket Mode connection failed", exc_info=True)
        self.server.stop()
        self.services.workers.shutdown(wait=True)
        self.services.http.close()
        self.services.store.close()
