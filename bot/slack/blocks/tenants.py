"""The tenant chooser: after sign-in, when the account reaches more than one tenant and the
command named none, each tenant with whether the account may register applications there
(VBAzure's Scope step shows the same), and a button to create the account there."""

from __future__ import annotations

from typing import Any

from bot.slack import ids
from bot.slack.blocks.common import Payload, _section, escape
from bot.slack.blocks.create import CHECK_ICONS

#: Tenants offered as buttons; past it the person names the tenant with `--tenant`.
MAX_TENANT_CHOICES = 20


def tenant_label(choice: dict[str, Any]) -> str:
    """A tenant as a line of text: name, default domain and id (escaped)."""
    name = escape(choice.get("name") or choice.get("domain") or "tenant")
    domain = f"{escape(choice['domain'])}, " if choice.get("domain") else ""
    return f"*{name}* ({domain}`{escape(choice['id'])}`)"


def tenant_chooser(
    *, flow_id: str, requester: str, name: str, choices: list[dict[str, Any]], more: int = 0
) -> Payload:
    """One section per tenant: whether the account is at home or a guest there, whether it
    may register applications (and why), and a "Create here" button (requester only)."""
    blocks: list[dict[str, Any]] = [
        _section(
            f"<@{requester}>, this account reaches {len(choices) + more} tenants. Choose the "
            f"one to create `{escape(name)}` in; a tenant other than the one you signed in to "
            "takes one more sign-in, there."
        )
    ]
    for i, choice in enumerate(choices[:MAX_TENANT_CHOICES]):
        where = "your home tenant" if choice.get("home") else "you are a guest here"
        right = choice.get("right")
        verdict = {
            True: "may register applications",
            False: "may not register applications",
            None: "registering applications: not known yet",
        }[right]
        blocks.append(
            {
                **_section(
                    f"{CHECK_ICONS[right]} {tenant_label(choice)} — {where}\n{verdict}: "
                    f"{escape(choice.get('reason') or '')}"
                ),
                "block_id": f"tenant_{i}",
                "accessory": {
                    "type": "button",
                    "action_id": ids.ACTION_CHOOSE_TENANT,
                    "text": {"type": "plain_text", "text": "Create here"},
                    "value": f"{flow_id}:{choice['id']}",
                },
            }
        )
    if more:
        blocks.append(_section(f"…and {more} more: name one with `--tenant`."))
    return {
        "text": f"Choose the tenant for {name}",
        "blocks": blocks,
    }


def tenant_chosen(*, by: str, choice: dict[str, Any], name: str) -> Payload:
    """The chooser once used: which tenant, chosen by whom."""
    text = f":white_check_mark: <@{by}> chose tenant {tenant_label(choice)} for `{escape(name)}`."
    return {"text": f"Tenant chosen for {name}", "blocks": [_section(text)]}
