"""Drift alerts: what the health check found changed behind the bot's back, with Repair."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.slack import ids
from bot.slack.blocks.common import MAX_BUTTON_TEXT, Payload, _context, _section, escape, slack_date

#: What each kind of drift is called, in an alert's first line.
DRIFT_TITLES = {
    "application": "its application is gone from Entra",
    "credential": "Entra rejects its client secret",
    "roles": "role assignments are missing",
    "appliance": "Veeam reports the account is not valid",
}
#: What Repair will do, per kind.
REPAIR_PLANS = {
    "application": "re-create the application (new client id, secret and role assignments) "
    "and update the Veeam account to use it",
    "credential": "add a new client secret and hand it over, as a renewal does",
    "roles": "assign the missing roles again",
    "appliance": "add a new client secret, hand it to Veeam and assign the roles again",
}


def _date(iso: str | None) -> str:
    if not iso:
        return "never"
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return slack_date(when.timestamp(), when.isoformat(timespec="minutes"))


def drift_alert(
    *,
    name: str,
    drift: dict[str, Any],
    closed: str | None = None,
    by: str | None = None,
    still: str | None = None,
) -> Payload:
    """One account's drift of one kind. Open: what differs, since when, and Repair (admins).
    `closed` ("cleared" / "repaired") turns it into the record of how it ended; `still` says
    what a repair left unfixed."""
    kind = str(drift["kind"])
    title = DRIFT_TITLES.get(kind, kind)
    since = (
        f"First seen {_date(drift.get('since'))}; last healthy check "
        f"{_date(drift.get('last_ok_at'))}."
    )
    detail = escape(drift.get("detail") or "")
    if closed == "repaired":
        head = f":white_check_mark: *`{name}`*: {title} — *repaired* by <@{by}>."
        text = f"{name}: {title} — repaired"
    elif closed == "cleared":
        head = (
            f":white_check_mark: *`{name}`*: {title} — *cleared by itself* "
            f"(healthy at {_date(drift.get('closed_at'))})."
        )
        text = f"{name}: {title} — cleared by itself"
    else:
        head = f":rotating_light: *`{name}`*: {title}."
        text = f"{name}: {title}"
    blocks: list[dict[str, Any]] = [
        _section(f"{head}\n*What differs:* {detail}"),
        _context(since),
    ]
    if still:
        blocks.append(_section(f":warning: Still wrong after the repair: {escape(still)}"))
    if closed is None:
        blocks.append(_context(f"*Repair* (admins) signs you in and will {REPAIR_PLANS.get(kind, 'fix it')}."))
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": ids.ACTION_REPAIR_DRIFT,
                        "text": {"type": "plain_text", "text": f"Repair {name}"[:MAX_BUTTON_TEXT]},
                        "value": str(drift["id"]),
                        "style": "danger" if kind == "application" else "primary",
                    }
                ],
            }
        )
    return {"text": text, "blocks": blocks}


def health_line(view: dict[str, Any]) -> str | None:
    """The health check's word on an account for `list` and `show`; None when unchecked."""
    state = view.get("health_state")
    if not state:
        return None
    checked = _date(view.get("health_checked_at"))
    if state == "healthy":
        return f":large_green_circle: healthy (checked {checked})"
    if state == "unknown":
        return f":grey_question: health unknown: the last check could not reach Microsoft ({checked})"
    kinds = ", ".join(DRIFT_TITLES.get(k, k) for k in view.get("drift_kinds") or []) or "drift"
    return f":red_circle: drift: {kinds} (checked {checked})"
