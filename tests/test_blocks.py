"""Every Block Kit builder stays within Slack's rules at the extremes of its input.

The rest of the suite sends typical payloads through the strict Slack double; here each
builder gets the longest names, most subscriptions and longest texts the bot accepts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.flows import expiry
from bot.slack import blocks, ids
from tests.fakes.blockkit import block_errors

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
NAME = "N" * 255  # the longest NAME the grammar accepts
GUID = "3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
USER = "U0123456789A"
FLOW = "f" * 32


def due(n: int, threshold: int = 7) -> expiry.Due:
    return expiry.Due(
        secret_id=n,
        threshold=threshold,
        days_left=5,
        end_at=NOW + timedelta(days=5, minutes=n),
        account={
            "id": 10_000 + n,
            "name": f"{NAME[:-5]}{n:05d}",
            "app_id": GUID,
            "tenant_id": GUID,
            "tenant_name": "T" * 256,
            "created_by": USER,
        },
        hint="abc",
        channel="C0OPS",
    )


def subscriptions(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{n:08d}-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
            "name": "S" * 64,
            "ok": n % 3 != 0,
            "reason": "R" * 200,
        }
        for n in range(count)
    ]


def account_row(n: int) -> dict[str, Any]:
    return {
        "name": f"{NAME[:-4]}{n:04d}",
        "status": "expiring",
        "end_at": "2027-03-06T12:00:00+00:00",
        "end_ts": 1804248000,
        "days_left": 5,
        "hint": "abc",
        "tenant_id": GUID,
        "subscriptions": [GUID] * 20,
        "appliance_state": "A" * 100,
        "appliance_flag": "F" * 300,
    }


BUILDERS = {
    "help": lambda: blocks.help_message(),
    "error": lambda: blocks.error_message("E" * 10_000),
    "refusal": lambda: blocks.refusal_message("R" * 10_000),
    "note": lambda: blocks.note("x" * 10_000),
    "create parent": lambda: blocks.create_parent(
        name=NAME,
        requester=USER,
        subscriptions=[GUID] * 200,
        description="D" * 5000,
        steps={k: "done" for k in blocks.STEP_LABELS},
        outcome="O" * 5000,
        summary=["S" * 500] * 20,
    ),
    "device code": lambda: blocks.device_code_message(
        user_code="ABCD-EFGH",
        verification_uri="https://microsoft.com/devicelogin",
        expires_at=NOW.timestamp(),
        flow_id=FLOW,
        name=NAME,
        purpose="renew",
    ),
    "prerequisites": lambda: blocks.prerequisites_message(
        flow_id=FLOW,
        app_right=None,
        app_reason="A" * 500,
        subscriptions=subscriptions(300),
        blocked=True,
    ),
    "prerequisites rechecked": lambda: blocks.prerequisites_message(
        flow_id=FLOW,
        app_right=False,
        app_reason="A" * 500,
        subscriptions=[{**s, "ok": False} for s in subscriptions(300)],
        blocked=True,
        name=NAME,
        checked_at=NOW.timestamp(),
        again=True,
    ),
    "prerequisites closed": lambda: blocks.prerequisites_message(
        flow_id=FLOW,
        app_right=False,
        app_reason="A" * 500,
        subscriptions=subscriptions(300),
        blocked=True,
        name=NAME,
        closed="Closed: the creation was cancelled.",
    ),
    "code closed": lambda: blocks.code_message_closed(name=NAME, purpose="renew", state="expired"),
    "renewal done": lambda: blocks.note(
        blocks.renewal_done(
            name=NAME,
            new_hint="abc",
            new_key_id=GUID,
            end_ts=NOW.timestamp(),
            end_date="2028-03-01",
            old_hints=["xyz"] * 50,
            appliance_id=GUID,
        ),
        account=NAME,
    ),
    "subscription chooser": lambda: blocks.subscription_chooser(
        flow_id=FLOW, requester=USER, subscriptions=subscriptions(300)
    ),
    "expiry warning": lambda: blocks.expiry_warning(due(1), NOW),
    "expired warning": lambda: blocks.expiry_warning(due(1, threshold=0), NOW),
    "expiry follow-up": lambda: blocks.expiry_warning(due(1), NOW, follow_up=True),
    "renew parent": lambda: blocks.renew_parent(name=NAME, requester=USER, outcome="O" * 5000),
    "renewed": lambda: blocks.renewed_alert(
        name=NAME, by=USER, end_ts=NOW.timestamp(), end_date="2028-03-01", hint="abc"
    ),
    "list": lambda: blocks.account_list([account_row(n) for n in range(1000)]),
    "empty list": lambda: blocks.account_list([]),
    "detail": lambda: blocks.account_detail(
        {
            **account_row(1),
            "app_id": GUID,
            "app_object_id": GUID,
            "created_by": USER,
            "created_at": "2026-03-01T12:00:00+00:00",
            "appliance_id": GUID,
            "appliance_expiry": "2027-03-06",
            "roles": {GUID: ["Contributor"] * 10},
        },
        [{"at": "2026-03-01T12:00:00", "action": "a" * 60, "outcome": "o" * 300, "actor": USER}]
        * 50,
    ),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_builder_output_is_valid_block_kit(name: str) -> None:
    payload = BUILDERS[name]()
    assert block_errors(payload["blocks"]) == []
    assert 0 < len(payload["text"]) <= 40000


@pytest.mark.parametrize("size", [6, 25, 26, 60, expiry.DIGEST_SIZE, 1000])
def test_every_digest_page_is_valid_and_every_account_has_its_button(size: int) -> None:
    items = [due(n) for n in range(size)]
    seen: set[str] = set()
    for page in blocks.digest_pages(items, expiry.DIGEST_SIZE):
        payload = blocks.expiry_digest(page, NOW)
        assert block_errors(payload["blocks"]) == []
        for block in payload["blocks"]:
            for element in block.get("elements", []) if block["type"] == "actions" else []:
                assert ids.RENEW_ACTION.search(element["action_id"])
                assert element["action_id"] == ids.renew_action(int(element["value"]))
                seen.add(element["value"])
    assert seen == {str(i.account["id"]) for i in items}


def test_an_account_with_two_secrets_due_gets_one_button() -> None:
    first, second = due(1), due(2)
    second.account = first.account
    payload = blocks.expiry_digest([first, second, *[due(n) for n in range(3, 30)]], NOW)
    assert block_errors(payload["blocks"]) == []
    values = [
        e["value"] for b in payload["blocks"] if b["type"] == "actions" for e in b["elements"]
    ]
    assert len(values) == len(set(values)) == 28
