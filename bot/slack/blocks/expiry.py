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
    credential_noun,
    slack_date,
)


def _renew_button(account_id: int, name: str, primary: bool = True) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": ids.renew_action(account_id),
        "text": {"type": "plain_text", "text": f"Renew {name}"[:MAX_BUTTON_TEXT]},
        "value": str(account_id),
    }
    if primary:  # one primary button per message; the rest keep the default style
        button["style"] = "primary"
    return button


def _snooze_button(secret_id: int, option: str, label: str) -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": ids.snooze_action(option),
        "text": {"type": "plain_text", "text": label[:MAX_BUTTON_TEXT]},
        "value": f"{int(secret_id)}:{option}",
    }


def mentions(users: list[str], groups: list[str]) -> str:
    """Who a loud warning calls: people as `<@U…>`, user groups as `<!subteam^S…>`."""
    return " ".join([*(f"<@{u}>" for u in users), *(f"<!subteam^{g}>" for g in groups)])


def _when(days_left: int) -> str:
    if days_left < 0:
        return f"expired {-days_left} day{'s' if days_left != -1 else ''} ago"
    if days_left == 0:
        return "expires today"
    return f"expires in {days_left} day{'s' if days_left != 1 else ''}"


def expiry_warning(
    item: Any,
    now: Any,
    follow_up: bool = False,
    *,
    calls: str = "",
    snooze: list[tuple[str, str]] | None = None,
) -> Payload:
    """One account's warning: account, application id, tenant, expiry, creator, Renew (and
    the admins' Snooze choices). `calls` (mentions) is added to loud warnings."""
    account = item.account
    expired = item.threshold == 0
    icon = ":rotating_light:" if expired or item.threshold <= 1 else ":warning:"
    state = "has *expired*" if expired else _when(item.days_left)
    noun = credential_noun(account)
    head = f"{icon} The {noun} of *`{account['name']}`* {state}."
    if expired:
        head += " Veeam backups that use this account are failing until it is renewed."
    if calls:
        head += f"\n{calls}"
    date = slack_date(item.end_at.timestamp(), item.end_at.date().isoformat())
    details = (
        f"Application (client) id `{account.get('app_id')}` · tenant {account.get('tenant_name') or ''} "
        f"`{account.get('tenant_id')}`\n"
        + ("Certificate (thumbprint) " if noun == "certificate" else "Secret ")
        + f"`{item.hint}…` {'expired' if expired else 'expires'} {date} · "
        f"created by <@{account.get('created_by')}>"
    )
    text = f"{noun.capitalize()} of {account['name']} {('has expired' if expired else _when(item.days_left))}"
    if calls:
        text += f" — {calls}"
    blocks: list[dict[str, Any]] = [_section(head), _context(details)]
    if not follow_up:
        elements = [_renew_button(int(account["id"]), account["name"])]
        elements += [
            _snooze_button(item.secret_id, option, label) for option, label in snooze or []
        ]
        blocks.append({"type": "actions", "elements": elements})
    return {"text": text, "blocks": blocks}


DIGEST_BUTTONS = 25  # an actions block holds at most 25 elements
DIGEST_LINES = 10
MAX_MESSAGE_BLOCKS = 50  # Block Kit: at most 50 blocks in a message


def _digest_line(item: Any) -> str:
    account = item.account
    date = slack_date(item.end_at.timestamp(), item.end_at.date().isoformat())
    renewed_by = getattr(item, "renewed_by", None)
    if renewed_by:
        return f":white_check_mark: ~`{account['name']}`~ — renewed by <@{renewed_by}>"
    state = f"*expired* {date}" if item.threshold == 0 else f"{_when(item.days_left)} ({date})"
    return (
        f"*`{account['name']}`* — {state} · "
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


def _digest_heading(items: list[Any]) -> tuple[str, str]:
    """The digest's first line and its notification text."""
    count = len(items)
    plural = "s" if count != 1 else ""
    need = "need" if count != 1 else "needs"
    thresholds = {i.threshold for i in items}
    if thresholds == {0}:
        icon, when = ":rotating_light:", " — expired"
    elif max(thresholds) <= 1:
        icon, when = ":rotating_light:", " within a day"
    else:
        icon, when = ":warning:", f" within {max(thresholds)} days"
    text = f"{count} client secret{plural} {need} renewing{when}"
    renewed = sum(1 for i in items if getattr(i, "renewed_by", None))
    tail = f" ({renewed} renewed since)" if renewed else ""
    return f"{icon} *{text}.*{tail} Soonest first:", text


def expiry_digest(items: list[Any], now: Any, *, calls: str = "") -> Payload:
    """Many accounts due at once: one message, a line per account, and their Renew buttons
    in groups of 25 (Block Kit's limit per actions block). Each button's action_id names its
    account, as action_ids must be unique within a block; `digest_pages` decides how many
    accounts one message can hold. An account renewed since shows who renewed it instead of
    its button. `calls` (mentions) is added to loud digests."""
    heading, text = _digest_heading(items)
    if calls:
        heading += f"\n{calls}"
        text += f" — {calls}"
    buttoned: set[int] = set()
    blocks: list[dict[str, Any]] = [_section(heading)]
    for number, group in enumerate(_digest_groups(items)):
        blocks += [_section(line) for line in _pack_lines([_digest_line(i) for i in group])]
        buttons = []
        for item in group:
            account_id = int(item.account["id"])
            if getattr(item, "renewed_by", None):
                continue
            if account_id not in buttoned:  # one button per account, even with two secrets due
                buttoned.add(account_id)
                buttons.append(
                    _renew_button(account_id, item.account["name"], primary=len(buttoned) == 1)
                )
        if buttons:
            blocks.append({"type": "actions", "block_id": f"renew-{number}", "elements": buttons})
    return {"text": text, "blocks": blocks}


#: A DM lists at most this many accounts (40 sections of DIGEST_LINES stay within 50 blocks).
DM_MAX_ITEMS = 400


def requester_dm(items: list[Any]) -> Payload:
    """To an account's requester, once its secret is a week (or less) from its end: each
    account, when, and the channel whose warning carries the Renew button."""
    lines = []
    for item in items[:DM_MAX_ITEMS]:
        account = item.account
        date = slack_date(item.end_at.timestamp(), item.end_at.date().isoformat())
        state = f"expired {date}" if item.threshold == 0 else f"{_when(item.days_left)} ({date})"
        lines.append(f"• *`{account['name']}`* — {state} · warning in <#{item.channel}>")
    if len(items) > DM_MAX_ITEMS:
        lines.append(f"… and {len(items) - DM_MAX_ITEMS} more")
    names = ", ".join(i.account["name"] for i in items[:20])
    nouns = {credential_noun(i.account) for i in items}
    noun = nouns.pop() if len(nouns) == 1 else "credential"
    head = (
        f":alarm_clock: The {noun} of a service account you asked for is about to stop "
        "working, and with it the Veeam backups that use it:"
        if len(items) == 1
        else f":alarm_clock: The {noun}s of service accounts you asked for are about to "
        "stop working, and with them the Veeam backups that use them:"
    )
    where = (
        "Each warning carries a *Renew* button; an admin of the bot can renew there, or with "
        "`/veeam-sa renew NAME`."
    )
    return {
        "text": f"{noun.capitalize()} expiring soon: {names}"[:3000],
        "blocks": [_section(head), *(_section(t) for t in _pack_lines(lines)), _context(where)],
    }


def renew_parent(*, name: str, requester: str, outcome: str | None = None) -> Payload:
    text = f"Renewing the client secret of `{name}` — requested by <@{requester}>"
    if outcome:
        text += f"\n{outcome}"
    return {"text": text, "blocks": [_section(text)]}


def renewed_alert(
    *,
    name: str,
    by: str,
    end_ts: float,
    end_date: str,
    hint: str,
    old_removed: bool = True,
    certificate: bool = False,
) -> Payload:
    noun = "certificate" if certificate else "secret"
    text = (
        f":white_check_mark: *`{name}`* was renewed by <@{by}>; the new {noun} `{hint}…` expires "
        f"{slack_date(end_ts, end_date)}; "
        + (
            f"the old {noun} was removed."
            if old_removed
            else f"the old {noun} stays live until Veeam has the new one (see the thread)."
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
    noun: str = "secret",
) -> str:
    """What a renewal that finished did, step by step: the new secret (or certificate),
    where it went, and what became of the old one."""
    ident = f" (id `{new_key_id}`)" if new_key_id else ""
    lines = [
        f":white_check_mark: Renewed *`{name}`*: the new {noun} `{new_hint}…`{ident} works (it "
        f"obtained a token) and expires {slack_date(end_ts, end_date)}."
    ]
    if appliance_id:
        lines.append(
            f"The Veeam appliance was updated: its account `{appliance_id}` now uses the new {noun}."
        )
    if old_hints:
        olds = ", ".join(f"`{h}…`" for h in old_hints)
        lines.append(f"The old {noun} {olds} was removed in Entra.")
    else:
        lines.append(f"There was no old {noun} to remove.")
    return "\n".join(lines)


def renewed_keep_old(
    *,
    name: str,
    new_hint: str,
    new_end_ts: float,
    new_end_date: str,
    old: list[dict[str, Any]],
    certificate: bool = False,
) -> Payload:
    """Renewed without an appliance: where the new secret (or certificate) is, how to give it
    to Veeam, and the button that removes the old one once Veeam has the new one."""
    noun = "certificate" if certificate else "secret"
    olds = ", ".join(
        f"`{o['hint'] or '?'}…` (expires {slack_date(o['end_ts'], o['end_at'][:10])})" for o in old
    )
    head = (
        f":white_check_mark: Renewed. The new {noun} `{new_hint}…` of *`{name}`* works (it "
        f"obtained a token) and expires {slack_date(new_end_ts, new_end_date)}. No Veeam "
        "appliance is connected to the bot, so Veeam was not updated.\n"
        f":warning: The old {noun} {olds} is *still live*: Veeam keeps using it until you give "
        "it the new one, and removing it before then stops Veeam's backups."
    )
    if certificate:
        export = (
            f"1. On the bot's host run `veeam-sa-bot secret show {name} --out {name}.pfx`: it "
            "writes the certificate with its private key and prints the file's password once.\n"
            f"2. In Veeam Backup for Microsoft Azure open *Service Accounts*, select `{name}`, "
            "choose *Edit* and upload the file with its password; then delete the file.\n"
        )
    else:
        export = (
            f"1. On the bot's host run `veeam-sa-bot secret show {name}`: it prints the new "
            "secret (the bot never shows it in Slack).\n"
            f"2. In Veeam Backup for Microsoft Azure open *Service Accounts*, select `{name}`, "
            "choose *Edit* and paste it at the *Secret* step.\n"
        )
    steps = (
        f"*Put the new {noun} into Veeam*\n"
        + export
        + f"3. Then press the button (or run `/veeam-sa retire {name}`): the bot signs you in "
        f"and removes the old {noun} in Entra."
    )
    button = {
        "type": "button",
        "action_id": ids.ACTION_RETIRE_OLD_SECRET,
        "text": {"type": "plain_text", "text": f"Veeam has the new {noun} — remove the old one"},
        "value": str(old[0]["id"]),
        "style": "danger",
        "confirm": {
            "title": {"type": "plain_text", "text": f"Remove the old {noun}?"},
            "text": {
                "type": "mrkdwn",
                "text": f"Only if Veeam already holds the new {noun} of `{name}`: "
                "a Veeam still using the old one stops backing up.",
            },
            "confirm": {"type": "plain_text", "text": "Remove it"},
            "deny": {"type": "plain_text", "text": "Not yet"},
        },
    }
    return {
        "text": f"{name} renewed; the old {noun} stays live until Veeam has the new one",
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
