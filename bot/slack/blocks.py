"""Block Kit builders: pure functions from data to message payloads.

Each builder returns `{"text": ..., "blocks": [...]}` — `text` is the notification and
screen-reader fallback. Nothing here talks to Slack or the database.
"""

from __future__ import annotations

from typing import Any

from bot.slack.grammar import USAGE

Payload = dict[str, Any]

MAX_SECTION_TEXT = 3000
MAX_BUTTON_TEXT = 75


def _section(text: str) -> dict[str, Any]:
    if len(text) > MAX_SECTION_TEXT:
        text = text[: MAX_SECTION_TEXT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:MAX_SECTION_TEXT]}]}


def help_message() -> Payload:
    grammar = "\n".join(
        f"`{USAGE[v]}`"
        for v in ("create", "list", "show", "renew", "retire", "cancel", "sync", "import", "help")
    )
    examples = (
        "*Examples*\n"
        "• `/veeam-sa create prod-backup --subscription 11111111-2222-3333-4444-555555555555`\n"
        '• `/veeam-sa create dr-site --description "DR copy jobs"` — pick subscriptions after sign-in\n'
        "• `/veeam-sa renew prod-backup`\n"
        "• `/veeam-sa retire prod-backup` — after a renewal, once Veeam has the new secret\n"
        "• `/veeam-sa list`"
    )
    about = (
        "*veeam-sa* creates and renews service accounts for Veeam Backup for Microsoft Azure. "
        "`create` signs you in to Microsoft Entra with a device code (sent only to you), checks "
        "your rights, then creates the application, its service principal, a one-year client "
        "secret and the role assignments. The secret is never shown in Slack."
    )
    return {
        "text": "veeam-sa: "
        + " | ".join(USAGE[v] for v in ("create", "list", "renew", "cancel", "help")),
        "blocks": [
            _section(about),
            _section("*Commands*\n" + grammar),
            _section(examples),
            _context(
                "NAME: up to 255 Latin letters, digits, `_` and `-`. "
                "Only the bot's admins may create, renew and cancel."
            ),
        ],
    }


def error_message(text: str, *, with_help_hint: bool = True) -> Payload:
    body = f":warning: {text}"
    blocks = [_section(body)]
    if with_help_hint:
        blocks.append(_context("`/veeam-sa help` shows the full grammar."))
    return {"text": body, "blocks": blocks}


def refusal_message(rule: str) -> Payload:
    return error_message(f"Sorry, you can't do that: {rule}", with_help_hint=False)


# -- create flow -------------------------------------------------------------------------

STEP_LABELS: dict[str, str] = {
    "sign_in": "Sign in to Microsoft",
    "sign_in_again": "Sign in once more (the tenant asks for it)",
    "checks": "Check permissions",
    "application": "Create the application",
    "principal": "Create the service principal",
    "secret": "Add the client secret",
    "roles": "Assign roles",
    "handoff": "Hand the secret to Veeam",
}
STEP_ICONS = {
    "todo": ":white_circle:",
    "running": ":hourglass_flowing_sand:",
    "done": ":white_check_mark:",
    "failed": ":x:",
    "skipped": ":heavy_minus_sign:",
    "rolled_back": ":leftwards_arrow_with_hook:",
}


def slack_date(ts: float, fallback: str) -> str:
    """A date Slack renders in the reader's own time zone."""
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{fallback}>"


def checklist(steps: dict[str, str]) -> str:
    lines = []
    for key, label in STEP_LABELS.items():
        if key in ("handoff", "sign_in_again") and key not in steps:
            continue  # only with a VBAzure appliance / a tenant that asks for a second sign-in
        status = steps.get(key, "todo")
        lines.append(f"{STEP_ICONS.get(status, STEP_ICONS['todo'])} {label}")
    return "\n".join(lines)


def create_parent(
    *,
    name: str,
    requester: str,
    subscriptions: list[str],
    description: str | None,
    steps: dict[str, str],
    outcome: str | None = None,
    summary: list[str] | None = None,
) -> Payload:
    """The channel message of one creation: who asked, for what, and a live checklist."""
    subs = ", ".join(f"`{s}`" for s in subscriptions) if subscriptions else "_chosen after sign-in_"
    head = f"*Service account `{name}`* — requested by <@{requester}>"
    if outcome:
        head += f"\n{outcome}"
    details = f"Subscriptions: {subs}"
    if description:
        details += f"\nDescription: {escape(description)}"
    blocks: list[dict[str, Any]] = [_section(head), _context(details), _section(checklist(steps))]
    if summary:
        blocks.append({"type": "divider"})
        blocks.append(_section("\n".join(summary)))
    text = f"Service account {name} requested by <@{requester}>"
    if outcome:
        text += f": {outcome}"
    return {"text": text, "blocks": blocks}


def device_code_message(
    *,
    user_code: str,
    verification_uri: str,
    expires_at: float,
    flow_id: str,
    name: str,
    purpose: str = "create",
    again: str | None = None,
) -> Payload:
    """The sign-in code: for the requester's eyes only (ephemeral or DM). `again` names the
    resource of a further sign-in the tenant asked for."""
    from bot.slack import ids

    expiry = slack_date(expires_at, "in 15 minutes")
    return {
        "text": f"Sign in to Microsoft with code {user_code} at {verification_uri} (expires {expiry}).",
        "blocks": [
            _section(
                f"*Sign in to Microsoft to {purpose} `{name}`*"
                + (f" — once more, for {again}" if again else "")
                + f"\nOpen the link and enter this code (it expires {expiry}):"
            ),
            _section(f"```{user_code}```"),
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": ids.ACTION_OPEN_DEVICE_LOGIN,
                        "text": {"type": "plain_text", "text": sign_in_label(verification_uri)},
                        "url": verification_uri,
                        "style": "primary",
                    },
                    {
                        "type": "button",
                        "action_id": ids.ACTION_CANCEL_FLOW,
                        "text": {"type": "plain_text", "text": "Cancel"},
                        "value": flow_id,
                        "style": "danger",
                    },
                ],
            },
            _context(
                "Only you can see this code. Sign in with the work account that will own the "
                "service account; the thread will say who signed in."
            ),
        ],
    }


def escape(text: object) -> str:
    """Text that did not come from the bot (Microsoft, the appliance, a user), made safe for
    mrkdwn: Slack reads `<…>` as mentions, channel pings and links, so `&`, `<` and `>` are
    escaped as Slack's formatting reference asks. Formatting marks stay literal text."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def sign_in_label(verification_uri: str) -> str:
    """The sign-in button's label, from the address the server gave (each cloud has its own:
    microsoft.com/devicelogin, …/deviceloginus, …/deviceloginchina)."""
    shown = verification_uri.split("://", 1)[-1].rstrip("/")
    label = f"Open {shown}"
    return label if len(label) <= 75 else label[:74] + "…"  # Block Kit: button text ≤ 75


def code_delivery_note(requester: str, where: str) -> str:
    """The thread's word on the sign-in code, without the code."""
    if where == "ephemeral":
        return (
            f":lock: Waiting for <@{requester}> to sign in — the code was sent to them privately "
            "(a message only they can see, in this channel)."
        )
    if where == "dm":
        return (
            f":lock: Waiting for <@{requester}> to sign in — the code was sent to them "
            "in a direct message."
        )
    return (
        f":warning: <@{requester}>, I could not deliver your sign-in code privately. "
        "Cancel with `/veeam-sa cancel` and try again."
    )


def note(text: str) -> Payload:
    return {"text": text, "blocks": [_section(text)]}


# -- prerequisites, subscription choice, summary -----------------------------------------

CHECK_ICONS = {True: ":white_check_mark:", False: ":x:", None: ":grey_question:"}
MAX_OPTIONS = 100


def prerequisites_message(
    *,
    flow_id: str,
    app_right: bool | None,
    app_reason: str,
    subscriptions: list[dict[str, Any]],
    blocked: bool,
) -> Payload:
    """Like VBAzure's Scope step: one line per check, the fix for each failure, Recheck."""
    from bot.slack import ids

    lines = [f"{CHECK_ICONS[app_right]} Register applications in the tenant — {app_reason}"]
    for sub in subscriptions:
        label = f"`{sub['id']}`" + (f" {escape(sub['name'])}" if sub.get("name") else "")
        lines.append(f"{CHECK_ICONS[sub['ok']]} Assign roles on {label} — {sub['reason']}")
    head = "*Prerequisites*" + (" — something is missing" if blocked else "")
    blocks = [_section(head + "\n" + "\n".join(lines))]
    if blocked:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": ids.ACTION_RECHECK,
                        "text": {"type": "plain_text", "text": "Recheck"},
                        "value": flow_id,
                    }
                ],
            }
        )
        blocks.append(_context("Ask your tenant admin for what is missing, then press Recheck."))
    text = "Prerequisites: " + ("something is missing" if blocked else "all met")
    return {"text": text, "blocks": blocks}


def subscription_chooser(
    *, flow_id: str, requester: str, subscriptions: list[dict[str, Any]]
) -> Payload:
    """A multi-select of the subscriptions the account can see, and Create (requester only)."""
    from bot.slack import ids

    options = []
    for sub in subscriptions[:MAX_OPTIONS]:
        mark = "✓ can assign roles" if sub["ok"] else "✗ cannot assign roles"
        label = f"{sub.get('name') or sub['id']} ({mark})"
        options.append(
            {
                "text": {"type": "plain_text", "text": label[:75]},
                "value": sub["id"],
                "description": {"type": "plain_text", "text": sub["id"][:75]},
            }
        )
    lines = [
        f"{CHECK_ICONS[s['ok']]} {s.get('name') or ''} `{s['id']}`"
        for s in subscriptions[:MAX_OPTIONS]
    ]
    if len(subscriptions) > MAX_OPTIONS:
        lines.append(
            f"…and {len(subscriptions) - MAX_OPTIONS} more: name them with `--subscription`."
        )
    blocks: list[dict[str, Any]] = [
        _section(f"<@{requester}>, choose the subscriptions to protect:\n" + "\n".join(lines)),
    ]
    if options:
        blocks.append(
            {
                "type": "actions",
                "block_id": "choose",
                "elements": [
                    {
                        "type": "multi_static_select",
                        "action_id": ids.ACTION_CHOOSE_SUBSCRIPTIONS,
                        "placeholder": {"type": "plain_text", "text": "Subscriptions"},
                        "options": options,
                    },
                    {
                        "type": "button",
                        "action_id": ids.ACTION_CREATE,
                        "text": {"type": "plain_text", "text": "Create"},
                        "style": "primary",
                        "value": flow_id,
                    },
                ],
            }
        )
    else:
        blocks.append(_context("This account cannot see any subscription in the tenant."))
    return {"text": "Choose the subscriptions to protect", "blocks": blocks}


# -- expiry warnings and renewal ---------------------------------------------------------


def _renew_button(account_id: int, name: str) -> dict[str, Any]:
    from bot.slack import ids

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
    from bot.slack import ids

    olds = ", ".join(
        f"`{o['hint'] or '?'}…` (expires {slack_date(o['end_ts'], o['end_at'][:10])})" for o in old
    )
    head = (
        f":white_check_mark: Renewed. The new secret `{new_hint}…` of *`{name}`* works (it "
        f"obtained a token) and expires {slack_date(new_end_ts, new_end_date)}.\n"
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

LIST_PER_SECTION = 12
LIST_MAX_BLOCKS = 48


def account_list(rows: list[dict[str, Any]]) -> Payload:
    """Every managed account, soonest expiry first, packed into Block Kit's limits."""
    if not rows:
        return {
            "text": "No managed service accounts yet.",
            "blocks": [
                _section(
                    "No managed service accounts yet. Create one with `/veeam-sa create NAME`."
                )
            ],
        }
    icons = {
        "valid": ":large_green_circle:",
        "expiring": ":large_yellow_circle:",
        "expired": ":red_circle:",
        "none": ":white_circle:",
    }
    lines = []
    for row in rows:
        expiry = row.get("end_at")
        when = (
            f"{slack_date(row['end_ts'], expiry[:10])} ({_when(row['days_left'])})"
            if expiry
            else "no secret held"
        )
        subs = ", ".join(f"`{s}`" for s in row.get("subscriptions") or []) or "—"
        if row.get("appliance_state"):
            subs += f" · Veeam: {row['appliance_state']}"
        if row.get("appliance_flag"):
            subs += f"\n      :warning: {row['appliance_flag']}"
        for old in row.get("retiring") or []:
            subs += f"\n      :hourglass: {_retiring_line(row['name'], old)}"
        lines.append(
            f"{icons.get(row['status'], '')} *`{row['name']}`* · {row['status']} · "
            f"secret `{row.get('hint') or '—'}…` {when}\n"
            f"      tenant `{row.get('tenant_id')}` · subscriptions {subs}"
        )
    sections: list[list[str]] = []
    chunk: list[str] = []
    for line in lines:
        if chunk and (
            len(chunk) == LIST_PER_SECTION or len("\n".join([*chunk, line])) > MAX_SECTION_TEXT
        ):
            sections.append(chunk)
            chunk = []
        chunk.append(line)
    if chunk:
        sections.append(chunk)
    shown_sections = sections[: LIST_MAX_BLOCKS - 2]
    shown = sum(len(c) for c in shown_sections)
    blocks: list[dict[str, Any]] = [
        _section(f"*Managed service accounts* ({len(rows)}), soonest expiry first")
    ]
    blocks += [_section("\n".join(c)) for c in shown_sections]
    if shown < len(lines):
        blocks.append(
            _context(
                f"…and {len(lines) - shown} more not shown. Use `/veeam-sa show NAME` for one account."
            )
        )
    return {"text": f"{len(rows)} managed service accounts", "blocks": blocks}


def _retiring_line(name: str, old: dict[str, Any]) -> str:
    return (
        f"old secret `{old.get('hint') or '?'}…` (expires "
        f"{slack_date(old['end_ts'], old['end_at'][:10])}) still live, retire it after "
        f"updating Veeam: `/veeam-sa retire {name}`"
    )


def account_detail(account: dict[str, Any], history: list[dict[str, Any]]) -> Payload:
    subs = account.get("subscriptions") or []
    roles = account.get("roles") or {}
    lines = [
        f"*`{account['name']}`* — {account.get('status', account.get('state'))}",
        f"Application (client) id `{account.get('app_id')}` · object id `{account.get('app_object_id')}`",
        f"Tenant {account.get('tenant_name') or ''} `{account.get('tenant_id')}`",
        f"Created by <@{account.get('created_by')}> on {str(account.get('created_at'))[:10]}",
    ]
    if account.get("appliance_id"):
        lines.append(
            f"Veeam appliance account `{account['appliance_id']}`: "
            f"{account.get('appliance_state') or 'not checked yet'}"
            + (
                f", secret expires {str(account.get('appliance_expiry'))[:10]}"
                if account.get("appliance_expiry")
                else ""
            )
        )
    if account.get("appliance_flag"):
        lines.append(f":warning: {account['appliance_flag']}")
    if account.get("end_at"):
        lines.append(
            f"Secret `{account.get('hint')}…` expires {slack_date(account['end_ts'], account['end_at'][:10])}"
        )
    for old in account.get("retiring") or []:
        lines.append(f":hourglass: {_retiring_line(account['name'], old)}")
    if subs:
        lines.append(
            "Roles:\n" + "\n".join(f"• `{s}`: {', '.join(roles.get(s, []))}" for s in subs)
        )
    events = [
        f"{r['at'][:16].replace('T', ' ')} · {r['action']} · {r['outcome']} · <@{r['actor']}>"
        if r["actor"].startswith(("U", "W"))
        else f"{r['at'][:16].replace('T', ' ')} · {r['action']} · {r['outcome']}"
        for r in history[-20:]
    ]
    blocks = [_section("\n".join(lines))]
    if events:
        blocks.append(_section("*History*\n" + "\n".join(events)))
    return {"text": f"Service account {account['name']}", "blocks": blocks}
