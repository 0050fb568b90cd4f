"""Block Kit for `/veeam-sa list` and `/veeam-sa show`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bot.slack.blocks.common import (
    MAX_SECTION_TEXT,
    Payload,
    _context,
    _section,
    escape,
    is_certificate,
    plural,
    slack_date,
)
from bot.slack.blocks.expiry import _when
from bot.slack.blocks.health import health_line

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
        if group_words(row):
            subs = f"{group_words(row)}: {subs}"
        if row.get("appliance_state"):
            subs += f" · Veeam: {row['appliance_state']}"
        if row.get("appliance_flag"):
            subs += f"\n      :warning: {row['appliance_flag']}"
        for old in row.get("retiring") or []:
            subs += f"\n      :hourglass: {_retiring_line(row['name'], old)}"
        health = health_line(row)
        if health:
            subs += f"\n      {health}"
        lines.append(
            f"{icons.get(row['status'], '')} *`{row['name']}`* · {row['status']} · "
            f"{'certificate' if is_certificate(row) else 'secret'} `{row.get('hint') or '—'}…` {when}\n"
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
        _section(f"*{plural(len(rows), 'managed service account')}*, soonest expiry first")
    ]
    blocks += [_section("\n".join(c)) for c in shown_sections]
    if shown < len(lines):
        blocks.append(
            _context(
                f"…and {len(lines) - shown} more not shown. Use `/veeam-sa show NAME` for one account."
            )
        )
    return {"text": plural(len(rows), "managed service account"), "blocks": blocks}


def group_words(account: dict[str, Any]) -> str:
    """"management group `id` (Name)" for an account made for a management group, else ""."""
    group = account.get("management_group")
    if not isinstance(group, dict) or not group.get("id"):
        return ""
    name = f" {escape(str(group['name']))}" if group.get("name") else ""
    return f"management group `{group['id']}`{name}"


def nested_words(group: dict[str, Any]) -> str:
    nested = group.get("nested") or []
    if not nested:
        return ""
    return (
        "\nNested groups "
        + ", ".join(f"`{g}`" for g in nested)
        + ": their subscriptions are not followed (as in Veeam); the roles at the group still "
        "reach them in Azure"
    )


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
        f"Created by <@{account.get('created_by')}> on {_when_at(str(account.get('created_at')))}",
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
    if account.get("appliance_id") and account.get("permissions_state"):
        state = ", ".join(str(s) for s in account["permissions_state"])
        checked = str(account.get("permissions_checked_at") or "")[:16].replace("T", " ")
        missing = [
            f
            for f in account.get("permissions_detail") or []
            if isinstance(f, dict) and f.get("missing")
        ]
        lines.append(
            f"Veeam's permission check: {escape(state)}"
            + (f" (asked {checked} UTC)" if checked else "")
            + (
                "; missing on " + ", ".join(f"`{f.get('id')}`" for f in missing[:10])
                if missing
                else ""
            )
        )
    custom = account.get("custom_role")
    if isinstance(custom, dict) and custom.get("name"):
        lines.append(
            f"Least privilege: custom role `{escape(custom['name'])}` (`{custom.get('id')}`)"
        )
    if account.get("appliance_flag"):
        lines.append(f":warning: {account['appliance_flag']}")
    if account.get("end_at"):
        lines.append(
            ("Certificate (thumbprint) " if is_certificate(account) else "Secret ")
            + f"`{account.get('hint')}…` expires {slack_date(account['end_ts'], account['end_at'][:10])}"
        )
    for old in account.get("retiring") or []:
        lines.append(f":hourglass: {_retiring_line(account['name'], old)}")
    health = health_line(account)
    lines.append(f"Health: {health}" if health else "Health: not checked yet")
    group = account.get("management_group")
    if isinstance(group, dict) and group.get("id"):
        scope = next((k for k in roles if k.startswith("/")), None)
        lines.append(
            f"Roles at {group_words(account)}: {', '.join(roles.get(scope, [])) if scope else '—'}"
            + (
                "\nSubscriptions in the group now (handed to Veeam): "
                + ", ".join(f"`{s}`" for s in subs)
                if subs
                else ""
            )
            + nested_words(group)
        )
    elif subs:
        lines.append(
            "Roles:\n" + "\n".join(f"• `{s}`: {', '.join(roles.get(s, []))}" for s in subs)
        )
    events = [history_line(r) for r in history[-20:]]
    blocks = [_section("\n".join(lines))]
    if events:
        blocks.append(_section("*History*\n" + "\n".join(events)))
    return {"text": f"Service account {account['name']}", "blocks": blocks}


#: What each audited step means, in words; `{who}` is the person (a Slack mention, which
#: Slack shows as their name), `{upn}` the Microsoft account, `{end}` a secret's expiry.
HISTORY_WORDS: dict[str, str] = {
    "create.requested": "{who} asked for it",
    "sign_in.started": "sign-in code sent to {who}",
    "sign_in.completed": "{who} signed in{upn}",
    "sign_in.again": "the tenant asked {who} to sign in once more",
    "sign_in.failed": "{who}'s sign-in failed",
    "sign_in.expired": "{who}'s sign-in code expired unused",
    "create.prerequisites": "rights missing for {who}",
    "azure.application": "application created",
    "azure.secret": "secret added, expires {end}",
    "azure.role_assignments": "roles assigned",
    "azure.rollback": "what was created was rolled back",
    "create.completed": "ready",
    "create.failed": "creation failed",
    "create.cancelled": "{who} cancelled the creation",
    "create.expired": "closed after waiting a day",
    "renew.requested": "{who} asked for a new secret",
    "renew.completed": "secret renewed",
    "renew.failed": "renewal failed; the old secret stayed",
    "renew.cancelled": "{who} cancelled the renewal",
    "retire.requested": "{who} asked to remove the old secret",
    "retire.completed": "old secret removed",
    "retire.failed": "removing the old secret failed",
    "appliance.handoff": "handed to the Veeam appliance",
    "appliance.import": "imported from the Veeam appliance",
    "secret.show": "secret read on the bot's host",
    "key.rotated": "encryption key rotated",
}
#: Outcomes that the words above already say.
_PLAIN_OUTCOMES = {"ok", "created", "accepted", "pending", "done", "cancelled", "expired"}


def history_line(row: dict[str, Any]) -> str:
    """One audit row as a person would say it, at a time Slack shows in the reader's zone:
    "<date> · @alice signed in as alice@contoso.com" rather than "sign_in.completed"."""
    actor = str(row.get("actor") or "")
    who = f"<@{actor}>" if actor[:1] in ("U", "W") else escape(actor or "the bot")
    try:
        detail = json.loads(row.get("detail") or "{}")
    except (TypeError, ValueError):
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    action, outcome = str(row.get("action") or ""), str(row.get("outcome") or "")
    end = "—"
    if detail.get("end_at"):
        try:
            end_at = datetime.fromisoformat(str(detail["end_at"]).replace("Z", "+00:00"))
            end_at = end_at if end_at.tzinfo else end_at.replace(tzinfo=UTC)
            end = slack_date(end_at.timestamp(), end_at.date().isoformat())
        except ValueError:
            end = escape(detail["end_at"])
    upn = f" as {escape(detail['entra_upn'])}" if detail.get("entra_upn") else ""
    words = HISTORY_WORDS.get(action)
    if words is None:
        verb = action.split(".", 1)[0].replace("_", " ")
        if action.endswith(".refused"):
            words = "{who} was refused (" + escape(verb) + ")"
        elif action.endswith(".cancel_requested"):
            words = "{who} asked to stop the " + escape(verb)
        else:
            words = escape(action.replace("_", " ").replace(".", ": "))
    text = words.replace("{who}", who).replace("{upn}", upn).replace("{end}", end)
    if outcome and outcome not in _PLAIN_OUTCOMES and outcome not in ("refused", "failed"):
        text += f" ({escape(outcome.replace('_', ' '))})"
    return f"{_when_at(str(row.get('at') or ''))} · {text}"


def _when_at(at: str) -> str:
    try:
        moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return escape(at[:16])
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return slack_date(moment.timestamp(), moment.strftime("%Y-%m-%d %H:%M UTC"))
