"""`/veeam-sa create NAME --management-group ID`: role assignments at the group's scope, the
rights there checked (and what is missing named with its fix), the group's subscriptions
handed to Veeam and followed by the scheduled scan, rollback and resume after a crash."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import scheduler
from bot.core.errors import CommandError
from bot.slack import ids
from bot.slack.grammar import parse
from tests.fakes.microsoft import ALICE_UPN, CONTRIBUTOR, DEFAULT_SUBSCRIPTIONS, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import multi_select_state
from tests.fakes.tls import TestCA
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble
from tests.harness import ADMIN, Bot
from tests.process import BotProcess, create, flow_row, launch, thread_has, wait_until
from tests.test_health import alert_ts, repair
from tests.test_home import wait_home
from tests.test_provision import DEFAULT_ROLE_IDS, sign_in
from tests.test_renew import alert, approve_next, wait_renew

SUB, SUB_B = (sid for sid, _ in DEFAULT_SUBSCRIPTIONS)
GROUP = "/providers/Microsoft.Management/managementGroups/backup-prod"
BOB = "bob@contoso.onmicrosoft.com"


def groups(ms: MicrosoftDouble, owner: str | None = ALICE_UPN) -> None:
    """`backup-prod` holding SUB, with the nested `backup-lab`; `owner` is Owner there."""
    ms.add_management_group("backup-prod", "Backup production", subscriptions=[SUB])
    ms.add_management_group("backup-lab", "Lab", parent="backup-prod")
    if owner:
        ms.grant_at(owner, GROUP, "Owner")


@pytest.fixture
def vb(ca: TestCA) -> Iterator[VBAzureDouble]:
    with VBAzureDouble(ca) as dbl:
        yield dbl


@pytest.fixture
def vbot(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, vb: VBAzureDouble
) -> Iterator[Bot]:
    instance = Bot(
        {
            **env,
            "VEEAM_URL": vb.url,
            "VEEAM_USERNAME": DEFAULT_USERNAME,
            "VEEAM_PASSWORD": DEFAULT_PASSWORD,
        },
        slack,
        ms,
    )
    assert instance.services.appliance is not None
    instance.services.appliance.poll_interval = 0.01
    yield instance
    instance.close()


def role_puts(ms: MicrosoftDouble) -> list[str]:
    return [r.path for r in ms.requests_to("arm", "PUT", r"/roleAssignments/")]


def test_grammar_takes_a_group_instead_of_subscriptions() -> None:
    command = parse("create prod --management-group backup-prod")
    assert command.management_group == "backup-prod" and command.subscriptions == ()
    with pytest.raises(CommandError, match="either `--management-group` or `--subscription`"):
        parse(f"create prod --management-group backup-prod --subscription {SUB}")
    with pytest.raises(CommandError, match="given twice"):
        parse("create prod --management-group a --management-group b")
    for bad in ("ends-with-a-period.", "has space", "x" * 91, "slash/es"):
        with pytest.raises(CommandError, match="not a management group id"):
            parse(f"create prod --management-group '{bad}'")


def test_account_for_a_group_is_assigned_at_the_group_and_follows_it(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    groups(ms)
    sign_in(vbot, "create prod --management-group backup-prod")
    flow = vbot.wait_state("prod", "done", timeout=30)
    vbot.wait_thread("prod", "is ready")
    account = dict(next(vbot.db.table("accounts").rows_where("name = ?", ["prod"])))
    app = ms.application(app_id=account["app_id"])
    sp = ms.service_principal(app.app_id)
    # every role at the group's scope, none on a subscription
    assert {(ra.scope, ra.role_definition_id) for ra in ms.assignments_for(sp.id)} == {
        (GROUP, r) for r in DEFAULT_ROLE_IDS
    }
    assert json.loads(account["roles"]).keys() == {GROUP}
    group = json.loads(account["management_group"])
    assert group == {"id": "backup-prod", "name": "Backup production", "nested": ["backup-lab"]}
    # the appliance takes subscriptions only: the group's direct ones
    [held] = vb.accounts.values()
    assert held["subscriptions"] == [SUB]
    assert json.loads(account["subscriptions"]) == [SUB]
    # the summary, show, list and the audit trail name the group; nested groups are named
    summary = json.dumps(slack.message(flow["channel_id"], flow["parent_ts"])["blocks"])
    assert "management group `backup-prod`" in summary
    assert "`backup-lab`" in summary and "not followed" in summary
    shown = vbot.command("show prod")
    assert "management group `backup-prod`" in shown and "not followed" in shown
    assert "management group `backup-prod`" in vbot.command("list")
    vbot.open_home(ADMIN)
    wait_home(slack, ADMIN, "management group `backup-prod` Backup production")
    requested = next(vbot.db.table("audit").rows_where("action = 'create.requested'"))
    assert json.loads(requested["detail"])["management_group"] == "backup-prod"

    # the drift check reads the assignments at the group: healthy
    result = vbot.services.health.run()
    assert result.states.get("healthy") == 1, result
    assert ms.requests_to(
        "arm", "GET", r"(?i)managementGroups/backup-prod/providers/Microsoft\.Authorization/roleAssignments"
    )

    # a role removed at the group (someone in the portal) is drift, named at the group
    gone = next(ra for ra in ms.assignments_for(sp.id) if ra.role_definition_id == CONTRIBUTOR)
    ms.role_assignments.remove(gone)
    result = vbot.services.health.run()
    assert result.states.get("drift") == 1, result
    drift = next(vbot.db.table("drifts").rows_where("kind = 'roles'"))
    assert "on management group `backup-prod`" in drift["detail"]
    # Repair assigns it again, at the group
    repair(vbot, alert_ts(slack), drift["id"], len(ms.flows))
    assert (GROUP, CONTRIBUTOR) in {
        (ra.scope, ra.role_definition_id) for ra in ms.assignments_for(sp.id)
    }

    # a subscription moved into the group later: covered by the roles already there, and
    # handed to the appliance by the scheduled scan — no new role assignment
    before = role_puts(ms)
    ms.move_subscription(SUB_B, "backup-prod")
    assert ms.blocks_of_application(app.app_id, SUB_B)
    scheduler.run_scan(vbot.services)
    [held] = vb.accounts.values()
    assert sorted(held["subscriptions"]) == sorted([SUB, SUB_B])
    account = dict(vbot.db.table("accounts").get(account["id"]))
    assert sorted(json.loads(account["subscriptions"])) == sorted([SUB, SUB_B])
    assert role_puts(ms) == before
    followed = next(vbot.db.table("audit").rows_where("action = 'azure.management_group'"))
    assert json.loads(followed["detail"])["added"] == [SUB_B]
    # the next scan finds nothing new; one that sees a subscription leave says so too
    scheduler.run_scan(vbot.services)
    assert vbot.db.table("audit").count_where("action = 'azure.management_group'") == 1
    ms.move_subscription(SUB, None)
    scheduler.run_scan(vbot.services)
    [held] = vb.accounts.values()
    assert held["subscriptions"] == [SUB_B]


def test_renewal_gives_veeam_the_group_subscriptions(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble
) -> None:
    groups(ms)
    sign_in(vbot, "create prod --management-group backup-prod")
    vbot.wait_state("prod", "done", timeout=30)
    vbot.wait_thread("prod", "is ready")
    account = dict(next(vbot.db.table("accounts").rows_where("name = ?", ["prod"])))
    puts = role_puts(ms)
    [held] = vb.accounts.values()
    held["subscriptions"] = [SUB, SUB_B]  # edited in Veeam; the group holds SUB only
    ts = alert(vbot, account)
    vbot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
    approve_next(vbot, 2)
    wait_renew(vbot, "done")
    [held] = vb.accounts.values()
    assert held["subscriptions"] == [SUB]  # the group decides, as for Veeam's own accounts
    assert held["clientSecret"] == ms.application(app_id=account["app_id"]).passwords[0].secret_text
    assert role_puts(ms) == puts  # a renewal assigns nothing


def test_the_chooser_offers_the_groups_the_account_can_see(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    groups(ms)
    flow = sign_in(bot, "create prod")
    bot.wait_state("prod", "choosing", timeout=20)
    chooser = next(
        m
        for m in slack.thread(flow["channel_id"], flow["parent_ts"])
        if m.get("text", "").startswith("Choose")
    )
    [select] = [
        e
        for b in chooser["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["type"] == "multi_static_select"
    ]
    offered = {o["value"] for g in select["option_groups"] for o in g["options"]}
    assert offered == {SUB, SUB_B, "mg:backup-prod", "mg:backup-lab"}
    # subscriptions and a group together are refused, and nothing moves
    mixed = multi_select_state("choose", ids.ACTION_CHOOSE_SUBSCRIPTIONS, [SUB, "mg:backup-prod"])
    bot.click(ids.ACTION_CREATE, flow["id"], state_values=mixed)
    assert "either subscriptions or one management group" in json.dumps(
        slack.wait_for("response_url").args
    )
    assert bot.flow("prod")["state"] == "choosing"
    state = multi_select_state("choose", ids.ACTION_CHOOSE_SUBSCRIPTIONS, ["mg:backup-prod"])
    bot.click(ids.ACTION_CREATE, flow["id"], state_values=state)
    bot.wait_state("prod", "done", timeout=30)
    sp = ms.service_principal(ms.application(display_name="prod").app_id)
    assert {ra.scope for ra in ms.assignments_for(sp.id)} == {GROUP}


def test_least_privilege_for_a_group_has_its_custom_role_assignable_at_the_group(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    groups(ms)
    sign_in(bot, "create prod --management-group backup-prod --roles least-privilege")
    bot.wait_state("prod", "done", timeout=30)
    [role] = ms.custom_roles()
    assert role.assignable_scopes == [GROUP]
    sp = ms.service_principal(ms.application(display_name="prod").app_id)
    assert [(ra.scope, ra.role_definition_id) for ra in ms.assignments_for(sp.id)] == [
        (GROUP, role.id)
    ]
    assert ms.blocks_of_application(sp.app_id, SUB)  # inherited by the group's subscription


def test_least_privilege_rollback_removes_the_custom_role_at_the_group(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    groups(ms)
    ms.fault(
        "arm",
        "PUT",
        r"managementGroups/backup-prod/providers/Microsoft\.Authorization/roleAssignments/",
        403,
        body={"error": {"code": "AuthorizationFailed", "message": "denied"}},
        times=1,
    )
    sign_in(bot, "create prod --management-group backup-prod --roles least-privilege")
    bot.wait_state("prod", "rolled_back", timeout=30)
    assert ms.custom_roles() == [] and ms.applications == []
    assert ms.requests_to("arm", "DELETE", r"(?i)managementGroups/backup-prod/.*roleDefinitions/")


def test_missing_right_at_the_group_is_named_with_the_fix(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.add_user(BOB, name="Bob Operator")
    ms.grant(BOB, SUB, "Owner")  # Owner of a subscription in the group is not enough
    groups(ms, owner=None)
    ms.grant_at(BOB, GROUP, "Reader")
    sign_in(bot, "create prod --management-group backup-prod", user=BOB)
    bot.wait_state("prod", "blocked", timeout=20)
    text = bot.wait_thread("prod", "Prerequisites")
    flow = bot.flow("prod")
    thread = json.dumps(bot.slack.thread(flow["channel_id"], flow["parent_ts"]))
    assert "management group `backup-prod`" in thread
    assert "lacks Microsoft.Authorization/roleAssignments/write" in thread
    assert "Owner (or User Access Administrator)" in thread and "elevated access" in thread
    assert "Prerequisites" in text
    assert ms.applications == [] and role_puts(ms) == []
    # the fix as named (User Access Administrator at the group), then Recheck: it goes on
    ms.grant_at(BOB, GROUP, "User Access Administrator")
    bot.click(ids.ACTION_RECHECK, flow["id"], user=ADMIN)
    bot.wait_state("prod", "done", timeout=30)
    thread = json.dumps(bot.slack.thread(flow["channel_id"], flow["parent_ts"]))
    assert "not Owner there" in thread  # what Veeam's wizard asks for, and that it is not needed


def test_a_group_out_of_sight_is_named(bot: Bot, ms: MicrosoftDouble) -> None:
    groups(ms, owner=None)  # alice holds nothing at the group
    sign_in(bot, "create prod --management-group backup-prod")
    bot.wait_state("prod", "blocked", timeout=20)
    flow = bot.flow("prod")
    thread = json.dumps(bot.slack.thread(flow["channel_id"], flow["parent_ts"]))
    assert "cannot read the management group" in thread and "elevated access" in thread
    assert ms.applications == []


def test_failure_at_the_group_rolls_back_its_assignments(bot: Bot, ms: MicrosoftDouble) -> None:
    groups(ms)
    # one of the three assignments at the group is refused: the other two are removed
    ms.fault(
        "arm",
        "PUT",
        r"managementGroups/backup-prod/providers/Microsoft\.Authorization/roleAssignments/",
        403,
        body={"error": {"code": "AuthorizationFailed", "message": "denied"}},
        times=1,
    )
    sign_in(bot, "create prod --management-group backup-prod")
    flow = bot.wait_state("prod", "rolled_back", timeout=30)
    account = bot.db.table("accounts").get(flow["account_id"])
    assert ms.assignments_for(account["sp_id"]) == []
    assert ms.requests_to("arm", "DELETE", r"managementGroups/backup-prod/.*roleAssignments/")
    assert [a for a in ms.applications if a.display_name == "prod"] == []
    assert "Rolled back" in bot.wait_thread("prod", "Rolled back")


def test_crash_after_the_group_roles_resumes_without_duplicates(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    groups(ms)
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs, VEEAM_SA_CRASH_AT="after_roles")
    create(first, slack, "create prod --management-group backup-prod")
    wait_until(lambda: len(ms.flows) == 1, what="device flow")
    ms.approve(ms.flows[0].user_code)
    assert first.proc is not None
    assert first.proc.wait(30) == -9
    launch(env, tmp_path, procs)
    wait_until(lambda: thread_has(slack, "sign in again"), what="re-sign-in request")
    wait_until(lambda: len(ms.flows) == 2, what="second device flow")
    ms.approve(ms.flows[1].user_code)
    wait_until(lambda: flow_row(db, "prod").get("state") == "done", timeout=40, what="done")
    [app] = ms.applications
    sp = ms.service_principal(app.app_id)
    assert sp is not None
    assert sorted(ra.scope for ra in ms.assignments_for(sp.id)) == [GROUP] * 3
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT management_group, state FROM accounts").fetchone()
    finally:
        conn.close()
    assert json.loads(row[0])["id"] == "backup-prod" and row[1] == "active"
