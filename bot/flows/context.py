"""What every flow shares: configuration, storage, the outside world's clients, Slack.

A `Context` knows no flow. The composition root (`bot.flows.root`) builds one and hands it
to each flow it builds; a test builds the same from doubles-pointed clients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from slack_sdk import WebClient

from bot.clients.arm import ArmClient
from bot.clients.graph import GraphClient
from bot.clients.signin import DeviceSignIn, Session
from bot.clients.vbazure import VBAzureClient
from bot.core.clock import utcnow
from bot.core.config import Config
from bot.core.crypto import Cipher
from bot.core.workers import Workers
from bot.slack.authz import Authorizer
from bot.slack.notify import Notifier
from storage.db import Store


@dataclass
class Context:
    config: Config
    store: Store
    cipher: Cipher
    slack: WebClient
    workers: Workers
    authz: Authorizer
    http: httpx.Client
    notifier: Notifier
    #: The Microsoft sign-in (device codes, tokens, the proof of a new secret).
    device: DeviceSignIn
    clock: Callable[[], datetime] = field(default=utcnow)
    appliance: VBAzureClient | None = None
    #: Called when something a person's App Home shows may have changed (a flow started,
    #: moved on or ended; an account created or renewed). The composition root points it at
    #: the Home's debounced refresh; it must be cheap and must not raise.
    changed: Callable[[], None] = field(default=lambda: None)

    @property
    def db(self) -> Any:
        return self.store.db

    # -- the one place Graph and ARM clients are built ------------------------------------------

    def graph(self, session: Session) -> GraphClient:
        """Graph, as the person signed in to `session`."""
        config, device = self.config, self.device
        return GraphClient(
            config.graph_url, self.http, lambda: device.token(session, config.graph_scope)
        )

    def arm(
        self,
        session: Session | None = None,
        *,
        token: Callable[[], str] | None = None,
        attempts: int | None = None,
    ) -> ArmClient:
        """Azure Resource Manager, as the person signed in to `session` (or with `token`)."""
        config, device = self.config, self.device
        if token is None:
            assert session is not None
            token = lambda: device.token(session, config.arm_scope)  # noqa: E731
        if attempts is None:
            return ArmClient(config.arm_url, self.http, token)
        return ArmClient(config.arm_url, self.http, token, attempts=attempts)
