"""Tenants whose app management policy limits client secrets.

Graph refuses a secret the policy does not allow (400 CredentialInvalidLifetimeAsPerAppPolicy,
or CredentialTypeNotAllowedAsPerAppPolicy when secrets are forbidden); it never shortens one.
The bot ends with the longest lifetime the policy allows, and says so.
"""

from __future__ import annotations

import json

from bot.slack import ids
from tests.fakes.microsoft import (
    APPLICATION_DEVELOPER,
    DEFAULT_APP_POLICY_ID,
    DEFAULT_SUBSCRIPTIONS,
    DEFAULT_TENANT_ID,
    MicrosoftDouble,
)
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, CHANNEL, Bot
from tests.test_provision import assert_provisioned, sign_in
from tests.test_renew import alert, approve_next, managed, wait_renew

SUB = DEFAULT_SUBSCRIPTIONS[0][0]
BOB = "bob@contoso.onmicrosoft.com"


def refusals(ms: MicrosoftDouble) -> int:
    return sum(1 for r in ms.requests if r.path.endswith("/addPassword") and r.status == 400)


def test_policy_cap_read_by_the_signed_in_admin(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    ms.tenants[DEFAULT_TENANT_ID].password_max_days = 30
    sign_in(bot, f"create capped --subscription {SUB}")
    bot.wait_state("capped", "done", timeout=30)
    bot.wait_thread("capped", "is ready")  # posted after the summary
    assert_provisioned(bot, ms, "capped", [SUB], days=30)
    assert refusals(ms) == 1  # the 365-day try; then the policy's own cap
    note = bot.wait_thread("capped", "app management policy")
    assert "at most 30 days" in note and DEFAULT_APP_POLICY_ID in note and "365" in note
    flow = bot.flow("capped")
    summary = json.dumps(slack.message(flow["channel_id"], flow["parent_ts"])["blocks"])
    assert "lasts 30 days" in summary
    audit = [r for r in bot.db.table("audit").rows if r["action"] == "azure.secret"]
    assert json.loads(audit[0]["detail"])["policy_limit"]["days"] == 30


def test_renewal_in_a_capped_tenant(bot: Bot, ms: MicrosoftDouble, slack: SlackDouble) -> None:
    ms.tenants[DEFAULT_TENANT_ID].password_max_days = 30
    account = managed(bot)
    old_key = ms.application(app_id=account["app_id"]).passwords[0].key_id
    ts = alert(bot, account)
    status, _ = bot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
    assert status == 200
    approve_next(bot, 2)
    wait_renew(bot, "done")
    app = ms.application(app_id=account["app_id"])
    (password,) = [p for p in app.passwords if p.key_id != old_key]
    assert abs(password.end - (ms.now() + 30 * 86400)) <= 86400
    notes = [m["text"] for m in slack.thread(CHANNEL, ts)]
    assert any("at most 30 days" in n for n in notes)


def test_unreadable_policy_steps_down(bot: Bot, ms: MicrosoftDouble) -> None:
    """An account that may not read the policy (403) steps down to the longest lifetime
    Graph accepts."""
    ms.add_user(BOB, name="Bob Operator", directory_roles=[APPLICATION_DEVELOPER])
    ms.grant(BOB, SUB, "Owner")
    ms.tenants[DEFAULT_TENANT_ID].password_max_days = 45
    sign_in(bot, f"create stepped --subscription {SUB}", user=BOB)
    bot.wait_state("stepped", "done", timeout=30)
    assert_provisioned(bot, ms, "stepped", [SUB], days=30)
    assert any(
        r.path.endswith("/policies/defaultAppManagementPolicy") and r.status == 403
        for r in ms.requests
    )
    note = bot.wait_thread("stepped", "app management policy")
    assert "refused a 365-day" in note and "30 days" in note


def test_policy_forbidding_secrets_leaves_nothing_behind(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.tenants[DEFAULT_TENANT_ID].passwords_blocked = True
    sign_in(bot, f"create nosecret --subscription {SUB}")
    flow = bot.wait_state("nosecret", "rolled_back", "failed", timeout=30)
    text = bot.wait_thread("nosecret", "does not allow client secrets")
    assert DEFAULT_APP_POLICY_ID in text and "Rolled back" in text
    assert flow["state"] == "rolled_back"
    assert ms.applications == [] and ms.service_principals == []
    assert ms.role_assignments == [] or all(
        ra.principal_type != "ServicePrincipal" for ra in ms.role_assignments
    )
    # the certificate path is offered, and works in this tenant
    assert "--credential certificate" in text
    sign_in(bot, f"create nosecret --subscription {SUB} --credential certificate")
    assert bot.wait_state("nosecret", "done", timeout=30)["state"] == "done"
    [app] = ms.applications
    assert app.passwords == [] and len(app.keys) == 1
    # the name is free again
    assert "Starting" in bot.command(f"create nosecret-2 --subscription {SUB}")
