"""Least-privilege accounts (`--roles least-privilege`, `VEEAM_SA_ROLES=least-privilege`): one
custom role holding exactly what VBAzure needs, instead of Contributor and the data roles;
and Veeam's own confirmation (`checkPermissions`) as the creation's last step."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.core import permissions
from bot.core.config import BUILTIN_ROLES, load_config
from bot.core.errors import ConfigError
from bot.core.purposes import DEFAULT_PURPOSES
from bot.slack import ids
from bot.slack.grammar import parse
from tests.fakes.microsoft import ALICE_UPN, DEFAULT_SUBSCRIPTIONS, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.tls import TestCA
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble
from tests.harness import ADMIN, Bot
from tests.process import BotProcess, create, flow_row, launch, thread_has, wait_until
from tests.test_provision import sign_in
from tests.test_renew import approve_next, wait_renew

SUB1 = DEFAULT_SUBSCRIPTIONS[0][0]
SUB2 = DEFAULT_SUBSCRIPTIONS[1][0]
CONTRIBUTOR = BUILTIN_ROLES["Contributor"]


@pytest.fixture
def vb(ca: TestCA, ms: MicrosoftDouble) -> Iterator[VBAzureDouble]:
    with VBAzureDouble(ca) as dbl:
        # The appliance checks what the application really holds in Azure.
        dbl.azure_permissions = ms.blocks_of_application
        yield dbl
        assert dbl.internal_errors == []


def appliance_bot(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, vb: VBAzureDouble, **extra: str
) -> Bot:
    instance = Bot(
        {
            **env,
            "VEEAM_URL": vb.url,
            "VEEAM_USERNAME": DEFAULT_USERNAME,
            "VEEAM_PASSWORD": DEFAULT_PASSWORD,
            **extra,
        },
        slack,
        ms,
    )
    assert instance.services.appliance is not None
    instance.services.appliance.poll_interval = 0.01
    return instance


@pytest.fixture
def vbot(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, vb: VBAzureDouble
) -> Iterator[Bot]:
    instance = appliance_bot(env, slack, ms, vb)
    yield instance
    instance.close()


def account_row(bot: Bot, name: str) -> dict:
    return dict(next(bot.db.table("accounts").rows_where("name = ?", [name])))


def custom_role_of(ms: MicrosoftDouble, app_id: str, sub: str):
    sp = ms.service_principal(app_id)
    assert sp is not None
    assigned = [ra for ra in ms.assignments_for(sp.id) if ra.subscription_id == sub]
    return sp, assigned


def exported(vb: VBAzureDouble, purposes: tuple[str, ...]) -> tuple[set[str], set[str]]:
    actions: set[str] = set()
    data: set[str] = set()
    for purpose in purposes:
        actions |= set(vb.required_permissions.get(purpose, {}).get("actions", []))
        data |= set(vb.required_permissions.get(purpose, {}).get("dataActions", []))
    return actions, data


def thread_blocks(bot: Bot, name: str) -> str:
    flow = bot.flow(name)
    return json.dumps(
        [m.get("blocks") for m in bot.slack.thread(flow["channel_id"], flow["parent_ts"])]
    )


def wait_for(check, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- grammar, settings


def test_roles_option_and_setting() -> None:
    assert parse(f"create prod --subscription {SUB1} --roles least-privilege").roles == (
        "least-privilege"
    )
    assert parse("create prod --roles=BUILTIN").roles == "builtin"
    assert parse("create prod").roles is None
    for bad in ("create prod --roles contributor", "create prod --roles builtin --roles builtin"):
        with pytest.raises(Exception, match="roles"):
            parse(bad)
    base = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s", "VEEAM_SA_ADMINS": ADMIN}
    config = load_config({**base, "VEEAM_SA_ROLES": "least-privilege"}, dotenv=None)
    assert config.role_mode == "least-privilege"
    assert [r.name for r in config.roles][0] == "Contributor"  # the built-in list stays default
    assert load_config({**base, "VEEAM_SA_ROLES": "Owner"}, dotenv=None).role_mode == "builtin"
    with pytest.raises(ConfigError, match="VEEAM_SA_PERMISSION_CHECK_SECONDS"):
        load_config({**base, "VEEAM_SA_PERMISSION_CHECK_SECONDS": "soon"}, dotenv=None)


def test_shipped_list_states_its_source_and_covers_the_default_purposes() -> None:
    doc = json.loads(Path(permissions.__file__).with_name("vbazure_permissions.json").read_text())
    assert doc["vbazure_version"] == "8.1" and "helpcenter.veeam.com" in doc["source"]
    assert all(doc["purposes"][p]["source"] for p in DEFAULT_PURPOSES)
    union = permissions.shipped(DEFAULT_PURPOSES)
    assert "*" not in union.actions and union.data_actions
    with pytest.raises(Exception, match="WorkerManagement"):
        permissions.shipped(["WorkerManagement"])
    # an export that excludes actions cannot become an allow-list role
    with pytest.raises(Exception, match="notActions"):
        permissions.from_export({"permissions": [{"actions": ["*"], "notActions": ["x/write"]}]})
    cli_style = permissions.from_export(
        {"Actions": ["b/read", "A/read", "a/READ"], "DataActions": []}
    )
    assert cli_style.actions == ("A/read", "b/read")


# --------------------------------------------------------------------------- with an appliance


def test_custom_role_holds_exactly_the_export_and_veeam_confirms(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    ms.role_definition_replication = 1  # the first assignment does not find the new role yet
    sign_in(
        vbot, f"create prod --subscription {SUB1} --subscription {SUB2} --roles least-privilege"
    )
    vbot.wait_state("prod", "done", timeout=30)
    account = account_row(vbot, "prod")

    [role] = ms.custom_roles()
    actions, data = exported(vb, vbot.config.veeam_purposes)
    assert set(role.actions) == actions and set(role.data_actions) == data
    assert role.not_actions == [] and role.not_data_actions == []
    assert sorted(role.assignable_scopes) == sorted(f"/subscriptions/{s}" for s in (SUB1, SUB2))
    for sub in (SUB1, SUB2):
        _, assigned = custom_role_of(ms, account["app_id"], sub)
        assert [ra.role_definition_id for ra in assigned] == [role.id]  # and no Contributor
    assert len(vb.events_for(r"/exportPermissionsByApp$", "POST")) == 2  # one per subscription
    stored = json.loads(account["custom_role"])
    assert (stored["id"], stored["name"]) == (role.id, role.name)
    assert json.loads(account["roles"]) == {SUB1: [role.name], SUB2: [role.name]}

    # the last step: the appliance finds every permission present
    text = vbot.wait_thread("prod", "Veeam confirms")
    assert "2 subscription(s)" in text
    assert wait_for(
        lambda: (
            vbot.flow("prod")
            and json.loads(vbot.flow("prod")["data"])["steps"].get("confirm") == "done"
        ),
        "the confirm step",
    )
    parent = json.dumps(
        slack.message(account["channel_id"], vbot.flow("prod")["parent_ts"])["blocks"]
    )
    assert "Veeam confirms the permissions" in parent and "Application (client) id" in parent
    assert json.loads(account_row(vbot, "prod")["permissions_state"]) == ["AllPermissionsAvailable"]
    assert "least privilege" in vbot.wait_thread("prod", "custom role").lower()
    shown = vbot.command("show prod")
    assert "AllPermissionsAvailable" in shown and role.name in shown


def test_missing_permission_shown_then_cleared_after_recheck(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, vb: VBAzureDouble
) -> None:
    # Built-in roles: Contributor cannot write locks; this appliance says backups need to.
    vb.required_permissions["VirtualMachineBackup"]["actions"].append(
        "Microsoft.Authorization/locks/write"
    )
    vb.missing_providers = {SUB1: ["Microsoft.KeyVault"]}
    bot = appliance_bot(env, slack, ms, vb, VEEAM_SA_PERMISSION_CHECK_SECONDS="0.4")
    try:
        sign_in(bot, f"create prod --subscription {SUB1}")
        bot.wait_state("prod", "done", timeout=30)
        account = account_row(bot, "prod")
        # asked again on the backoff, then left with Recheck
        wait_for(
            lambda: "press Recheck to ask Veeam again" in thread_blocks(bot, "prod"),
            "the final answer with Recheck",
        )
        assert wait_for(
            lambda: json.loads(bot.flow("prod")["data"])["steps"].get("confirm") == "failed",
            "the confirm step to stop",
        )
        asks = vb.events_for(r"/checkPermissions$", "POST")
        assert len(asks) == 1 + len(bot.services.provision.confirmations.delays())
        message = next(
            m
            for m in slack.thread(account["channel_id"], bot.flow("prod")["parent_ts"])
            if "Veeam reports" in (m.get("text") or "")
        )
        body = json.dumps(message["blocks"])
        assert "Microsoft.Authorization/locks/write" in body
        assert "Microsoft.KeyVault" in body and "az provider register" in body
        assert ids.ACTION_PERMISSIONS_RECHECK in body
        assert "MissingPermissions" in bot.command("show prod")

        # someone fixes it; Recheck asks once more and the thread says so
        sp = ms.service_principal(account["app_id"])
        ms.grant(sp, SUB1, "User Access Administrator")
        vb.missing_providers = {}
        status, _ = bot.click(ids.ACTION_PERMISSIONS_RECHECK, str(account["id"]))
        assert status == 200
        bot.wait_thread("prod", "Veeam confirms")
        assert wait_for(
            lambda: json.loads(bot.flow("prod")["data"])["steps"].get("confirm") == "done",
            "the confirm step to be done",
        )
        assert len(vb.events_for(r"/checkPermissions$", "POST")) == len(asks) + 1
        # the same message was edited, not a new one posted
        answers = [
            m
            for m in slack.thread(account["channel_id"], bot.flow("prod")["parent_ts"])
            if "Veeam" in (m.get("text") or "")
            and ("confirms" in m["text"] or "reports" in m["text"])
        ]
        assert len(answers) == 1
        assert json.loads(account_row(bot, "prod")["permissions_state"]) == [
            "AllPermissionsAvailable"
        ]
        # a non-admin's click changes nothing
        bot.click(ids.ACTION_PERMISSIONS_RECHECK, str(account["id"]), user="U0NOBODY")
        assert [r["actor"] for r in bot.db.table("audit").rows_where("outcome = 'refused'")] == [
            "U0NOBODY"
        ]
        assert len(vb.events_for(r"/checkPermissions$", "POST")) == len(asks) + 1
    finally:
        bot.close()


def test_renewal_keeps_the_custom_role(vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble) -> None:
    sign_in(vbot, f"create prod --subscription {SUB1} --roles least-privilege")
    vbot.wait_state("prod", "done", timeout=30)
    account = account_row(vbot, "prod")
    [role] = ms.custom_roles()
    before = [
        (ra.name, ra.role_definition_id) for ra in custom_role_of(ms, account["app_id"], SUB1)[1]
    ]
    assert "Renewing" in vbot.command("renew prod")
    approve_next(vbot, 2)
    wait_renew(vbot, "done")
    assert [r.id for r in ms.custom_roles()] == [role.id]
    after = [
        (ra.name, ra.role_definition_id) for ra in custom_role_of(ms, account["app_id"], SUB1)[1]
    ]
    assert after == before


# --------------------------------------------------------------------------- without an appliance


def test_shipped_list_without_an_appliance(bot: Bot, ms: MicrosoftDouble) -> None:
    sign_in(bot, f"create prod --subscription {SUB1} --roles least-privilege")
    bot.wait_state("prod", "done", timeout=30)
    account = account_row(bot, "prod")
    [role] = ms.custom_roles()
    expected = permissions.shipped(bot.config.veeam_purposes)
    assert sorted(role.actions) == sorted(expected.actions)
    assert sorted(role.data_actions) == sorted(expected.data_actions)
    _, assigned = custom_role_of(ms, account["app_id"], SUB1)
    assert CONTRIBUTOR not in {ra.role_definition_id for ra in assigned}
    assert "VBAzure 8.1" in bot.wait_thread("prod", "custom role")


def test_uncovered_purposes_without_an_appliance_are_refused_up_front(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    bot = Bot({**env, "VEEAM_PURPOSES": "VirtualMachineBackup,WorkerManagement"}, slack, ms)
    try:
        answer = bot.command(f"create prod --subscription {SUB1} --roles least-privilege")
        assert "cannot be made here" in answer and "WorkerManagement" in answer
        assert ms.flows == [] and list(bot.db.table("flows").rows) == []
    finally:
        bot.close()


def test_prerequisites_ask_for_role_definition_write(bot: Bot, ms: MicrosoftDouble) -> None:
    upn = "rbac@contoso.onmicrosoft.com"
    ms.add_user(upn)
    ms.set_allowed_to_create_apps(ms.user(upn).tenant_id, True)
    ms.grant(upn, SUB1, "Role Based Access Control Administrator")
    sign_in(bot, f"create prod --subscription {SUB1} --roles least-privilege", user=upn)
    bot.wait_state("prod", "blocked", timeout=20)
    bot.wait_thread("prod", "Prerequisites")
    assert "lacks Microsoft.Authorization/roleDefinitions/write" in thread_blocks(bot, "prod")
    assert ms.custom_roles() == [] and ms.applications == []


def test_failure_after_the_custom_role_rolls_it_back(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.fault(
        "arm",
        "PUT",
        rf"/subscriptions/{SUB2}/providers/Microsoft.Authorization/roleAssignments/",
        403,
        body={"error": {"code": "AuthorizationFailed", "message": "no"}},
        times=10,
    )
    sign_in(bot, f"create prod --subscription {SUB1} --subscription {SUB2} --roles least-privilege")
    flow = bot.wait_state("prod", "rolled_back", timeout=30)
    assert ms.custom_roles() == []
    assert not any(ra.principal_type == "ServicePrincipal" for ra in ms.role_assignments), (
        "the custom role's assignments go before the role"
    )
    text = bot.wait_thread("prod", "Rolled back")
    assert "custom role" in text
    account = bot.db.table("accounts").get(flow["account_id"])
    assert account["state"] == "rolled_back"


def test_a_taken_role_name_is_explained(
    bot: Bot, ms: MicrosoftDouble, ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.flows.provision as provision_module

    # Someone already made a custom role (another GUID) with the name this creation picks.
    taken = "Veeam Backup for Azure - other (taken)"
    with ca.httpx_client(timeout=5) as http:
        answer = http.put(
            f"{ms.arm_url}/subscriptions/{SUB1}/providers/Microsoft.Authorization/roleDefinitions/"
            "11111111-2222-3333-4444-555555555555",
            params={"api-version": "2022-04-01"},
            headers={"Authorization": f"Bearer {ms.token_for(ALICE_UPN, audience='arm')}"},
            json={
                "properties": {
                    "roleName": taken,
                    "type": "CustomRole",
                    "permissions": [{"actions": ["a/read"]}],
                    "assignableScopes": [f"/subscriptions/{SUB1}"],
                }
            },
        )
        assert answer.status_code == 201
    monkeypatch.setattr(provision_module, "custom_role_name", lambda account, guid: taken)
    sign_in(bot, f"create other --subscription {SUB1} --roles least-privilege")
    bot.wait_state("other", "rolled_back", timeout=30)
    assert "already has another custom role" in bot.wait_thread("other", "Rolled back")
    assert [r.name for r in ms.custom_roles()] == [taken]
    assert ms.applications == []


# --------------------------------------------------------------------------- a crash


def test_crash_after_the_custom_role_resumes_without_a_second_one(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    first = launch(
        env,
        tmp_path,
        procs,
        VEEAM_SA_CRASH_AT="after_role_definition",
        VEEAM_SA_ROLES="least-privilege",
    )
    create(first, slack, f"create prod --subscription {SUB1}")
    wait_until(lambda: len(ms.flows) == 1, what="device flow")
    ms.approve(ms.flows[0].user_code)
    assert first.proc is not None
    assert first.proc.wait(30) == -9  # killed right after the role was made
    [role] = ms.custom_roles()

    launch(env, tmp_path, procs, VEEAM_SA_ROLES="least-privilege")
    wait_until(lambda: thread_has(slack, "sign in again"), what="re-sign-in request")
    wait_until(lambda: len(ms.flows) == 2, what="second device flow")
    ms.approve(ms.flows[1].user_code)
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "done", timeout=40, what="creation to finish"
    )
    assert [r.id for r in ms.custom_roles()] == [role.id]  # the same definition, updated
    [app] = ms.applications
    _, assigned = custom_role_of(ms, app.app_id, SUB1)
    assert [ra.role_definition_id for ra in assigned] == [role.id]


def test_an_appliance_that_cannot_check_leaves_recheck(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble
) -> None:
    vb.fault("POST", r"/checkPermissions$", 400, times=1)
    sign_in(vbot, f"create prod --subscription {SUB1}")
    vbot.wait_state("prod", "done", timeout=30)
    wait_for(
        lambda: "could not check the permissions" in thread_blocks(vbot, "prod"),
        "the check's failure in the thread",
    )
    assert ids.ACTION_PERMISSIONS_RECHECK in thread_blocks(vbot, "prod")
    assert vbot.flow("prod")["state"] == "done"  # the account stands; only Veeam's word is missing
    account = account_row(vbot, "prod")
    vbot.click(ids.ACTION_PERMISSIONS_RECHECK, str(account["id"]))
    vbot.wait_thread("prod", "Veeam confirms")
