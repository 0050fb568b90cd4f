"""What the handlers delegate to: one object holding the configured collaborators.

`build_services` wires them from configuration; a test passes doubles-pointed clients
instead. Every handler module's `register(app, services)` takes the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from slack_sdk import WebClient

from bot.core.config import Config
from bot.core.crypto import Cipher
from bot.core.workers import Workers
from bot.slack.authz import Authorizer
from storage import queries
from storage.db import Store

if TYPE_CHECKING:
    from bot.clients.vbazure import VBAzureClient
    from bot.flows.create import CreateFlows
    from bot.flows.provision import Provisioner
    from bot.flows.renew import Renewals


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
    http: httpx.Client
    clock: Callable[[], datetime] = field(default=utcnow)
    appliance: VBAzureClient | None = None
    create: CreateFlows = field(init=False)
    provision: Provisioner = field(init=False)
    renew: Renewals = field(init=False)


def make_http_client(config: Config) -> httpx.Client:
    """The one HTTPS client for Microsoft (sign-in, Graph, ARM): verified TLS, timeouts."""
    return httpx.Client(
        verify=config.ssl_context(),
        timeout=httpx.Timeout(20.0, connect=10.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        trust_env=True,  # HTTPS_PROXY / NO_PROXY; the CA bundle still comes from `verify`
    )


def build_services(
    config: Config,
    *,
    store: Store,
    cipher: Cipher,
    slack: WebClient,
    http: httpx.Client | None = None,
    workers: Workers | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Services:
    from bot.clients.signin import DeviceSignIn, Identity, Session
    from bot.flows.create import CreateFlows
    from bot.flows.provision import Provisioner
    from bot.flows.renew import Renewals
    from bot.slack.notify import Notifier

    http = http or make_http_client(config)
    services = Services(
        config=config,
        store=store,
        cipher=cipher,
        slack=slack,
        workers=workers or Workers(config.workers),
        authz=Authorizer(
            config.admins,
            slack,
            on_refusal=lambda user, action, target, rule: queries.add_audit(
                store.db,
                actor=user or "unknown",
                action=f"{action}.refused",
                target=target,
                outcome="refused",
                detail={"rule": rule},
            ),
            list_for_everyone=config.list_for_everyone,
        ),
        http=http,
        clock=clock,
    )
    from bot.flows.appliance import make_client

    services.appliance = make_client(services)
    services.create = CreateFlows(services, DeviceSignIn(config, http), Notifier(slack))
    services.provision = Provisioner(services.create)
    services.renew = Renewals(services.create)

    def on_signed_in(flow_id: str, identity: Identity, session: Session) -> None:
        flow = services.store.db.table("flows").get(flow_id)
        target = services.renew if flow["kind"] in ("renew", "retire") else services.provision
        target.on_signed_in(flow_id, identity, session)

    services.create.on_signed_in = on_signed_in

    def on_job_error(fn: Callable[..., Any], args: tuple[Any, ...], exc: BaseException) -> None:
        # A flow job (its first argument is the flow id) that raised past every handler.
        if args and isinstance(args[0], str) and len(args[0]) == 32:
            services.create.crash(args[0], exc)

    services.workers.on_error = on_job_error
    return services
