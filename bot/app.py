"""Wiring: the Bolt app and its listeners, from `Services`."""

from __future__ import annotations

import logging

from slack_bolt import App

import handlers.actions
import handlers.commands
import handlers.forms
import handlers.home
from bot.flows.root import Services


def build_app(services: Services) -> App:
    config = services.config
    app = App(
        client=services.slack,
        signing_secret=config.slack_signing_secret or "",
        token_verification_enabled=False,
        request_verification_enabled=not config.socket_mode,
        logger=logging.getLogger("slack_bolt"),
    )
    handlers.commands.register(app, services)
    handlers.home.register(app, services)
    handlers.forms.register(app, services)
    handlers.actions.register(app, services)
    return app
