"""Block Kit for the create journey: the parent message, the sign-in code, the
prerequisites and the subscription chooser."""

from __future__ import annotations

from typing import Any

from bot.slack import ids
from bot.slack.blocks.common import (
    Payload,
    _context,
    _section,
    checklist,
    escape,
    slack_date,
    slack_time,
)


def create_parent(
    *,
    name: str,
    requester: str,
    subscriptions: list[str],
    description: str | None,
    steps: dict[str, str],
    outcome: str | None = None,
    summary: list[str] | None = None,
    management_group: str | None = None,
) -> Payload:
    """The channel message of one creation: who asked, for what, and a live checklist."""
    subs = ", ".join(f"`{s}`" for s in subscriptions) if subscriptions else "_chosen after sign-in_"
    head = f"*Service account `{name}`* — requested by <@{requester}>"
    if outcome:
        head += f"\n{outcome}"
    details = f"Subscriptions: {subs}"
    if management_group:
        details = f"Management group: `{management_group}`" + (
            f" (subscriptions now: {subs})" if subscriptions else ""
        )
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
    expiry = slack_date(expires_at, "in 15 minutes")
    return {
        "text": f"Sign in to Microsoft to {purpose} {name} with code {user_code} at "
        f"{verification_uri} (expires {expiry}).",
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


CHECK_ICONS = {True: ":white_check_mark:", False: ":x:", None: ":grey_question:"}
MAX_OPTIONS = 100


def prerequisites_message(
    *,
    flow_id: str,
    app_right: bool | None,
    app_reason: str,
    subscriptions: list[dict[str, Any]],
    blocked: bool,
    name: str | None = None,
    checked_at: float | None = None,
    again: bool = False,
    closed: str | None = None,
) -> Payload:
    """Like VBAzure's Scope step: one line per check, the fix for each failure, Recheck.
    `again` marks a recheck (the head says when it ran and what is still missing);
    `closed` retires the Recheck button with the reason the creation ended."""
    lines = [f"{CHECK_ICONS[app_right]} Register applications in the tenant — {app_reason}"]
    missing = ["the right to register applications"] if app_right is False else []
    for sub in subscriptions:
        label = (sub.get("label") or f"`{sub['id']}`") + (
            f" {escape(sub['name'])}" if sub.get("name") else ""
        )
        lines.append(f"{CHECK_ICONS[sub['ok']]} Assign roles on {label} — {sub['reason']}")
        if sub["ok"] is False:
            missing.append(f"role assignment rights on {label}")
    when = slack_time(checked_at, "just now") if checked_at is not None else None
    head = "*Prerequisites*" + (f" for `{name}`" if name else "")
    if blocked and again and when:
        head += f" — checked at {when}, still missing: " + "; ".join(missing or ["see below"])
    elif blocked:
        head += " — something is missing"
    elif when:
        head += f" — all met (checked at {when})"
    blocks = [_section(head + "\n" + "\n".join(lines))]
    if blocked and closed:
        blocks.append(_context(closed))
    elif blocked:
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
    about = f" for {name}" if name else ""
    if blocked:
        text = f"Prerequisites{about}: still missing " + "; ".join(missing or ["a right"])
        if closed:
            text += f" ({closed})"
    else:
        text = f"Prerequisites{about}: all met"
    return {"text": text, "blocks": blocks}


def code_message_closed(*, name: str, purpose: str, state: str) -> Payload:
    """The sign-in code's message once its flow is past sign-in: no code, no Cancel."""
    words = {
        "signed_in": ":white_check_mark: Signed in; this code is used and no longer works.",
        "cancelled": ":no_entry_sign: Cancelled; this code no longer works.",
        "cancelling": ":no_entry_sign: Cancel requested: it stops at its next step, and the "
        "thread says what was undone.",
        "expired": ":hourglass: This code expired; run the command again for a fresh one.",
        "failed": ":x: The sign-in failed (the thread says why); this code no longer works.",
    }
    text = f"*Sign in to Microsoft to {purpose} `{name}`*\n" + words.get(
        state, f"This sign-in has ended ({state.replace('_', ' ')}); nothing to cancel."
    )
    return {
        "text": f"Sign-in for {name}: " + words.get(state, f"ended ({state})").split(" ", 1)[1],
        "blocks": [_section(text)],
    }


def subscription_chooser(
    *,
    flow_id: str,
    requester: str,
    subscriptions: list[dict[str, Any]],
    groups: list[dict[str, Any]] | None = None,
) -> Payload:
    """A multi-select of the subscriptions the account can see, and Create (requester only);
    with `groups` (each `{"id", "name", "value"}`), the management groups it can see too, in
    an option group of their own."""
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
    shown_groups = (groups or [])[:MAX_OPTIONS]
    select: dict[str, Any] = {
        "type": "multi_static_select",
        "action_id": ids.ACTION_CHOOSE_SUBSCRIPTIONS,
        "placeholder": {"type": "plain_text", "text": "Subscriptions"},
        "options": options,
    }
    if shown_groups:
        group_options = [
            {
                "text": {"type": "plain_text", "text": str(g.get("name") or g["id"])[:75]},
                "value": str(g["value"])[:150],
                "description": {"type": "plain_text", "text": f"management group {g['id']}"[:75]},
            }
            for g in shown_groups
        ]
        del select["options"]
        select["placeholder"]["text"] = "Subscriptions, or one management group"
        select["option_groups"] = [
            *([{"label": {"type": "plain_text", "text": "Subscriptions"}, "options": options}]
              if options else []),
            {"label": {"type": "plain_text", "text": "Management groups"}, "options": group_options},
        ]
        blocks.append(
            _context(
                "Or one management group: roles at its scope, and Veeam is given its direct "
                "subscriptions, now and as they change (not those of its nested groups): "
                + ", ".join(f"`{g['id']}`" for g in shown_groups)
            )
        )
    if options or shown_groups:
        blocks.append(
            {
                "type": "actions",
                "block_id": "choose",
                "elements": [
                    select,
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


#: The Azure portal of each cloud: each national cloud has its own ("Azure portal for US
#: Government https://portal.azure.us", "Azure portal China operated by 21Vianet
#: https://portal.azure.cn", Microsoft identity platform, National clouds:
#: https://learn.microsoft.com/entra/identity-platform/authentication-national-cloud).
PORTAL_HOSTS = {
    "AzureCloud": "https://portal.azure.com",
    "AzureUSGovernment": "https://portal.azure.us",
    "AzureChinaCloud": "https://portal.azure.cn",
}


def portal_app_url(cloud: str, tenant_id: str, app_id: str) -> str:
    """The application's page (App registrations → Overview) in its cloud's Azure portal,
    in its own tenant's directory."""
    host = PORTAL_HOSTS.get(cloud, PORTAL_HOSTS["AzureCloud"])
    return (
        f"{host}/{tenant_id}/#view/Microsoft_AAD_RegisteredApps/ApplicationMenuBlade/"
        f"~/Overview/appId/{app_id}"
    )


def next_steps(*, name: str, handed_off: bool, appliance_failed: bool = False) -> str:
    """What the person does next with a new account: nothing when the appliance has it,
    else how to put the secret into Veeam by hand."""
    if handed_off:
        return (
            "*Next:* nothing to do — Veeam Backup for Microsoft Azure already has this account "
            "(*Configuration → Service Accounts*). Warnings come to this channel before the "
            "secret expires."
        )
    lead = (
        "*Next:* the hand-off to Veeam failed (see the thread): retry it with "
        f"`/veeam-sa sync {name}`, or add the account by hand:"
        if appliance_failed
        else "*Next:* add it to Veeam Backup for Microsoft Azure:"
    )
    return (
        f"{lead}\n"
        f"1. On the bot's host run `veeam-sa-bot secret show {name}`: it prints the client "
        "secret (the bot never shows it in Slack).\n"
        "2. In Veeam Backup for Microsoft Azure open *Configuration → Service Accounts*, "
        "add an account that uses an existing application, and enter the application "
        "(client) id, the tenant id and that secret."
    )
