"""Tenants with Conditional Access per resource, and network failures on silent tokens.

Driven through signed slash commands against the Microsoft double with real MSAL. The double
models Conditional Access as Entra does: MFA done on the sign-in page travels with the
session; a resource that requires MFA refuses a silent token from a session without it.
"""

from __future__ import annotations

import json
import time

from tests.fakes.microsoft import (
    ALICE_UPN,
    DEFAULT_SUBSCRIPTIONS,
    DEFAULT_TENANT_ID,
    MicrosoftDouble,
)
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, Bot
from tests.test_provision import assert_provisioned, sign_in

SUB = DEFAULT_SUBSCRIPTIONS[0][0]
BOB = "bob@contoso.onmicrosoft.com"


def wait_flows(ms: MicrosoftDouble, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ms.flows) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(ms.flows) >= count, f"{len(ms.flows)} device flows"


def shown_codes(slack: SlackDouble, user: str = ADMIN) -> list[str]:
    return [m["text"] for m in slack.seen_by(user)]


def test_mfa_for_azure_management_needs_one_sign_in(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    """Microsoft's recommended policy (MFA for Windows Azure Service Management API): the
    device code is for Azure management, so MFA happens on the sign-in page."""
    ms.tenants[DEFAULT_TENANT_ID].mfa_required_for = {"arm"}
    sign_in(bot, f"create mfa-arm --subscription {SUB}")
    bot.wait_state("mfa-arm", "done", timeout=30)
    assert_provisioned(bot, ms, "mfa-arm", [SUB])
    assert len(ms.flows) == 1
    assert any(s.startswith(ms.arm_url) for s in ms.flows[0].scope)  # Azure management


def test_a_resource_that_asks_again_gets_one_more_code(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    """MFA required for Microsoft Graph only: the Azure management sign-in does not satisfy
    it, so the requester is asked for one more code, for Graph — shown to them, in the
    checklist — and the creation completes after exactly two sign-ins."""
    ms.tenants[DEFAULT_TENANT_ID].mfa_required_for = {"graph"}
    sign_in(bot, f"create mfa-graph --subscription {SUB}")
    wait_flows(ms, 2)
    second = ms.flows[1]
    assert any(s.startswith(ms.graph_url) for s in second.scope)
    note = bot.wait_thread("mfa-graph", "One more sign-in")
    assert "multi-factor" in note and "Microsoft Graph" in note and "AADSTS50076" in note
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        second.user_code in t for t in shown_codes(slack)
    ):
        time.sleep(0.02)
    assert any(second.user_code in t for t in shown_codes(slack))
    flow = bot.flow("mfa-graph")
    deadline = time.monotonic() + 10  # the checklist edit goes out in the background
    while time.monotonic() < deadline and "Sign in once more" not in json.dumps(
        slack.message(flow["channel_id"], flow["parent_ts"])["blocks"]
    ):
        time.sleep(0.02)
    parent = json.dumps(slack.message(flow["channel_id"], flow["parent_ts"])["blocks"])
    assert "Sign in once more" in parent
    assert bot.db.table("accounts").count == 0  # nothing created before the second sign-in

    ms.approve(second.user_code, ALICE_UPN)
    bot.wait_state("mfa-graph", "done", timeout=30)
    assert_provisioned(bot, ms, "mfa-graph", [SUB])
    assert len(ms.flows) == 2
    audit = [r for r in bot.db.table("audit").rows if r["action"] == "sign_in.completed"]
    assert json.loads(audit[0]["detail"])["sign_ins"] == 2


def test_the_second_sign_in_must_be_the_same_person(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    ms.add_user(BOB, name="Bob Operator")
    ms.tenants[DEFAULT_TENANT_ID].mfa_required_for = {"graph"}
    sign_in(bot, f"create mfa-swap --subscription {SUB}")
    wait_flows(ms, 2)
    bot.wait_state("mfa-swap", "awaiting_sign_in")
    ms.approve(ms.flows[1].user_code, BOB)
    bot.wait_state("mfa-swap", "failed", timeout=20)
    assert "another account" in bot.wait_thread("mfa-swap", "another account")
    assert ms.applications == []


def test_network_error_on_a_silent_token_recovers(bot: Bot, ms: MicrosoftDouble) -> None:
    """A dropped connection while getting the Graph token silently is retried."""
    ms.script_refresh(["drop", "drop"])
    sign_in(bot, f"create net-ok --subscription {SUB}")
    bot.wait_state("net-ok", "done", timeout=30)
    assert_provisioned(bot, ms, "net-ok", [SUB])
    assert ms._refresh_script == []  # both drops were met


def test_network_down_on_a_silent_token_fails_cleanly(bot: Bot, ms: MicrosoftDouble) -> None:
    """Microsoft's token endpoint unreachable after sign-in: the flow ends failed with a
    message, nothing left in the tenant, and the name can be used again."""
    bot.services.signin.device.transient_budget = 1.0
    ms.script_refresh(["drop"] * 100)
    sign_in(bot, f"create net-down --subscription {SUB}")
    bot.wait_state("net-down", "failed", timeout=30)
    assert "could not be reached" in bot.wait_thread("net-down", "could not be reached")
    assert ms.applications == []
    ms._refresh_script.clear()
    assert "Starting" in bot.command(f"create net-down --subscription {SUB}")
