"""`/veeam-sa create`, part 2: prerequisites, subscription choice, provisioning, rollback."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from bot.core.config import BUILTIN_ROLES
from bot.slack import ids
from tests.fakes.microsoft import (
    ALICE_UPN,
    DEFAULT_SUBSCRIPTIONS,
    DEFAULT_TENANT_ID,
    MicrosoftDouble,
    RecordedRequest,
)
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import multi_select_state
from tests.harness import ADMIN, OTHER, Bot

SUB1 = DEFAULT_SUBSCRIPTIONS[0][0]
SUB2 = DEFAULT_SUBSCRIPTIONS[1][0]
DEFAULT_ROLE_IDS = {
    BUILTIN_ROLES["Contributor"],
    BUILTIN_ROLES["Key Vault Crypto User"],
    BUILTIN_ROLES["Storage Queue Data Contributor"],
}
BOB = "bob@contoso.onmicrosoft.com"


def sign_in(bot: Bot, text: str, user: str = ALICE_UPN) -> dict:
    name = text.split()[1]
    before = len(bot.ms.flows)
    assert "Starting" in bot.command(text)
    deadline = time.monotonic() + 10
    while len(bot.ms.flows) <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    bot.wait_state(name, "awaiting_sign_in")
    bot.ms.approve(bot.ms.flows[-1].user_code, user)
    return bot.flow(name)


def assert_provisioned(
    bot: Bot, ms: MicrosoftDouble, name: str, subs: list[str], days: int = 365
) -> None:
    apps = [a for a in ms.applications if a.display_name == name]
    assert len(apps) == 1, apps
    app = apps[0]
    assert app.props.get("signInAudience") == "AzureADMyOrg"
    sp = ms.service_principal(app.app_id)
    assert sp is not None
    assert len(app.passwords) == 1
    password = app.passwords[0]
    expected_end = ms.now() + days * 86400
    assert abs(password.end - expected_end) <= 86400
    assigned = {(ra.subscription_id, ra.role_definition_id) for ra in ms.assignments_for(sp.id)}
    assert assigned == {(s, r) for s in subs for r in DEFAULT_ROLE_IDS}
    assert all(ra.principal_type == "ServicePrincipal" for ra in ms.assignments_for(sp.id))

    account = next(bot.db.table("accounts").rows_where("name = ?", [name]))
    assert account["state"] == "active"
    assert (account["app_id"], account["app_object_id"], account["sp_id"]) == (
        app.app_id,
        app.id,
        sp.id,
    )
    assert account["tenant_id"] == DEFAULT_TENANT_ID
    assert sorted(json.loads(account["roles"])) == sorted(subs)
    secrets = list(bot.db.table("secrets").rows_where("account_id = ?", [account["id"]]))
    assert [(s["key_id"], s["state"]) for s in secrets] == [(password.key_id, "active")]
    assert bot.cipher.decrypt(secrets[0]["ciphertext"]) == password.secret_text
    stored_end = datetime.fromisoformat(secrets[0]["end_at"]).timestamp()
    assert abs(stored_end - password.end) < 2


def test_happy_path_one_of_everything(bot: Bot, ms: MicrosoftDouble, slack: SlackDouble) -> None:
    sign_in(
        bot, f"create prod-backup --subscription {SUB1} --subscription {SUB2} --description nightly"
    )
    bot.wait_state("prod-backup", "done", timeout=30)
    bot.wait_thread("prod-backup", "is ready")  # posted after the summary
    assert_provisioned(bot, ms, "prod-backup", [SUB1, SUB2])
    flow = bot.flow("prod-backup")
    parent = slack.message(flow["channel_id"], flow["parent_ts"])
    text = json.dumps(parent["blocks"])
    app = ms.application(display_name="prod-backup")
    assert app.app_id in text and "Contributor" in text and DEFAULT_TENANT_ID in text
    assert f"{app.passwords[0].hint}" in text and "encrypted" in text
    assert "ready" in bot.wait_thread("prod-backup", "is ready")
    # the secret went nowhere near Slack, and is not in the database file in plain text
    secret = app.passwords[0].secret_text
    assert all(secret not in json.dumps(c.args) for c in slack.calls)
    assert secret.encode() not in bot.store.path.read_bytes()
    wal = bot.store.path.with_name(bot.store.path.name + "-wal")
    assert not wal.exists() or secret.encode() not in wal.read_bytes()
    actions = [r["action"] for r in bot.db.table("audit").rows]
    for expected in (
        "azure.application",
        "azure.secret",
        "azure.role_assignments",
        "create.completed",
    ):
        assert expected in actions


def test_no_app_registration_right_then_recheck(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.add_user(BOB, name="Bob Operator")
    ms.grant(BOB, SUB1, "Owner")
    ms.set_allowed_to_create_apps(DEFAULT_TENANT_ID, False)
    flow = sign_in(bot, f"create prod --subscription {SUB1}", user=BOB)
    bot.wait_state("prod", "blocked", timeout=20)
    text = bot.wait_thread("prod", "Prerequisites")
    assert text == "Prerequisites for prod: still missing the right to register applications"
    thread = bot.slack.thread(flow["channel_id"], flow["parent_ts"])
    prereq = next(m for m in thread if m.get("text", "").startswith("Prerequisites"))
    assert "Application Developer" in json.dumps(prereq["blocks"])
    assert "something is missing" in prereq["blocks"][0]["text"]["text"]
    assert ms.applications == []

    # a Recheck that finds the same says when it ran (in the reader's zone) and what is missing
    bot.click(ids.ACTION_RECHECK, flow["id"], user=ADMIN)
    deadline = time.monotonic() + 10
    head = ""
    while "checked at" not in head and time.monotonic() < deadline:
        time.sleep(0.05)
        head = bot.slack.message(flow["channel_id"], prereq["ts"])["blocks"][0]["text"]["text"]
    assert re.search(
        r"checked at <!date\^\d+\^\{time\}\|[^>]+>, still missing: the right to register", head
    ), head
    bot.wait_state("prod", "blocked")

    ms.set_allowed_to_create_apps(DEFAULT_TENANT_ID, True)
    status, _ = bot.click(ids.ACTION_RECHECK, flow["id"], user=ADMIN)
    assert status == 200
    bot.wait_state("prod", "done", timeout=30)
    assert_provisioned(bot, ms, "prod", [SUB1])
    # the Recheck button is gone once the rights are there
    rechecked = bot.slack.message(flow["channel_id"], prereq["ts"])
    assert "all met (checked at <!date^" in rechecked["blocks"][0]["text"]["text"]
    assert all(b["type"] != "actions" for b in rechecked["blocks"])


def test_policy_unreadable_falls_back_to_roles(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.policy_forbidden(DEFAULT_TENANT_ID, True)
    sign_in(bot, f"create prod --subscription {SUB1}")  # Alice is Global Administrator
    bot.wait_state("prod", "done", timeout=30)
    flow = bot.flow("prod")
    thread = bot.slack.thread(flow["channel_id"], flow["parent_ts"])
    prereq = next(m for m in thread if m.get("text", "").startswith("Prerequisites"))
    assert "holds Global Administrator" in json.dumps(prereq["blocks"])


def test_missing_write_on_one_of_two_subscriptions(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    ms.add_user(BOB, name="Bob Operator", directory_roles=["cf1c38e5-3621-4004-a7cb-879624dced7c"])
    ms.grant(BOB, SUB1, "Owner")
    ms.grant(BOB, SUB2, "Contributor")
    flow = sign_in(bot, f"create prod --subscription {SUB1} --subscription {SUB2}", user=BOB)
    bot.wait_state("prod", "blocked", timeout=20)
    thread = slack.thread(flow["channel_id"], flow["parent_ts"])
    prereq = json.dumps(
        next(m for m in thread if m.get("text", "").startswith("Prerequisites"))["blocks"]
    )
    assert f":x: Assign roles on `{SUB2}`" in prereq and "User Access Administrator" in prereq
    assert f":white_check_mark: Assign roles on `{SUB1}`" in prereq
    assert ms.applications == []

    ms.grant(BOB, SUB2, "User Access Administrator")
    bot.click(ids.ACTION_RECHECK, flow["id"], user=ADMIN)
    bot.wait_state("prod", "done", timeout=30)
    assert_provisioned(bot, ms, "prod", [SUB1, SUB2])


def test_subscription_not_visible_is_named(bot: Bot, ms: MicrosoftDouble) -> None:
    ghost = "99999999-9999-4999-8999-999999999999"
    sign_in(bot, f"create prod --subscription {ghost}")
    bot.wait_state("prod", "blocked", timeout=20)
    flow = bot.flow("prod")
    prereq = json.dumps(
        next(
            m
            for m in bot.slack.thread(flow["channel_id"], flow["parent_ts"])
            if m.get("text", "").startswith("Prerequisites")
        )
    )
    assert ghost in prereq and "cannot see the subscription" in prereq


def test_replication_delay_429_and_5xx_are_survived(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.replication_delay = 2
    ms.fault("graph", "POST", r"/addPassword$", 429, retry_after=1)
    ms.fault("graph", "PATCH", r"/applications", 503, times=2)
    ms.fault("arm", "PUT", r"/roleAssignments/", 500, times=1)
    sign_in(bot, f"create prod --subscription {SUB1}")
    bot.wait_state("prod", "done", timeout=60)
    assert_provisioned(bot, ms, "prod", [SUB1])


def test_forbidden_midway_rolls_back(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.fault(
        "arm",
        "PUT",
        r"/roleAssignments/",
        403,
        body={
            "error": {
                "code": "AuthorizationFailed",
                "message": "The client does not have authorization",
            }
        },
        times=10,
    )
    sign_in(bot, f"create prod --subscription {SUB1}")
    flow = bot.wait_state("prod", "rolled_back", timeout=30)
    assert [a for a in ms.applications if a.display_name == "prod"] == []
    assert len(ms.deleted_applications) == 1
    text = bot.wait_thread("prod", "Rolled back")
    assert "AuthorizationFailed" in text
    account = bot.db.table("accounts").get(flow["account_id"])
    assert account["state"] == "rolled_back"
    # the checklist tells the truth, in words: what was made and undone, what failed
    checklist = bot.slack.message(flow["channel_id"], flow["parent_ts"])["blocks"][2]["text"]["text"]
    assert checklist.splitlines() == [
        ":white_check_mark: done — Sign in to Microsoft",
        ":white_check_mark: done — Check permissions",
        ":leftwards_arrow_with_hook: rolled back — Create the application",
        ":leftwards_arrow_with_hook: rolled back — Create the service principal",
        ":leftwards_arrow_with_hook: rolled back — Add the client secret",
        ":x: failed — Assign roles",
    ]
    # the name is free again
    assert "Starting" in bot.command(f"create prod --subscription {SUB1}")


def test_choose_subscriptions_from_the_list(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    flow = sign_in(bot, "create prod")
    bot.wait_state("prod", "choosing", timeout=20)
    chooser = next(
        m
        for m in slack.thread(flow["channel_id"], flow["parent_ts"])
        if m.get("text", "").startswith("Choose")
    )
    options = [
        o["value"]
        for b in chooser["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["type"] == "multi_static_select"
        for o in e["options"]
    ]
    assert sorted(options) == sorted([SUB1, SUB2])
    state = multi_select_state("choose", ids.ACTION_CHOOSE_SUBSCRIPTIONS, [SUB2])

    status, _ = bot.click(ids.ACTION_CREATE, flow["id"], user=OTHER, state_values=state)
    assert status == 200
    refusal = slack.wait_for("response_url")
    assert "who started this creation, may choose its subscriptions" in json.dumps(refusal.args)
    assert bot.flow("prod")["state"] == "choosing"

    bot.click(ids.ACTION_CREATE, flow["id"], user=ADMIN, state_values=state)
    bot.wait_state("prod", "done", timeout=30)
    assert_provisioned(bot, ms, "prod", [SUB2])


def test_create_refuses_a_managed_name(bot: Bot) -> None:
    sign_in(bot, f"create prod --subscription {SUB1}")
    bot.wait_state("prod", "done", timeout=30)
    answer = bot.command("create PROD")
    assert "already a managed service account" in answer and "/veeam-sa renew PROD" in answer


@pytest.mark.parametrize("days", [1])
def test_secret_days_setting_is_honoured(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, days: int
) -> None:
    bot = Bot({**env, "VEEAM_SA_SECRET_DAYS": str(days)}, slack, ms)
    try:
        sign_in(bot, f"create quick --subscription {SUB1}")
        bot.wait_state("quick", "done", timeout=30)
        assert_provisioned(bot, ms, "quick", [SUB1], days=days)
        end = datetime.fromisoformat(next(bot.db.table("secrets").rows)["end_at"])
        assert end - datetime.now(UTC) < timedelta(days=days, hours=1)
    finally:
        bot.close()


def test_an_unfinished_creation_blocks_its_name(bot: Bot) -> None:
    bot.db.table("accounts").insert(
        {"name": "half", "app_id": "app-half", "state": "orphaned", "created_at": "2026-11-30T00:00:00+00:00"}
    )
    answer = bot.command("create HALF")
    assert "unfinished creation (orphaned)" in answer and "app-half" in answer
    assert bot.db.table("flows").count == 0


def test_hybrid_identity_administrator_may_register_applications(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    """Built-in roles that hold applications/create pass the check whatever the tenant
    setting says (Entra built-in roles reference)."""
    from tests.fakes.microsoft import HYBRID_IDENTITY_ADMINISTRATOR

    ms.add_user(BOB, name="Bob Operator", directory_roles=[HYBRID_IDENTITY_ADMINISTRATOR])
    ms.grant(BOB, SUB1, "Owner")
    ms.set_allowed_to_create_apps(DEFAULT_TENANT_ID, False)
    flow = sign_in(bot, f"create hybrid --subscription {SUB1}", user=BOB)
    bot.wait_state("hybrid", "done", timeout=30)
    thread = bot.slack.thread(flow["channel_id"], flow["parent_ts"])
    prereq = next(m for m in thread if m.get("text", "").startswith("Prerequisites"))
    assert "holds Hybrid Identity Administrator" in json.dumps(prereq["blocks"])


def test_unreadable_setting_without_a_role_does_not_block(bot: Bot, ms: MicrosoftDouble) -> None:
    """A 403 on the tenant setting is "unknown", not "denied": creation goes ahead."""
    ms.add_user(BOB, name="Bob Operator")
    ms.grant(BOB, SUB1, "Owner")
    ms.policy_forbidden(DEFAULT_TENANT_ID, True)
    flow = sign_in(bot, f"create unknown --subscription {SUB1}", user=BOB)
    bot.wait_state("unknown", "done", timeout=30)
    thread = bot.slack.thread(flow["channel_id"], flow["parent_ts"])
    prereq = next(m for m in thread if m.get("text", "").startswith("Prerequisites"))
    assert "could not read the tenant setting" in json.dumps(prereq["blocks"])


@pytest.mark.parametrize("form", ["local_tenant", "not_exist"])
def test_service_principal_waits_out_replication_forms(
    bot: Bot, ms: MicrosoftDouble, form: str
) -> None:
    """The 403 and 404 forms Graph gives for a not-yet-replicated application are retried."""
    ms.replication_delay = 2
    ms.sp_replication_form = form
    sign_in(bot, f"create repl-{form.replace('_', '-')} --subscription {SUB1}")
    bot.wait_state(f"repl-{form.replace('_', '-')}", "done", timeout=60)
    assert_provisioned(bot, ms, f"repl-{form.replace('_', '-')}", [SUB1])


def _refresh_grant(r: RecordedRequest) -> bool:
    return r.server == "login" and isinstance(r.body, dict) and (
        r.body.get("grant_type") == "refresh_token"
    )


def test_subscription_rights_are_checked_beside_the_graph_token(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    # The sign-in yields the Azure management token: the subscription check needs only that,
    # so it goes out while the Graph token is fetched (each request is held until the other
    # arrives; sent one after the other, the first would wait out the timeout).
    rv = ms.meet(
        lambda r: r.server == "arm" and r.path.endswith("/providers/Microsoft.Authorization/permissions"),
        _refresh_grant,
        timeout=5,
    )
    sign_in(bot, f"create side --subscription {SUB1}")
    bot.wait_state("side", "done", timeout=30)
    assert rv.met, rv.waited
    # the tenant step and the tenant's display name share one read of ARM's tenant list
    assert sum(1 for r in ms.requests if r.server == "arm" and r.path == "/tenants") == 1
    assert_provisioned(bot, ms, "side", [SUB1])


def test_application_is_created_beside_the_graph_check(bot: Bot, ms: MicrosoftDouble) -> None:
    # With the subscription rights known, the application is created while Graph is asked
    # whether the account may register applications: Graph's answer to the creation says
    # the same, and a refusal leaves nothing behind (test_no_app_registration_right_...).
    rv = ms.meet(
        lambda r: r.server == "graph" and r.path.startswith("/v1.0/applications(uniqueName="),
        lambda r: r.server == "graph" and r.path == "/v1.0/policies/authorizationPolicy",
        timeout=5,
    )
    flow = sign_in(bot, f"create beside --subscription {SUB1}")
    bot.wait_state("beside", "done", timeout=30)
    assert rv.met, rv.waited
    assert_provisioned(bot, ms, "beside", [SUB1])
    # the thread still tells the checks' answer, before the account is ready
    bot.wait_thread("beside", "is ready")
    texts = [m.get("text", "") for m in bot.slack.thread(flow["channel_id"], flow["parent_ts"])]
    prereq = next(i for i, t in enumerate(texts) if t.startswith("Prerequisites"))
    ready = next(i for i, t in enumerate(texts) if "is ready" in t)
    assert prereq < ready


def test_refused_application_leaves_the_checklist_true(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.add_user(BOB, name="Bob Operator")
    ms.grant(BOB, SUB1, "Owner")
    ms.set_allowed_to_create_apps(DEFAULT_TENANT_ID, False)
    sign_in(bot, f"create refused --subscription {SUB1}", user=BOB)
    bot.wait_state("refused", "blocked", timeout=20)
    steps = json.loads(bot.flow("refused")["data"])["steps"]
    assert "application" not in steps  # Graph created nothing: no step shows as begun
    assert steps["checks"] == "failed"
    assert ms.applications == []
