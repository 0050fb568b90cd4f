"""The create form's submission: check it as the command is checked, answer inside the form.

Bad input stays in the form (`response_action: errors`, under the field at fault) and
starts nothing; a refusal replaces the form; an accepted form closes and starts the same
flow as `/veeam-sa create NAME`.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App

from bot.core.errors import DATABASE_UNAVAILABLE, CommandError, NotAuthorised, StorageError
from bot.slack import ids
from bot.slack.blocks.forms import form_channel, form_refused, form_values
from bot.slack.grammar import FieldErrors, form_command

if TYPE_CHECKING:
    from bot.flows.root import Services

log = logging.getLogger(__name__)


def _plain(text: str) -> str:
    return text.replace("`", "")


def register(app: App, services: Services) -> None:
    @app.view(ids.VIEW_CREATE)
    def on_create_form(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        user = str((body.get("user") or {}).get("id", ""))
        try:
            services.authz.require_admin(user, "create", None)
        except NotAuthorised as exc:
            ack(
                response_action="update", view=form_refused(f"Sorry, you can't do that: {exc.rule}")
            )
            return
        fields = form_values(view)
        try:
            parsed = form_command(
                fields[ids.FORM_NAME],
                fields[ids.FORM_DESCRIPTION],
                fields[ids.FORM_SUBSCRIPTIONS],
                tenant=fields.get(ids.FORM_TENANT),
            )
        except FieldErrors as exc:
            ack(response_action="errors", errors=exc.fields)
            return
        channel = form_channel(view)
        if channel is None:
            ack(
                response_action="errors",
                errors={ids.FORM_NAME: "This form lost its channel; run /veeam-sa again."},
            )
            return
        try:
            flow_id = services.create.begin(requester=user, channel_id=channel, command=parsed)
        except CommandError as exc:
            ack(response_action="errors", errors={ids.FORM_NAME: _plain(str(exc))})
            return
        except (sqlite3.Error, StorageError):
            log.exception("database error while handling the create form")
            ack(response_action="errors", errors={ids.FORM_NAME: _plain(DATABASE_UNAVAILABLE)})
            return
        ack()
        services.workers.submit(services.signin.start, flow_id)
