"""The composition root: builds the shared `Context` and every flow, and wires them.

`build_services` is the one place that knows every flow kind: it maps "signed in" to each
kind's next step, each kind's way to end a flow that cannot go on, and a crashed job to the
flow it belonged to. No flow imports this module; each gets its collaborators passed in.
The handlers and the process take the `Services` it returns; a test builds it from
doubles-pointed clients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from slack_sdk import WebClient

from bot.clients import vbazure
from bot.clients.http import make_http_client
from bot.clients.signin import DeviceSignIn, Identity, Session
from bot.clients.vbazure import VBAzureClient
from bot.core.clock import utcnow
from bot.core.config import Config
from bot.core.crypto import Cipher
from bot.core.workers import Workers
from bot.flows.checks import Prerequisites
from bot.flows.context import Context
from bot.flows.create import CreateFlow
from bot.flows.endings import Endings
from bot.flows.health import HealthCheck
from bot.flows.home import HomeTab
from bot.flows.provision import Provisioner
from bot.flows.record import Record
from bot.flows.renew import Renewals
from bot.flows.repair import Repairs
from bot.flows.retire import Retirements
from bot.flows.signin import SignInEngine
from bot.slack.authz import Authorizer
from bot.slack.notify import Notifier
from storage import queries
from storage.db import Store

__all__ = ["Services", "build_services", "make_http_client", "utcnow"]


@dataclass
class Services:
    """The built bot: the shared context and the flows, as the handlers and jobs use them."""

    context: Context
    signin: SignInEngine
    endings: Endings
    create: CreateFlow
    checks: Prerequisites
    provision: Provisioner
    renew: Renewals
    retire: Retirements
    health: HealthCheck
    repair: Repairs
    home: HomeTab

    @property
    def config(self) -> Config:
        return self.context.config

    @property
    def store(self) -> Store:
        return self.context.store

    @property
    def cipher(self) -> Cipher:
        return self.context.cipher

    @property
    def slack(self) -> WebClient:
        return self.context.slack

    @property
    def notifier(self) -> Notifier:
        return self.context.notifier

    @property
    def workers(self) -> Workers:
        return self.context.workers

    @property
    def authz(self) -> Authorizer:
        return self.context.authz

    @property
    def http(self) -> httpx.Client:
        return self.context.http

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.context.clock

    @property
    def appliance(self) -> VBAzureClient | None:
        return self.context.appliance


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
    http = http or make_http_client(config)
    ctx = Context(
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
        notifier=Notifier(slack),
        device=DeviceSignIn(config, http),
        clock=clock,
        appliance=vbazure.from_config(config, http),
    )
    record = Record(ctx)
    signin = SignInEngine(ctx, record)
    provision = Provisioner(ctx, record, signin)
    checks = Prerequisites(ctx, record, signin, provision)
    renew = Renewals(ctx, record, signin)
    retire = Retirements(ctx, record, signin)
    health = HealthCheck(ctx)
    repair = Repairs(ctx, record, signin, health)
    endings = Endings(
        ctx,
        record,
        signin,
        enders={
            "create": provision.end,
            "renew": renew.end,
            "retire": retire.end,
            "repair": repair.end,
        },
    )

    next_step: dict[str, Callable[[str, Identity, Session], None]] = {
        "create": checks.on_signed_in,
        "renew": renew.on_signed_in,
        "retire": retire.on_signed_in,
        "repair": repair.on_signed_in,
    }

    home = HomeTab(ctx)
    ctx.changed = home.changed

    def on_signed_in(flow_id: str, identity: Identity, session: Session) -> None:
        flow = queries.get_flow(ctx.store.db, flow_id)
        kind = flow["kind"] if flow is not None else "create"
        try:
            next_step.get(kind, checks.on_signed_in)(flow_id, identity, session)
        finally:
            # A kind's steps after sign-in (a renewal's whole run) may end the flow without
            # touching its record's checklist: the Home hears of it here.
            ctx.changed()

    signin.on_signed_in = on_signed_in
    signin.on_token = checks.prefetch

    def on_job_error(fn: Callable[..., Any], args: tuple[Any, ...], exc: BaseException) -> None:
        # A flow job (its first argument is the flow id) that raised past every handler.
        if args and isinstance(args[0], str) and len(args[0]) == 32:
            endings.crash(args[0], exc)

    ctx.workers.on_error = on_job_error
    return Services(
        context=ctx,
        signin=signin,
        endings=endings,
        create=CreateFlow(ctx, record),
        checks=checks,
        provision=provision,
        renew=renew,
        retire=retire,
        health=health,
        repair=repair,
        home=home,
    )
