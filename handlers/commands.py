"""The `/veeam-sa` slash command: parse, authorise, ack, delegate, render."""

from __future__ import annotations

import logging
import sqlite3
from functools import partial
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond
from slack_sdk.errors import SlackApiError

from bot.core.errors import DATABASE_UNAVAILABLE, CommandError, NotAuthorised, StorageError
from bot.flows import appliance
from bot.flows.accounts import account_history, account_view, account_views
from bot.slack import blocks, ids
from bot.slack.blocks.forms import create_form
from bot.slack.grammar import Command, parse

if TYPE_CHECKING:
    from bot.flows.root import Services

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    @app.command(ids.COMMAND)
    def on_command(ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        user = command.get("user_id", "")
        try:
            parsed = parse(command.get("text") or "")
        except CommandError as exc:
            ack(**blocks.error_message(str(exc)))
            return
        if parsed.verb == "help":
            ack(**blocks.help_message())
            return
        if not (command.get("text") or "").strip() and not services.authz.is_admin(user):
            # Bare `/veeam-sa` opens the create form for those who may create; others get help.
            ack(**blocks.help_message())
            return
        try:
            if parsed.verb == "list":
                services.authz.require_lister(user)
            else:
                services.authz.require_admin(user, parsed.verb, parsed.name)
            if parsed.verb == "create" and parsed.name is None:
                _open_form(services, ack, command, parsed)
            elif parsed.verb == "create":
                flow_id = services.create.begin(
                    requester=user, channel_id=command.get("channel_id", ""), command=parsed
                )
                ack(
                    **blocks.note(
                        f"Starting `{parsed.name}`: I'll post the progress in this channel and "
                        "send the sign-in code only to you."
                    )
                )
                services.workers.submit(services.signin.start, flow_id)
            elif parsed.verb == "cancel":
                # Each cancel says so in its thread (a Slack call per flow): ack first, then
                # cancel in the background and tell the requester what was cancelled.
                ack(**blocks.note("Cancelling what you have in progress…"))
                services.workers.submit(partial(_cancel_mine, services, user, respond))
            elif parsed.verb == "list":
                views = account_views(services.store, services.clock(), services.config.warn_days)
                ack(**blocks.account_list(views))
            elif parsed.verb == "show":
                assert parsed.name is not None
                view = account_view(
                    services.store, parsed.name, services.clock(), services.config.warn_days
                )
                if view is None:
                    raise CommandError(f"There is no managed service account `{parsed.name}`.")
                ack(**blocks.account_detail(view, account_history(services.store, view["name"])))
            elif parsed.verb == "renew":
                assert parsed.name is not None
                flow_id = services.renew.begin(
                    requester=user,
                    account_ref=parsed.name,
                    by_id=False,
                    channel_id=command.get("channel_id", ""),
                    thread_ts=None,
                )
                ack(**blocks.note(f"Renewing `{parsed.name}`: the sign-in code comes only to you."))
                services.workers.submit(services.signin.start, flow_id)
            elif parsed.verb == "retire":
                assert parsed.name is not None
                flow_id = services.retire.begin(
                    requester=user, channel_id=command.get("channel_id", ""), name=parsed.name
                )
                ack(
                    **blocks.note(
                        f"Removing the old secret of `{parsed.name}`: the sign-in code comes "
                        "only to you."
                    )
                )
                services.workers.submit(services.signin.start, flow_id)
            elif parsed.verb in ("sync", "import"):
                if services.appliance is None:
                    raise CommandError(
                        "No Veeam appliance is configured (set VEEAM_URL, VEEAM_USERNAME and VEEAM_PASSWORD)."
                    )
                if parsed.verb == "sync":
                    assert parsed.name is not None
                    ack(**blocks.note(f"Handing `{parsed.name}` to the Veeam appliance…"))
                    job = partial(appliance.sync, services.context, parsed.name, user)
                else:
                    ack(
                        **blocks.note("Looking for appliance accounts the bot does not manage yet…")
                    )
                    job = partial(
                        appliance.import_all, services.context, user, command.get("channel_id")
                    )
                services.workers.submit(lambda: respond(**job(), response_type="ephemeral"))
        except NotAuthorised as exc:
            ack(**blocks.refusal_message(exc.rule))
        except CommandError as exc:
            ack(**blocks.error_message(str(exc), with_help_hint=False))
        except (sqlite3.Error, StorageError):
            log.exception("database error while handling /veeam-sa %s", parsed.verb)
            ack(**blocks.error_message(DATABASE_UNAVAILABLE, with_help_hint=False))


def _open_form(services: Services, ack: Ack, command: dict[str, Any], parsed: Command) -> None:
    """Open the create form (filled in with what the command named) for the command's user."""
    view = create_form(
        channel_id=command.get("channel_id", ""),
        description=parsed.description,
        subscriptions=parsed.subscriptions,
        tenant=parsed.tenant,
    )
    try:
        services.notifier.open_view(command.get("trigger_id", ""), view)
    except (SlackApiError, OSError) as exc:
        error = exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc).__name__
        log.warning("could not open the create form: %s", error)
        ack(
            **blocks.error_message(
                f"I could not open the create form (Slack said `{error}`). Try again, or type "
                f"`{ids.COMMAND} create NAME [--subscription ID]... [--description TEXT]`."
            )
        )
        return
    ack()


def _cancel_mine(services: Services, user: str, respond: Respond) -> None:
    try:
        names = services.endings.cancel_mine(user)
    except (sqlite3.Error, StorageError):
        log.exception("database error while cancelling the flows of %s", user)
        respond(**blocks.error_message(DATABASE_UNAVAILABLE, with_help_hint=False), response_type="ephemeral")
        return
    if names:
        text = "Cancelled: " + ", ".join(f"`{n}`" for n in names) + "."
    else:
        text = "You have nothing in progress to cancel."
    respond(**blocks.note(text), response_type="ephemeral")
