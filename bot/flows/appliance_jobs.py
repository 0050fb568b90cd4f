"""`/veeam-sa sync` and `/veeam-sa import`: appliance work run on the worker pool, each
returning the Slack payload that reports its outcome to the person who asked."""

from __future__ import annotations

from typing import Any

from bot.clients.vbazure import ApplianceError
from bot.flows.appliance import appliance_text, hand_off, import_accounts
from bot.flows.root import Services
from bot.slack import blocks
from storage import queries


def sync(services: Services, name: str, user: str) -> dict[str, Any]:
    """Retry the hand-off of an account's current secret to the appliance."""
    db = services.store.db
    account = queries.get_account(db, name)
    if account is None or account["state"] != "active":
        return blocks.error_message(
            f"There is no managed service account `{name}`.", with_help_hint=False
        )
    secrets = [s for s in queries.active_secrets(db, account["id"]) if s.get("ciphertext")]
    if not secrets:
        return blocks.error_message(
            f"The bot holds no secret for `{name}` (it was imported). Renew it to give Veeam a new one: "
            f"`/veeam-sa renew {name}`.",
            with_help_hint=False,
        )
    try:
        appliance_id = hand_off(
            services, account, services.cipher.decrypt(secrets[-1]["ciphertext"]), user
        )
    except ApplianceError as exc:
        return blocks.error_message(
            f"`{name}` was not handed to Veeam: {appliance_text(exc)}.", with_help_hint=False
        )
    return blocks.note(
        f":white_check_mark: `{name}` is registered with the Veeam appliance (account `{appliance_id}`)."
    )


def import_all(services: Services, user: str, channel: str | None) -> dict[str, Any]:
    try:
        adopted, skipped = import_accounts(services, user, channel, services.clock())
    except ApplianceError as exc:
        return blocks.error_message(
            f"Nothing was imported: {appliance_text(exc)}.", with_help_hint=False
        )
    left = (
        " Left alone (they sign in with a certificate, and the bot renews client secrets): "
        + ", ".join(f"`{n}`" for n in skipped)
        + "."
        if skipped
        else ""
    )
    if not adopted:
        return blocks.note(
            "Every service account on the Veeam appliance is already managed here." + left
        )
    names = ", ".join(f"`{n}`" for n in adopted)
    return blocks.note(
        f":inbox_tray: Now watching {len(adopted)} account(s) from the appliance: {names}. "
        "Their expiry is warned about like any other; renewing one gives it a new secret and "
        "keeps the subscriptions and purposes the appliance holds for it." + left
    )
