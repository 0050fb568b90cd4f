"""Block Kit pieces every message uses: sections, notes, errors, refusals, help, dates,
the step checklist, and escaping text for mrkdwn."""

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
        "• `/veeam-sa` — opens a form to create a service account\n"
        "• `/veeam-sa create prod-backup --subscription 11111111-2222-3333-4444-555555555555`\n"
        '• `/veeam-sa create dr-site --description "DR copy jobs"` — pick subscriptions after sign-in\n'
        "• `/veeam-sa create lean --roles least-privilege` — one custom role with only what "
        "Veeam needs, instead of Contributor\n"
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
    "confirm": "Veeam confirms the permissions",
}
STEP_ICONS = {
    "todo": ":white_circle:",
    "running": ":hourglass_flowing_sand:",
    "done": ":white_check_mark:",
    "failed": ":x:",
    "skipped": ":heavy_minus_sign:",
    "rolled_back": ":leftwards_arrow_with_hook:",
}
#: The state of each step in words, beside its emoji: screen readers read emoji names
#: ("white check mark"), which say nothing about the step.
STEP_WORDS = {
    "todo": "to do",
    "running": "in progress",
    "done": "done",
    "failed": "failed",
    "skipped": "skipped",
    "rolled_back": "rolled back",
}


def slack_date(ts: float, fallback: str) -> str:
    """A date Slack renders in the reader's own time zone."""
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{fallback}>"


def checklist(steps: dict[str, str]) -> str:
    lines = []
    for key, label in STEP_LABELS.items():
        if key in ("handoff", "sign_in_again", "confirm") and key not in steps:
            continue  # only with a VBAzure appliance / a tenant that asks for a second sign-in
        status = steps.get(key, "todo")
        if status not in STEP_ICONS:
            status = "todo"
        lines.append(f"{STEP_ICONS[status]} {STEP_WORDS[status]} — {label}")
    return "\n".join(lines)


def escape(text: object) -> str:
    """Text that did not come from the bot (Microsoft, the appliance, a user), made safe for
    mrkdwn: Slack reads `<…>` as mentions, channel pings and links, so `&`, `<` and `>` are
    escaped as Slack's formatting reference asks. Formatting marks stay literal text."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def note(text: str, account: str | None = None) -> Payload:
    """A plain message. Its `text` is what a notification shows (on a phone, nothing else):
    with `account`, it names the account when the message itself does not."""
    fallback = text
    if account and account not in text:
        fallback = f"{account}: {text}"
    return {"text": fallback, "blocks": [_section(text)]}


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """`1 managed service account`, `2 managed service accounts`."""
    return f"{count} {singular if count == 1 else (plural_form or singular + 's')}"


def slack_time(ts: float, fallback: str) -> str:
    """A time of day Slack renders in the reader's own time zone."""
    return f"<!date^{int(ts)}^{{time}}|{fallback}>"


# -- prerequisites, subscription choice, summary -----------------------------------------


def is_certificate(row: dict[str, Any]) -> bool:
    """Whether an account (or a view of one) signs in with a certificate."""
    return row.get("credential") == "certificate" or row.get("kind") == "certificate"


def credential_noun(row: dict[str, Any]) -> str:
    """What the account signs in with, as the messages name it."""
    return "certificate" if is_certificate(row) else "client secret"
