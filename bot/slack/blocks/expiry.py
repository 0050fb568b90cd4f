"""Block Kit for expiry, renewal and retirement: warnings, digests, the renewal's and the
retirement's messages."""

from __future__ import annotations

from typing import Any

from bot.slack import ids
from bot.slack.blocks.common import (
    MAX_BUTTON_TEXT,
    MAX_SECTION_TEXT,
    Payload,
    _context,
    _section,
    slack_date,
)


def _renew_button(account_id: int, name: str) -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": ids.renew_action(account_id),
        "text": {"type": "plain_text", "text": f"Renew {name}"[:MAX_BUTTON_TEXT]},
        "value": str(account_id),
        "style": "primary",
    }


def _when(days_left: int) -> str:
    if days_left < 0:
        return f"expired {-days_left} day{'s' if days_left != -1 else ''} ago"
    if days_left == 0:
        return "expires today"
    return f"expires in {days_left} day{'s' if days_left != 1 else ''}"


def expiry_warning(item: Any, now: Any, follow_up: bool = False) -> Payload:
    """One account's warning: account, application id, tenant, expiry, creator, Renew."""
    account = item.account
    expired = item.threshold == 0
    icon = ":rotating_light:" if expired or item.threshold <= 1 else ":warning:"
    state = "has *expired*" if expired else _when(item.days_left)
    head = f"{icon} The client secret of *`{account['name']}`* {state}."
    if expired:
        head += " Veeam backups that use this account are failing until it is renewed."
    date = slack_date(item.end_at.timestamp(), item.end_at.date().isoformat())
    details = (
        f"Application (client) id `{account.get('app_id')}` · tenant {account.get('tenant_name') or ''} "
        f"`{account.get('tenant_id')}`\nSecret `{item.hint}…` expires {date} · "
        f"created by <@{account.get('created_by')}>"
    )
    text = f"Client secret of {account['name']} {('has expired' if expired else _when(item.days_left))}"
    blocks: list[dict[str, Any]] = [_section(head), _context(details)]
    if not follow_up:
        blocks.append(
            {"type": "actions", "elements": [_renew_button(int(account["id"]), account["name"])]}
        )
    return {"text": text, "blocks": blocks}


DIGEST_BUTTONS = 25  # an actions block holds at most 25 elements
DIGEST_LINES = 10
MAX_MESSAGE_BLOCKS = 50  # Block Kit: at most 50 blocks in a message


def _digest_line(item: Any) -> str:
    account = item.account
    state = "*expired*" if item.threshold == 0 else _when(item.days_left)
    return (
        f"*`{account['name']}`* — {state} "
        f"({slack_date(item.end_at.timestamp(), item.end_at.date().isoformat())}) · "
        f"app `{account.get('app_id')}` · by <@{account.get('created_by')}>"
    )


def _pack_lines(lines: list[str]) -> list[str]:
    """Lines joined into section texts of at most DIGEST_LINES lines and MAX_SECTION_TEXT
    characters, so that no line is cut off."""
    sections: list[str] = []
    chunk: list[str] = []
    for line in lines:
        if chunk and (
            len(chunk) == DIGEST_LINES or len("\n".join([*chunk, line])) > MAX_SECTION_TEXT
        ):
            sections.append("\n".join(chunk))
            chunk = []
        chunk.append(line)
    if chunk:
        sections.append("\n".join(chunk))
    return sections


def _digest_groups(items: list[Any]) -> list[list[Any]]:
    ordered = sorted(items, key=lambda i: i.end_at)
    return [ordered[s : s + DIGEST_BUTTONS] for s in range(0, len(ordered), DIGEST_BUTTONS)]


def digest_pages(items: list[Any], max_items: int) -> list[list[Any]]:
    """`items` split into digests that each fit one message: at most `max_items` accounts
    and MAX_MESSAGE_BLOCKS blocks, soonest expiry first."""
    pages: list[list[Any]] = []
    page: list[Any] = []
    used = 1  # the heading
    for group in _digest_groups(items):
        size = len(_pack_lines([_digest_line(i) for i in group])) + 1  # sections + buttons
        if page and (used + size > MAX_MESSAGE_BLOCKS or len(page) + len(group) > max_items):
            pages.append(page)
            page, used = [], 1
        page += group
        used += size
    if page:
        pages.append(page)
    return pages


def expiry_digest(items: list[Any], now: Any) -> Payload:
    """Many accounts due at once: one message, a line per account, and their Renew buttons
    in groups of 25 (Block Kit's limit per actions block). Each button's action_id names its
    account, as action_ids must be unique within a block; `digest_pages` decides how many
    accounts one message can hold."""
    buttoned: set[int] = set()
    blocks: list[dict[str, Any]] = [
        _section(f":warning: *{len(items)} client secrets need renewing.* Soonest first:")
    ]
    for number, group in enumerate(_digest_groups(items)):
        blocks += [_section(text) for text in _pack_lines([_digest_line(i) for i in group])]
        buttons = []
        for item in group:
            account_id = int(item.account["id"])
            if account_id not in buttoned:  # one button per account, even with two secrets due
                buttoned.add(account_id)
                buttons.append(_renew_button(account_id, item.account["name"]))
        if buttons:
            blocks.append({"type": "actions", "block_id": f"renew-{number}", "elements": buttons})
    return {"text": f"{len(items)} client secrets need renewing", "blocks": blocks}


def renew_parent(*, name: str, requester: str, outcome: str | None = None) -> Payload:
    text = f"Renewing the client secret of `{name}` — requested by <@{requester}>"
    if outcome:
        text += f"\n{outcome}"
    return {"text": text, "blocks": [_section(text)]}


def renewed_alert(
    *, name: str, by: str, end_ts: float, end_date: str, hint: str, old_removed: bool = True
) -> Payload:
    text = (
        f":white_check_mark: *`{name}`* was renewed by <@{by}>; the new secret `{hint}…` expires "
        f"{slack_date(end_ts, end_date)}; "
        + (
            "the old secret was removed."
            if old_removed
            else "the old secret stays live until Veeam has the new one (see the thread)."
        )
    )
    return {"text": f"{name} renewed by <@{by}>", "blocks": [_section(text)]}


def renewal_done(
    *,
    name: str,
    new_hint: str,
    new_key_id: str | None,
    end_ts: float,
    end_date: str,
    old_hints: list[str],
    appliance_id: str | None,
) -> str:
    """What a renewal that finished did, step by step: the new secret, where it went, and
    what became of the old one."""
    ident = f" (id `{new_key_id}`)" if new_key_id else ""
    lines = [
        f":white_check_mark: Renewed *`{name}`*: the new secret `{new_hint}…`{ident} works (it "
        f"obtained a token) and expires {slack_date(end_ts, end_date)}."
    ]
    if appliance_id:
        lines.append(
            f"The Veeam appliance was updated: its account `{appliance_id}` now uses the new secret."
        )
    if old_hints:
        olds = ", ".join(f"`{h}…`" for h in old_hints)
        lines.append(f"The old secret {olds} was removed in Entra.")
    else:
        lines.append("There was no old secret to remove.")
    return "\n".join(lines)


def renewed_keep_old(
    *,
    name: str,
    new_hint: str,
    new_end_ts: float,
    new_end_date: str,
    old: list[dict[str, Any]],
) -> Payload:
    """Renewed without an appliance: where the new secret is, how to give it to Veeam, and
    the button that removes the old secret once Veeam has the new one."""
    olds = ", ".join(
        f"`{o['hint'] or '?'}…` (expires {slack_date(o['end_ts'], o['end_at'][:10])})" for o in old
    )
    head = (
        f":white_check_mark: Renewed. The new secret `{new_hint}…` of *`{name}`* works (it "
        f"obtained a token) and expires {slack_date(new_end_ts, new_end_date)}. No Veeam "
        "appliance is connected to the bot, so Veeam was not updated.\n"
        f":warning: The old secret {olds} is *still live*: Veeam keeps using it until you give "
        "it the new one, and removing it before then stops Veeam's backups."
    )
    steps = (
        "*Put the new secret into Veeam*\n"
        f"1. On the bot's host run `veeam-sa-bot secret show {name}`: it prints the new secret "
        "(the bot never shows it in Slack).\n"
        f"2. In Veeam Backup for Microsoft Azure open *Service Accounts*, select `{name}`, "
        "choose *Edit* and paste it at the *Secret* step.\n"
        f"3. Then press the button (or run `/veeam-sa retire {name}`): the bot signs you in "
        "and removes the old secret in Entra."
    )
    button = {
        "type": "button",
        "action_id": ids.ACTION_RETIRE_OLD_SECRET,
        "text": {"type": "plain_text", "text": "Veeam has the new secret — remove the old one"},
        "value": str(old[0]["id"]),
        "style": "danger",
        "confirm": {
            "title": {"type": "plain_text", "text": "Remove the old secret?"},
            "text": {
                "type": "mrkdwn",
                "text": f"Only if Veeam already holds the new secret of `{name}`: "
                "a Veeam still using the old one stops backing up.",
            },
            "confirm": {"type": "plain_text", "text": "Remove it"},
            "deny": {"type": "plain_text", "text": "Not yet"},
        },
    }
    return {
        "text": f"{name} renewed; the old secret stays live until Veeam has the new one",
        "blocks": [
            _section(head),
            _section(steps),
            {"type": "actions", "elements": [button]},
            _context("Only the bot's admins may remove it; it is audited."),
        ],
    }


def retired_old(*, name: str, by: str, hints: list[str], new_hint: str | None) -> Payload:
    """The renewal's message once the old secret is gone (its button removed)."""
    olds = ", ".join(f"`{h or '?'}…`" for h in hints) or "the old secret"
    text = (
        f":white_check_mark: <@{by}> confirmed that Veeam has the new secret of *`{name}`*; "
        f"the old secret {olds} was removed in Entra."
        + (f" Only the new secret `{new_hint}…` remains." if new_hint else "")
    )
    return {"text": f"Old secret of {name} removed by <@{by}>", "blocks": [_section(text)]}


def retire_parent(*, name: str, requester: str, outcome: str | None = None) -> Payload:
    text = f"Removing the old client secret of `{name}` — requested by <@{requester}>"
    if outcome:
        text += f"\n{outcome}"
    return {"text": text, "blocks": [_section(text)]}


def retiring_reminder(
    *, name: str, hint: str, end_ts: float, end_date: str, expired: bool
) -> Payload:
    """Once: the old secret, kept live after a renewal, is itself about to expire."""
    when = "has expired" if expired else f"expires {slack_date(end_ts, end_date)}"
    text = (
        f":hourglass: The old secret `{hint or '?'}…` of *`{name}`* is still live and {when}. "
        "If Veeam still uses it, its backups stop then: put the new secret into Veeam "
        f"(`veeam-sa-bot secret show {name}`, then Service Accounts → Edit → Secret) and "
        f"remove the old one with `/veeam-sa retire {name}`."
    )
    return {
        "text": f"The old secret of {name} is still live and {when}",
        "blocks": [_section(text)],
    }


# -- list and show -----------------------------------------------------------------------
