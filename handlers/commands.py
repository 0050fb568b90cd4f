"""The `/veeam-sa` slash command: parse, authorise, ack, delegate, render."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App

from bot import blocks, ids
from bot.errors import CommandError
from bot.grammar import parse
from bot.services import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    @app.command(ids.COMMAND)
    def on_command(ack: Ack, command: dict[str, Any]) -> None:
        text = command.get("text") or ""
        try:
            parsed = parse(text)
        except CommandError as exc:
            ack(**blocks.error_message(str(exc)))
            return
        if parsed.verb == "help":
            ack(**blocks.help_message())
            return
        if not services.authz.is_admin(command.get("user_id", "")):
            ack(**blocks.refusal_message("only the bot's admins (VEEAM_SA_ADMINS) may do this"))
            return
        ack(**blocks.error_message(f"`{parsed.verb}` is not available in this version yet."))
