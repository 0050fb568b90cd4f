"""Buttons and menus: re-authorise every click, ack, delegate, render."""

from __future__ import annotations

import logging
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
