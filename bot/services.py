"""What the handlers delegate to: one object holding the configured collaborators.

Built once by the entry point (or by a test, pointed at doubles) and passed to every
handler module's `register(app, services)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from slack_sdk import WebClient

from bot.authz import Authorizer
from bot.config import Config
from bot.crypto import Cipher
from bot.workers import Workers
from storage.db import Store


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    config: Config
    store: Store
    cipher: Cipher
    slack: WebClient
    workers: Workers
    authz: Authorizer
    clock: Callable[[], datetime] = field(default=utcnow)
