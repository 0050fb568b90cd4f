"""Buttons and menus: re-authorise every click, ack, delegate, render."""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt import Ack, App, Respond

from bot import blocks, ids
from bot.errors import CommandError, NotAuthorised
from bot.services import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    @app.action(ids.ACTION_OPEN_DEVICE_LOGIN)
    def on_open_login(ack: Ack) -> None:
        # A link button still sends an interaction; Slack wants it acknowledged.
        ack()

    @app.action(ids.ACTION_CANCEL_FLOW)
    def on_cancel(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        user = (body.get("user") or {}).get("id", "")
        flow_id = str(action.get("value") or "")
        try:
            flow = services.create.cancel(flow_id, user)
        except NotAuthorised as exc:
            respond(
                **blocks.refusal_message(exc.rule),
                response_type="ephemeral",
                replace_original=False,
            )
            return
        except CommandError as exc:
            respond(
                **blocks.error_message(str(exc), with_help_hint=False),
                response_type="ephemeral",
                replace_original=False,
            )
            return
        respond(
            **blocks.note(f"Cancelled the sign-in for `{flow['name']}`."), replace_original=True
        )

    register_create(app, services)
    register_renew(app, services)

    @app.action(re.compile(".*"))
    def on_unknown_action(ack: Ack, action: dict[str, Any]) -> None:
        # Registered last: a button from an older message, or a forged payload.
        ack()
        log.info("ignored an unknown action %r", str(action.get("action_id"))[:80])


def register_renew(app: App, services: Services) -> None:
    @app.action(ids.ACTION_RENEW)
    def on_renew(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        user = (body.get("user") or {}).get("id", "")
        container = body.get("container") or {}
        try:
            flow_id = services.renew.begin(
                requester=user,
                account_ref=str(action.get("value") or ""),
                by_id=True,
                channel_id=container.get("channel_id") or (body.get("channel") or {}).get("id"),
                thread_ts=container.get("message_ts"),
            )
        except NotAuthorised as exc:
            respond(
                **blocks.refusal_message(exc.rule),
                response_type="ephemeral",
                replace_original=False,
            )
            return
        except CommandError as exc:
            respond(
                **blocks.error_message(str(exc), with_help_hint=False),
                response_type="ephemeral",
                replace_original=False,
            )
            return
        services.workers.submit(services.create.start, flow_id)


def register_create(app: App, services: Services) -> None:
    @app.action(ids.ACTION_CHOOSE_SUBSCRIPTIONS)
    def on_choose(ack: Ack) -> None:
        ack()  # the choice is read from the message state when Create is pressed

    @app.action(ids.ACTION_RECHECK)
    def on_recheck(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        ack()
        user = (body.get("user") or {}).get("id", "")
        try:
            services.provision.recheck(str(action.get("value") or ""), user)
        except NotAuthorised as exc:
            respond(
                **blocks.refusal_message(exc.rule),
                response_type="ephemeral",
                replace_original=False,
            )
        except CommandError as exc:
            respond(
                **blocks.error_message(str(exc), with_help_hint=False),
                response_type="ephemeral",
                replace_original=False,
            )

    @app.action(ids.ACTION_CREATE)
    def on_create(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        user = (body.get("user") or {}).get("id", "")
        selected = _selected_options(body)
        try:
            refusal = services.provision.choose(str(action.get("value") or ""), user, selected)
        except NotAuthorised as exc:
            respond(
                **blocks.refusal_message(exc.rule),
                response_type="ephemeral",
                replace_original=False,
            )
            return
        if refusal:
            respond(
                **blocks.error_message(refusal, with_help_hint=False),
                response_type="ephemeral",
                replace_original=False,
            )


def _selected_options(body: dict[str, Any]) -> list[str]:
    """The multi-select's current value, from the message state Slack sends with the click."""
    values = (body.get("state") or {}).get("values") or {}
    chosen: list[str] = []
    for block in values.values():
        element = block.get(ids.ACTION_CHOOSE_SUBSCRIPTIONS) if isinstance(block, dict) else None
        if element:
            chosen.extend(str(o.get("value")) for o in element.get("selected_options") or [])
    return chosen
