"""Block Kit for the App Home: the managed accounts (a page of them) with Renew, the flows in
progress and whom each waits for, or — for people who may not see the accounts — what they
may see and whom to ask.

A Home tab holds at most 100 blocks (https://docs.slack.dev/reference/block-kit/blocks:
"100 blocks in modals or Home tabs"): one section per account, `PER_PAGE` of them a page,
leaves room for the rest (`MAX_FIXED_BLOCKS`), and Previous / Next buttons page through.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bot.slack import ids
from bot.slack.blocks.accounts import group_words
from bot.slack.blocks.common import MAX_SECTION_TEXT, _context, _section, escape, slack_date
from bot.slack.blocks.health import health_line

MAX_HOME_BLOCKS = 100
PER_PAGE = 30
#: Blocks around the accounts: header, context, notice, flows (title and list), divider,
#: accounts title, pager, footer — fewer than this.
MAX_FIXED_BLOCKS = 12
assert PER_PAGE + MAX_FIXED_BLOCKS <= MAX_HOME_BLOCKS
#: Flows listed by name; more are counted.
MAX_FLOW_LINES = 20

STATUS_WORDS = {
    "valid": ":large_green_circle: valid",
    "expiring": ":large_orange_circle: expiring",
    "expired": ":red_circle: expired",
    "none": ":white_circle: no secret",
}

KIND_WORDS = {"create": "Creating", "renew": "Renewing", "retire": "Removing the old secret of"}


def waiting_for(flow: dict[str, Any]) -> str:
    """Who or what a flow in progress is waiting for, in words."""
    who = f"<@{flow['requester']}>"
    state = flow.get("state")
    if state == "starting":
        return "starting"
    if state == "awaiting_sign_in":
        return f"waiting for {who} to sign in to Microsoft"
    if state == "choosing":
        return f"waiting for {who} to choose subscriptions"
    if state == "choosing_tenant":
        return f"waiting for {who} to choose the tenant"
    if state == "blocked":
        return "waiting for the missing rights (Recheck in its thread)"
    if state in ("signed_in", "checking"):
        return "checking permissions"
    if state == "provisioning":
        return "creating the application, secret and roles"
    if state == "renewing":
        return "adding the new secret"
    if state == "retiring":
        return "removing the old secret"
    return str(state or "in progress")


def _flow_line(flow: dict[str, Any]) -> str:
    verb = KIND_WORDS.get(str(flow.get("kind")), "Working on")
    line = f"• {verb} `{flow['name']}` — {waiting_for(flow)}"
    started = _ts(flow.get("created_at"))
    if started is not None:
        line += " · started " + slack_date(started, str(flow.get("created_at"))[:16] + " UTC")
    return line


def _ts(iso: Any) -> float | None:
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(str(iso))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _appliance(account: dict[str, Any], appliance: bool) -> str:
    if account.get("appliance_flag"):
        return f":warning: {escape(account['appliance_flag'])}"
    if account.get("appliance_state"):
        return f"Veeam: {escape(account['appliance_state'])}"
    if account.get("handoff") == "done":
        return "Veeam: has the secret (state not read yet)"
    return "Veeam: not reported yet" if appliance else "Veeam: no appliance connected"


def _account_block(account: dict[str, Any], *, renew: bool, appliance: bool) -> dict[str, Any]:
    status = STATUS_WORDS.get(account["status"], f":white_circle: {escape(account['status'])}")
    parts = [f"*`{account['name']}`* — {status}"]
    if account.get("end_ts") is not None:
        when = slack_date(account["end_ts"], str(account.get("end_at") or "")[:10])
        verb = "expired" if account["status"] == "expired" else "expires"
        noun = "certificate" if account.get("credential") == "certificate" else "secret"
        parts.append(f"{noun} {verb} {when}")
    if group_words(account):
        parts.append(group_words(account))
    parts.append(_appliance(account, appliance))
    if account.get("appliance_id") and account.get("permissions_state"):
        state = ", ".join(str(s) for s in account["permissions_state"])
        parts.append(f"Veeam's permission check: {escape(state)}")
    health = health_line(account)
    if health:
        parts.append(health)
    block = _section(" · ".join(parts)[:MAX_SECTION_TEXT])
    if renew and account.get("state") == "active":
        block["accessory"] = {
            "type": "button",
            "action_id": ids.renew_action(account["id"]),
            "text": {"type": "plain_text", "text": "Renew"},
            "value": str(account["id"]),
            "accessibility_label": f"Renew {account['name']}"[:75],
        }
    return block


def pages(total: int) -> int:
    return max(1, -(-total // PER_PAGE))


def _mentions(admins: tuple[str, ...]) -> str:
    shown = [f"<!subteam^{a}>" if a.startswith("S") else f"<@{a}>" for a in admins[:5]]
    return ", ".join(shown) + (" …" if len(admins) > 5 else "")


def home_view(
    *,
    is_admin: bool,
    may_list: bool,
    accounts: list[dict[str, Any]],
    flows: list[dict[str, Any]],
    page: int,
    admins: tuple[str, ...],
    appliance: bool,
    now_ts: float,
    notice: str | None = None,
) -> dict[str, Any]:
    """The Home tab of one person: `page` (from 0) of `accounts`, the `flows` they may see."""
    last = pages(len(accounts)) - 1
    page = min(max(page, 0), last)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Veeam service accounts"}},
        _context(
            f"{len(accounts)} managed account{'s' if len(accounts) != 1 else ''} · "
            f"{len(flows)} in progress · updated {slack_date(now_ts, 'just now')}"
        ),
    ]
    if notice:
        blocks.append(_section(notice))
    title = "*In progress*" if is_admin else "*Your requests in progress*"
    if flows:
        lines = [_flow_line(f) for f in flows[:MAX_FLOW_LINES]]
        if len(flows) > MAX_FLOW_LINES:
            lines.append(f"…and {len(flows) - MAX_FLOW_LINES} more.")
        text = title + "\n" + "\n".join(lines)
        while len(text) > MAX_SECTION_TEXT and len(lines) > 1:
            lines.pop(-2 if lines[-1].startswith("…") else -1)
            text = title + "\n" + "\n".join(lines)
        blocks.append(_section(text))
    else:
        blocks.append(_section(title + "\nNothing is in progress."))
    blocks.append({"type": "divider"})
    if not may_list:
        blocks.append(
            _section(
                "The list of managed accounts is for the bot's admins. "
                f"Ask one of them for what you need: {_mentions(admins)}."
            )
        )
        blocks.append(_context("`/veeam-sa help` shows what you can do."))
        return _view(blocks, page)
    start = page * PER_PAGE
    shown = accounts[start : start + PER_PAGE]
    if not accounts:
        blocks.append(
            _section(
                "*Accounts*\nNo managed service accounts yet."
                + (" `/veeam-sa` opens the form to create one." if is_admin else "")
            )
        )
    else:
        blocks.append(_section("*Accounts* — soonest expiry first"))
        blocks.extend(_account_block(a, renew=is_admin, appliance=appliance) for a in shown)
    if last > 0:
        buttons = []
        if page > 0:
            buttons.append(_page_button("prev", "◀ Previous", page - 1))
        if page < last:
            buttons.append(_page_button("next", "Next ▶", page + 1))
        blocks.append({"type": "actions", "block_id": "home_pages", "elements": buttons})
        blocks.append(
            _context(
                f"Page {page + 1} of {last + 1} · accounts {start + 1}–{start + len(shown)} "
                f"of {len(accounts)}"
            )
        )
    if is_admin:
        blocks.append(
            _context("`/veeam-sa` opens the create form · `/veeam-sa help` lists every command.")
        )
    return _view(blocks, page)


def _page_button(which: str, label: str, page: int) -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": f"{ids.ACTION_HOME_PAGE}.{which}",
        "text": {"type": "plain_text", "text": label},
        "value": str(page),
    }


def _view(blocks: list[dict[str, Any]], page: int) -> dict[str, Any]:
    assert len(blocks) <= MAX_HOME_BLOCKS
    return {
        "type": "home",
        "callback_id": "veeam_sa.home",
        "private_metadata": json.dumps({"page": page}),
        "blocks": blocks,
    }
