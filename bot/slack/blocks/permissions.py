"""Block Kit for Veeam's answer on an account's permissions (`checkPermissions`): all
present, or per subscription what is missing and what to do, with Recheck."""

from __future__ import annotations

from typing import Any

from bot.slack import ids
from bot.slack.blocks.common import Payload, _context, _section, escape

#: Most names listed per kind and subscription; the rest is counted.
SHOWN = 8
#: Most subscriptions given a section of their own (a message holds at most 50 blocks).
MAX_SUBSCRIPTIONS = 40


def _names(items: list[str]) -> str:
    shown = ", ".join(f"`{escape(i)}`" for i in items[:SHOWN])
    if len(items) > SHOWN:
        shown += f" and {len(items) - SHOWN} more"
    return shown


def _recheck(account_id: int) -> dict[str, Any]:
    return {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": ids.ACTION_PERMISSIONS_RECHECK,
                "text": {"type": "plain_text", "text": "Recheck"},
                "value": str(int(account_id)),
            }
        ],
    }


def _minutes(seconds: float) -> str:
    if seconds >= 90:
        return f"{round(seconds / 60)} minutes"
    return f"{max(1, round(seconds))} seconds"


def permissions_message(
    *,
    name: str,
    account_id: int,
    findings: list[dict[str, Any]],
    custom_role: str | None,
    retrying_for_s: float | None,
    by: str | None = None,
) -> Payload:
    """The appliance's answer: every permission present, or what is missing per subscription."""
    missing = [f for f in findings if f["missing"]]
    asked = f" (asked by <@{by}>)" if by else ""
    if not missing:
        text = (
            f":white_check_mark: Veeam confirms that `{name}` has every permission it needs on "
            f"{len(findings)} subscription(s){asked}."
        )
        return {"text": text, "blocks": [_section(text)]}
    head = (
        f":warning: Veeam reports that `{name}` lacks permissions on {len(missing)} of "
        f"{len(findings)} subscription(s){asked}:"
    )
    blocks: list[dict[str, Any]] = [_section(head)]
    where = f"the custom role `{escape(custom_role)}`" if custom_role else "the account's roles"
    for f in missing[:MAX_SUBSCRIPTIONS]:
        label = f"`{f['id']}`" + (f" {escape(f['name'])}" if f.get("name") else "")
        lines = [f"*{label}*"]
        if f.get("unavailable") and not (f["permissions"] or f["data_actions"] or f["providers"]):
            lines.append(
                "• the appliance could not check this subscription (it cannot see it): make sure "
                "the account has a role on it"
            )
        if f["permissions"]:
            lines.append(f"• missing permissions: {_names(f['permissions'])}")
        if f["data_actions"]:
            lines.append(f"• missing data actions: {_names(f['data_actions'])}")
        if f["permissions"] or f["data_actions"]:
            lines.append(
                f"  → add them to {where} on this subscription (an Owner or User Access "
                "Administrator can, in Access control (IAM))"
            )
        if f["providers"]:
            lines.append(f"• resource providers not registered: {_names(f['providers'])}")
            lines.append(
                "  → register them (Subscription → Resource providers → Register, or "
                f"`az provider register --namespace NAME --subscription {f['id']}`)"
            )
        blocks.append(_section("\n".join(lines)))
    if len(missing) > MAX_SUBSCRIPTIONS:
        blocks.append(_context(f"…and {len(missing) - MAX_SUBSCRIPTIONS} more subscriptions."))
    if retrying_for_s:
        blocks.append(
            _context(
                "Rights granted a moment ago can take up to 15 minutes to show at Veeam: the bot "
                f"asks again by itself for about {_minutes(retrying_for_s)}, or press Recheck."
            )
        )
    else:
        blocks.append(_context("Once the rights are granted, press Recheck to ask Veeam again."))
    blocks.append(_recheck(account_id))
    return {"text": f"Veeam reports missing permissions for {name}", "blocks": blocks}


def permissions_unknown(*, name: str, account_id: int, reason: str) -> Payload:
    text = f":grey_question: Veeam could not check the permissions of `{name}`: {reason}."
    return {"text": text, "blocks": [_section(text), _recheck(account_id)]}
