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
