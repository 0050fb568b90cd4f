"""Block Kit builders: pure functions from data to message payloads.

Each builder returns `{"text": ..., "blocks": [...]}` — `text` is the notification and
screen-reader fallback. Nothing here talks to Slack or the database.
"""

from __future__ import annotations

from typing import Any

from bot.grammar import USAGE

Payload = dict[str, Any]

MAX_SECTION_TEXT = 3000


def _section(text: str) -> dict[str, Any]:
    if len(text) > MAX_SECTION_TEXT:
        text = text[: MAX_SECTION_TEXT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text[:MAX_SECTION_TEXT]}]}


def help_message() -> Payload:
    grammar = "\n".join(
        f"`{USAGE[v]}`" for v in ("create", "list", "show", "renew", "cancel", "help")
    )
    examples = (
        "*Examples*\n"
        "• `/veeam-sa create prod-backup --subscription 11111111-2222-3333-4444-555555555555`\n"
        '• `/veeam-sa create dr-site --description "DR copy jobs"` — pick subscriptions after sign-in\n'
        "• `/veeam-sa renew prod-backup`\n"
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
    "checks": "Check permissions",
    "application": "Create the application",
    "principal": "Create the service principal",
    "secret": "Add the client secret",
    "roles": "Assign roles",
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
        details += f"\nDescription: {description}"
    blocks: list[dict[str, Any]] = [_section(head), _context(details), _section(checklist(steps))]
    if summary:
        blocks.append({"type": "divider"})
        blocks.append(_section("\n".join(summary)))
    text = f"Service account {name} requested by <@{requester}>"
    if outcome:
        text += f": {outcome}"
    return {"text": text, "blocks": blocks}


def device_code_message(
    *, user_code: str, verification_uri: str, expires_at: float, flow_id: str, name: str
) -> Payload:
    """The sign-in code: for the requester's eyes only (ephemeral or DM)."""
    from bot import ids

    expiry = slack_date(expires_at, "in 15 minutes")
    return {
        "text": f"Sign in to Microsoft with code {user_code} at {verification_uri} (expires {expiry}).",
        "blocks": [
            _section(
                f"*Sign in to Microsoft to create `{name}`*\n"
                f"Open the link and enter this code (it expires {expiry}):"
            ),
            _section(f"```{user_code}```"),
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": ids.ACTION_OPEN_DEVICE_LOGIN,
                        "text": {"type": "plain_text", "text": "Open microsoft.com/devicelogin"},
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
    from bot import ids

    lines = [f"{CHECK_ICONS[app_right]} Register applications in the tenant — {app_reason}"]
    for sub in subscriptions:
        label = f"`{sub['id']}`" + (f" {sub['name']}" if sub.get("name") else "")
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
    from bot import ids

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
