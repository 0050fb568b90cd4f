"""Block Kit for the create form (a modal) and for the subscription choice once it is made."""

from __future__ import annotations

import json
from typing import Any

from bot.slack import ids
from bot.slack.blocks.common import Payload, _context, _section, escape
from bot.slack.grammar import MAX_NAME

#: Slack keeps what a person types within a plain_text_input's `max_length` as they type:
#: the one rule of the form Slack can check before the submission.
MAX_DESCRIPTION = 1024
MAX_SUBSCRIPTIONS_TEXT = 3000


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def _field(
    block_id: str,
    label: str,
    *,
    hint: str,
    max_length: int,
    placeholder: str,
    initial: str | None = None,
    optional: bool = False,
    multiline: bool = False,
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": block_id,
        "max_length": max_length,
        "placeholder": _plain(placeholder),
    }
    if multiline:
        element["multiline"] = True
    if initial:
        element["initial_value"] = initial[:max_length]
    return {
        "type": "input",
        "block_id": block_id,
        "label": _plain(label),
        "hint": _plain(hint),
        "optional": optional,
        "element": element,
    }


def create_form(
    *,
    channel_id: str,
    name: str | None = None,
    description: str | None = None,
    subscriptions: tuple[str, ...] | list[str] = (),
    tenant: str | None = None,
) -> dict[str, Any]:
    """The modal `/veeam-sa` (or `create` without a NAME) opens. The channel the flow will
    report in travels in `private_metadata`; what the command already named is filled in."""
    return {
        "type": "modal",
        "callback_id": ids.VIEW_CREATE,
        "private_metadata": json.dumps({"channel": channel_id}),
        "title": _plain("New service account"),
        "submit": _plain("Create"),
        "close": _plain("Cancel"),
        "blocks": [
            _section(
                "Creates a Veeam Backup for Microsoft Azure service account: an Entra "
                "application with a one-year client secret and its role assignments. "
                f"Progress goes to <#{channel_id}>; the sign-in code comes only to you."
            ),
            _field(
                ids.FORM_NAME,
                "Name",
                hint=(
                    f"Veeam's rule: at most {MAX_NAME} characters, Latin letters, digits, "
                    "_ and - only."
                ),
                max_length=MAX_NAME,
                placeholder="prod-backup",
                initial=name,
            ),
            _field(
                ids.FORM_DESCRIPTION,
                "Description",
                hint="Shown with the account in Slack and in Veeam.",
                max_length=MAX_DESCRIPTION,
                placeholder="What this account protects",
                initial=description,
                optional=True,
                multiline=True,
            ),
            _field(
                ids.FORM_SUBSCRIPTIONS,
                "Subscription ids",
                hint=(
                    "One or more, separated by spaces, commas or new lines. Leave empty to "
                    "choose from the subscriptions you can see after you sign in."
                ),
                max_length=MAX_SUBSCRIPTIONS_TEXT,
                placeholder="11111111-2222-3333-4444-555555555555",
                initial="\n".join(subscriptions) or None,
                optional=True,
                multiline=True,
            ),
            _field(
                ids.FORM_TENANT,
                "Tenant",
                hint=(
                    "A tenant id or domain your account reaches (as a member or a guest). "
                    "Leave empty for the tenant you sign in to."
                ),
                max_length=253,
                placeholder="contoso.onmicrosoft.com",
                initial=tenant,
                optional=True,
            ),
        ],
    }


def form_channel(view: dict[str, Any]) -> str | None:
    """The channel a submitted create form was opened from (its `private_metadata`)."""
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return None
    channel = meta.get("channel") if isinstance(meta, dict) else None
    return channel if isinstance(channel, str) and channel[:1] in "CGD" else None


def form_values(view: dict[str, Any]) -> dict[str, str | None]:
    """What the person typed in each field of a submitted create form."""
    values = (view.get("state") or {}).get("values") or {}
    out: dict[str, str | None] = {}
    for field in (ids.FORM_NAME, ids.FORM_DESCRIPTION, ids.FORM_SUBSCRIPTIONS, ids.FORM_TENANT):
        entry = (values.get(field) or {}).get(field) or {}
        value = entry.get("value") if isinstance(entry, dict) else None
        out[field] = value if isinstance(value, str) else None
    return out


def form_refused(text: str) -> dict[str, Any]:
    """The form, replaced by why it cannot be used (nothing was started)."""
    return {
        "type": "modal",
        "callback_id": ids.VIEW_CREATE,
        "title": _plain("New service account"),
        "close": _plain("Close"),
        "blocks": [_section(f":no_entry: {text}\nNothing was started.")],
    }


def subscriptions_chosen(
    *, by: str, chosen: list[dict[str, Any]], name: str | None = None
) -> Payload:
    """The subscription chooser once used: what was chosen and by whom, no controls left."""
    lines = [
        f"• {escape(s['name'])} `{s['id']}`" if s.get("name") else f"• `{s['id']}`" for s in chosen
    ]
    count = len(chosen)
    what = f" for `{name}`" if name else ""
    head = (
        f":ballot_box_with_check: <@{by}> chose {count} "
        f"subscription{'s' if count != 1 else ''}{what}:"
    )
    text = f"{head}\n" + "\n".join(lines)
    return {
        "text": f"<@{by}> chose {count} subscription{'s' if count != 1 else ''}{what}",
        "blocks": [_section(text), _context("Checking permissions on them next.")],
    }
