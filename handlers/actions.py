"""Buttons and menus: re-authorise every click, ack, delegate, render.

Every click is acknowledged first; what the services refuse (`NotAuthorised`,
`CommandError`) or cannot do (database locked) comes back to the clicker only.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond

from bot.core.errors import DATABASE_UNAVAILABLE, CommandError, NotAuthorised, StorageError
from bot.flows import expiry
from bot.slack import blocks, ids

if TYPE_CHECKING:
    from bot.flows.root import Services

log = logging.getLogger(__name__)


def _user(body: dict[str, Any]) -> str:
    return str((body.get("user") or {}).get("id", ""))


def _value(action: dict[str, Any]) -> str:
    return str(action.get("value") or "")


#: A row id: ASCII digits only (`str.isdigit` also accepts `²` and `١`), at most 18 of them
#: (SQLite's integers are 64-bit).
_ROW_ID = re.compile(r"[0-9]{1,18}")


def _row_id(action: dict[str, Any], refusal: str) -> str:
    """A button's value that names a row by id; anything else is refused with `refusal`."""
    value = _value(action)
    if not _ROW_ID.fullmatch(value):
        raise CommandError(refusal)
    return value


def _private(respond: Respond, payload: dict[str, Any]) -> None:
    respond(**payload, response_type="ephemeral", replace_original=False)


def _answer(respond: Respond, work: Callable[[], str | None]) -> None:
    """Run `work`; show its refusal (or the text it returns) to the clicker only."""
    try:
        text = work()
    except NotAuthorised as exc:
        _private(respond, blocks.refusal_message(exc.rule))
    except CommandError as exc:
        _private(respond, blocks.error_message(str(exc), with_help_hint=False))
    except (sqlite3.Error, StorageError):
        log.exception("database error while handling a button")
        _private(respond, blocks.error_message(DATABASE_UNAVAILABLE, with_help_hint=False))
    else:
        if text:
            _private(respond, blocks.error_message(text, with_help_hint=False))


def register(app: App, services: Services) -> None:
    @app.action(ids.ACTION_OPEN_DEVICE_LOGIN)
    def on_open_login(ack: Ack) -> None:
        # A link button still sends an interaction; Slack wants it acknowledged.
        ack()

    @app.action(ids.ACTION_CHOOSE_SUBSCRIPTIONS)
    def on_choose(ack: Ack) -> None:
        ack()  # the choice is read from the message state when Create is pressed

    @app.action(ids.ACTION_CANCEL_FLOW)
    def on_cancel(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()

        def cancel() -> None:
            # The code's message is replaced either way: its Cancel never outlives the sign-in.
            respond(
                **services.endings.cancel_from_code(_value(action), _user(body)),
                replace_original=True,
            )

        _answer(respond, cancel)

    @app.action(ids.ACTION_RECHECK)
    def on_recheck(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        ack()
        _answer(respond, lambda: services.checks.recheck(_value(action), _user(body)))

    @app.action(ids.ACTION_CREATE)
    def on_create(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        _answer(
            respond,
            lambda: services.checks.choose(_value(action), _user(body), _selected_options(body)),
        )

    @app.action(ids.ACTION_CHOOSE_TENANT)
    def on_choose_tenant(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        ack()
        flow_id, _, tenant = _value(action).partition(":")
        _answer(respond, lambda: services.signin.choose_tenant(flow_id, _user(body), tenant))

    @app.action(ids.RENEW_ACTION)
    def on_renew(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        container = body.get("container") or {}
        # A Renew on the App Home has no message, channel or response_url: the renewal
        # reports in the account's channel, and the answer goes on the clicker's Home.
        on_home = container.get("type") == "view"
        answer: Any = _home_answer(services, _user(body)) if on_home else respond

        def renew() -> None:
            account_ref = _row_id(action, "That account is not managed by this bot (any more).")
            services.authz.require_admin(_user(body), "renew", account_ref)
            flow_id = services.renew.begin(
                requester=_user(body),
                account_ref=account_ref,
                by_id=True,
                channel_id=container.get("channel_id") or (body.get("channel") or {}).get("id"),
                thread_ts=container.get("message_ts"),
            )
            services.workers.submit(services.signin.start, flow_id)
            if on_home:
                flow = services.renew.record.get(flow_id)
                answer(
                    text=f":arrows_counterclockwise: Renewing `{flow['name']}`: the progress is in "
                    f"<#{flow['channel_id']}>, and the sign-in code comes only to you."
                )

        _answer(answer, renew)

    @app.action(ids.ACTION_RETIRE_OLD_SECRET)
    def on_retire(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        container = body.get("container") or {}

        def retire() -> None:
            services.authz.require_admin(_user(body), "retire", _value(action)[:40] or None)
            secret_ref = _row_id(
                action,
                "That secret is not an old secret of a managed account waiting to be removed "
                "(it may be removed already); nothing was changed.",
            )
            flow_id = services.retire.begin(
                requester=_user(body),
                secret_ref=secret_ref,
                channel_id=container.get("channel_id") or (body.get("channel") or {}).get("id"),
            )
            services.workers.submit(services.signin.start, flow_id)

        _answer(respond, retire)

    @app.action(ids.ACTION_PERMISSIONS_RECHECK)
    def on_permissions_recheck(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        ack()

        def recheck() -> None:
            account_ref = _row_id(action, "That account is not managed by this bot (any more).")
            services.provision.confirmations.recheck(account_ref, _user(body))

        _answer(respond, recheck)

    @app.action(ids.SNOOZE_ACTION)
    def on_snooze(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        container = body.get("container") or {}
        _answer(
            respond,
            lambda: expiry.snooze(
                services.context,
                _user(body),
                _value(action),
                container.get("channel_id") or (body.get("channel") or {}).get("id"),
                container.get("message_ts"),
            ),
        )

    @app.action(ids.ACTION_REPAIR_DRIFT)
    def on_repair(ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond) -> None:
        ack()
        container = body.get("container") or {}

        def repair() -> None:
            drift_ref = _row_id(
                action, "That drift is no longer open (it was repaired or cleared); nothing to do."
            )
            services.authz.require_admin(_user(body), "repair", drift_ref)
            flow_id = services.repair.begin(
                requester=_user(body),
                drift_ref=drift_ref,
                channel_id=container.get("channel_id") or (body.get("channel") or {}).get("id"),
            )
            services.workers.submit(services.signin.start, flow_id)

        _answer(respond, repair)

    @app.action(re.compile(".*"))
    def on_unknown_action(ack: Ack, action: dict[str, Any]) -> None:
        # Registered last: a button from an older message, or a forged payload.
        ack()
        log.info("ignored an unknown action %r", str(action.get("action_id"))[:80])


def _home_answer(services: Services, user: str) -> Callable[..., None]:
    """A `respond` for a click on the App Home: the answer shows at the top of the Home."""

    def answer(**payload: Any) -> None:
        services.workers.submit(services.home.notice, user, str(payload.get("text") or ""))

    return answer


def _selected_options(body: dict[str, Any]) -> list[str]:
    """The multi-select's current value, from the message state Slack sends with the click."""
    values = (body.get("state") or {}).get("values") or {}
    chosen: list[str] = []
    for block in values.values():
        element = block.get(ids.ACTION_CHOOSE_SUBSCRIPTIONS) if isinstance(block, dict) else None
        if element:
            chosen.extend(str(o.get("value")) for o in element.get("selected_options") or [])
    return chosen
