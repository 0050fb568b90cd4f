"""`/veeam-sa create … --tenant ID|DOMAIN`: the account is created in a tenant the signed-in
person reaches as a guest, through a sign-in against that tenant's own authority."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from bot.core.config import BUILTIN_ROLES
from bot.core.errors import CommandError
from bot.slack import ids
from bot.slack.grammar import parse
from tests.fakes.microsoft import (
    ALICE_UPN,
    APPLICATION_DEVELOPER,
    DEFAULT_SUBSCRIPTIONS,
    DEFAULT_TENANT_ID,
    MicrosoftDouble,
    Tenant,
)
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import text_inputs
from tests.harness import ADMIN, OTHER, Bot
from tests.process import BotProcess, create, flow_row, launch, wait_until
from tests.test_renew import wait_renew

FABRIKAM_DOMAIN = "fabrikam.onmicrosoft.com"
SUB_B = "bbbbbbbb-0000-4000-8000-000000000001"
DEFAULT_ROLE_IDS = {
    BUILTIN_ROLES["Contributor"],
    BUILTIN_ROLES["Key Vault Crypto User"],
    BUILTIN_ROLES["Storage Queue Data Contributor"],
}


def fabrikam(ms: MicrosoftDouble) -> Tenant:
    """A second tenant where Alice (a member of the default tenant) is a guest who may
    register applications and owns one subscription."""
    tenant = ms.add_tenant(display_name="Fabrikam", domain=FABRIKAM_DOMAIN)
    guest = ms.add_guest(ms.alice, tenant.id, directory_roles=[APPLICATION_DEVELOPER])
    ms.add_subscription(SUB_B, name="Fabrikam production", tenant_id=tenant.id)
    ms.grant(guest, SUB_B, "Owner")
    return tenant


def wait_flows(ms: MicrosoftDouble, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ms.flows) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(ms.flows) >= count, f"{len(ms.flows)} device flows, wanted {count}"


def start(bot: Bot, text: str) -> None:
    name = text.split()[1]
    before = len(bot.ms.flows)
    assert "Starting" in bot.command(text)
    wait_flows(bot.ms, before + 1)
    bot.wait_state(name, "awaiting_sign_in")
    bot.ms.approve(bot.ms.flows[-1].user_code, ALICE_UPN)


def test_grammar_takes_a_tenant_id_or_domain() -> None:
    assert parse("create prod --tenant Fabrikam.onmicrosoft.com").tenant == FABRIKAM_DOMAIN
    tid = "AAAAAAAA-1111-2222-3333-444444444444"
    assert parse(f"create prod --tenant={tid}").tenant == tid.lower()
    assert parse("create prod").tenant is None
    for bad in ("create prod --tenant not_a_domain", "create prod --tenant a.b --tenant c.d"):
        with pytest.raises(CommandError):
            parse(bad)


@pytest.mark.parametrize("by", ["domain", "id"])
def test_account_created_in_the_guest_tenant(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble, by: str
) -> None:
    tenant = fabrikam(ms)
    named = FABRIKAM_DOMAIN if by == "domain" else tenant.id
    start(bot, f"create prod --tenant {named} --subscription {SUB_B}")
    # the first sign-in landed in the home tenant: one more, against Fabrikam's authority
    wait_flows(ms, 2)
    assert ms.flows[0].tenant == "organizations"
    assert ms.flows[1].tenant == tenant.id
    bot.wait_thread("prod", "One more sign-in, to that tenant")
    ms.approve(ms.flows[1].user_code, ALICE_UPN)
    flow = bot.wait_state("prod", "done", timeout=30)

    apps = ms.applications
    assert [(a.display_name, a.tenant_id) for a in apps] == [("prod", tenant.id)]
    sp = ms.service_principal(apps[0].app_id)
    assert sp is not None and sp.tenant_id == tenant.id
    assigned = {(ra.subscription_id, ra.role_definition_id) for ra in ms.assignments_for(sp.id)}
    assert assigned == {(SUB_B, r) for r in DEFAULT_ROLE_IDS}
    assert not [a for a in apps if a.tenant_id == DEFAULT_TENANT_ID]  # nothing at home
    account = bot.db.table("accounts").get(flow["account_id"])
    assert account["tenant_id"] == tenant.id and account["state"] == "active"
    bot.wait_thread("prod", "is ready")  # posted after the summary
    parent = slack.message(flow["channel_id"], flow["parent_ts"])
    assert f"Fabrikam `{tenant.id}`" in json.dumps(parent["blocks"])
    audit = {r["action"]: r for r in bot.db.table("audit").rows}
    assert json.loads(audit["sign_in.tenant"]["detail"])["tenant_id"] == tenant.id
    assert json.loads(audit["sign_in.completed"]["detail"])["tenant_id"] == tenant.id


def test_subscriptions_offered_are_the_chosen_tenants(bot: Bot, ms: MicrosoftDouble) -> None:
    tenant = fabrikam(ms)
    start(bot, f"create prod --tenant {FABRIKAM_DOMAIN}")
    wait_flows(ms, 2)
    ms.approve(ms.flows[1].user_code, ALICE_UPN)
    flow = bot.wait_state("prod", "choosing", timeout=20)
    visible = [s["id"] for s in json.loads(flow["data"])["visible"]]
    assert visible == [SUB_B]  # Fabrikam's, none of the home tenant's
    assert json.loads(flow["data"])["identity"]["tenant_id"] == tenant.id


def test_a_tenant_out_of_reach_is_refused_with_nothing_created(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    fabrikam(ms)
    ms.add_tenant(display_name="Northwind", domain="northwind.onmicrosoft.com")
    start(bot, "create prod --tenant northwind.onmicrosoft.com")
    bot.wait_state("prod", "failed", timeout=20)
    text = bot.wait_thread("prod", "cannot reach tenant")
    assert "northwind.onmicrosoft.com" in text and FABRIKAM_DOMAIN in text
    assert len(ms.flows) == 1  # no sign-in to a tenant the account is not in
    assert ms.applications == [] and ms.deleted_applications == []


def test_another_person_at_the_second_sign_in_is_refused(bot: Bot, ms: MicrosoftDouble) -> None:
    tenant = fabrikam(ms)
    bob = ms.add_user("bob@contoso.onmicrosoft.com", name="Bob Operator")
    ms.add_guest(bob, tenant.id, directory_roles=[APPLICATION_DEVELOPER])
    start(bot, f"create prod --tenant {tenant.id} --subscription {SUB_B}")
    wait_flows(ms, 2)
    ms.approve(ms.flows[1].user_code, bob.upn)
    bot.wait_state("prod", "failed", timeout=20)
    assert ms.applications == []


def test_failure_in_the_guest_tenant_rolls_back_there(bot: Bot, ms: MicrosoftDouble) -> None:
    tenant = fabrikam(ms)
    ms.fault(
        "arm",
        "PUT",
        r"/roleAssignments/",
        403,
        body={"error": {"code": "AuthorizationFailed", "message": "no"}},
        times=10,
    )
    start(bot, f"create prod --tenant {tenant.id} --subscription {SUB_B}")
    wait_flows(ms, 2)
    ms.approve(ms.flows[1].user_code, ALICE_UPN)
    flow = bot.wait_state("prod", "rolled_back", timeout=30)
    assert ms.applications == []
    assert [a.tenant_id for a in ms.deleted_applications] == [tenant.id]
    assert bot.db.table("accounts").get(flow["account_id"])["tenant_id"] == tenant.id


def test_crash_in_the_guest_tenant_resumes_there(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    tenant = fabrikam(ms)
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs, VEEAM_SA_CRASH_AT="after_application")
    create(first, slack, f"create prod --tenant {FABRIKAM_DOMAIN} --subscription {SUB_B}")
    wait_until(lambda: len(ms.flows) == 1, what="device flow")
    ms.approve(ms.flows[0].user_code, ALICE_UPN)
    wait_until(lambda: len(ms.flows) == 2, what="sign-in to the guest tenant")
    ms.approve(ms.flows[1].user_code, ALICE_UPN)
    assert first.proc is not None
    assert first.proc.wait(30) == -9  # killed at the crash point
    assert [a.tenant_id for a in ms.applications] == [tenant.id]

    launch(env, tmp_path, procs)
    wait_until(lambda: len(ms.flows) == 3, what="re-sign-in after the restart")
    assert ms.flows[2].tenant == tenant.id  # straight to the chosen tenant's authority
    ms.approve(ms.flows[2].user_code, ALICE_UPN)
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "done", timeout=40, what="creation to finish"
    )
    apps = ms.applications
    assert [a.tenant_id for a in apps] == [tenant.id] and len(apps[0].passwords) == 1
    sp = ms.service_principal(apps[0].app_id)
    assert sp is not None and len(ms.assignments_for(sp.id)) == 3
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT tenant_id, state FROM accounts").fetchall()
    finally:
        conn.close()
    assert rows == [(tenant.id, "active")]


def test_the_create_form_takes_a_tenant(bot: Bot, slack: SlackDouble) -> None:
    mark = slack.mark()
    assert bot.command(f"create --tenant {FABRIKAM_DOMAIN}") == ""
    view = slack.wait_for("views.open", after=mark).response["view"]
    fields = {b["block_id"]: b["element"] for b in view["blocks"] if b["type"] == "input"}
    assert fields[ids.FORM_TENANT]["initial_value"] == FABRIKAM_DOMAIN

    refused = bot.submit_view(view["id"], text_inputs(name="prod", tenant="not a tenant"))
    assert refused["closed"] is False and set(refused["errors"]) == {ids.FORM_TENANT}
    assert bot.ms.flows == []
    done = bot.submit_view(view["id"], text_inputs(name="prod", tenant=FABRIKAM_DOMAIN.upper()))
    assert done == {"closed": True, "errors": {}}
    flow = bot.wait_state("prod", "awaiting_sign_in")
    assert json.loads(flow["data"])["tenant_request"] == FABRIKAM_DOMAIN


def test_renewal_signs_in_to_the_tenant_the_account_lives_in(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    tenant = fabrikam(ms)
    start(bot, f"create prod --tenant {tenant.id} --subscription {SUB_B}")
    wait_flows(ms, 2)
    ms.approve(ms.flows[1].user_code, ALICE_UPN)
    bot.wait_state("prod", "done", timeout=30)

    assert "Renewing" in bot.command("renew prod")
    wait_flows(ms, 3)
    assert ms.flows[2].tenant == "organizations"
    ms.approve(ms.flows[2].user_code, ALICE_UPN)
    wait_flows(ms, 4)  # the home sign-in is not the account's tenant: one more, there
    assert ms.flows[3].tenant == tenant.id
    ms.approve(ms.flows[3].user_code, ALICE_UPN)
    wait_renew(bot, "done")
    [app] = ms.applications
    assert app.tenant_id == tenant.id and len(app.passwords) == 2


def chooser(bot: Bot, slack: SlackDouble, name: str) -> dict:
    flow = bot.wait_state(name, "choosing_tenant", timeout=20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for message in slack.thread(flow["channel_id"], flow["parent_ts"]):
            if message.get("text", "").startswith("Choose the tenant"):
                return message
        time.sleep(0.02)
    raise AssertionError("no tenant chooser")


def test_chooser_offers_each_tenant_with_its_app_registration_state(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    tenant = fabrikam(ms)
    northwind = ms.add_tenant(display_name="Northwind", domain="northwind.onmicrosoft.com")
    ms.add_guest(ms.alice, northwind.id)  # a guest without an application role
    start(bot, f"create prod --subscription {SUB_B}")
    message = chooser(bot, slack, "prod")
    buttons = {
        b["accessory"]["value"].split(":")[1]: b["text"]["text"]
        for b in message["blocks"]
        if b.get("accessory", {}).get("action_id") == ids.ACTION_CHOOSE_TENANT
    }
    # home first, then by name
    assert list(buttons) == [DEFAULT_TENANT_ID, tenant.id, northwind.id]
    assert "may register applications: holds Global Administrator" in buttons[DEFAULT_TENANT_ID]
    assert "may register applications: holds Application Developer" in buttons[tenant.id]
    assert "may not register applications" in buttons[northwind.id]
    assert "guest" in buttons[northwind.id]
    flow = bot.flow("prod")

    status, _ = bot.click(ids.ACTION_CHOOSE_TENANT, f"{flow['id']}:{tenant.id}", user=OTHER)
    assert status == 200
    assert bot.flow("prod")["state"] == "choosing_tenant"
    bot.click(ids.ACTION_CHOOSE_TENANT, f"{flow['id']}:{tenant.id}", user=ADMIN)
    wait_flows(ms, 2)
    assert ms.flows[1].tenant == tenant.id
    ms.approve(ms.flows[1].user_code, ALICE_UPN)
    bot.wait_state("prod", "done", timeout=30)
    assert [a.tenant_id for a in ms.applications] == [tenant.id]
    chosen = slack.message(flow["channel_id"], message["ts"])
    assert "chose tenant *Fabrikam*" in json.dumps(chosen["blocks"])
    audit = {r["action"]: json.loads(r["detail"]) for r in bot.db.table("audit").rows}
    assert audit["sign_in.tenant_offered"]["tenants"] == [DEFAULT_TENANT_ID, tenant.id, northwind.id]
    assert audit["sign_in.tenant_chosen"]["tenant_id"] == tenant.id


def test_choosing_the_home_tenant_needs_no_other_sign_in(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    fabrikam(ms)
    start(bot, "create prod --subscription " + DEFAULT_SUBSCRIPTIONS[0][0])
    chooser(bot, slack, "prod")
    flow = bot.flow("prod")
    bot.click(ids.ACTION_CHOOSE_TENANT, f"{flow['id']}:{DEFAULT_TENANT_ID}", user=ADMIN)
    bot.wait_state("prod", "done", timeout=30)
    assert len(ms.flows) == 1
    assert [a.tenant_id for a in ms.applications] == [DEFAULT_TENANT_ID]


def test_a_guest_without_an_application_role_is_told_what_to_ask_for(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    tenant = fabrikam(ms)
    ms.in_tenant(ms.alice, tenant.id).directory_roles.clear()  # type: ignore[union-attr]
    start(bot, f"create prod --tenant {tenant.id} --subscription {SUB_B}")
    wait_flows(ms, 2)
    ms.approve(ms.flows[1].user_code, ALICE_UPN)
    bot.wait_state("prod", "blocked", timeout=20)
    bot.wait_thread("prod", "Prerequisites")
    flow = bot.flow("prod")
    text = json.dumps([m.get("blocks") for m in bot.slack.thread(flow["channel_id"], flow["parent_ts"])])
    assert "guest in this tenant" in text and "Application Developer" in text
    assert ms.applications == []


def test_cancel_while_choosing_the_tenant(bot: Bot, ms: MicrosoftDouble, slack: SlackDouble) -> None:
    tenant = fabrikam(ms)
    start(bot, "create prod")
    chooser(bot, slack, "prod")
    flow = bot.flow("prod")
    bot.command("cancel")
    bot.wait_state("prod", "cancelled")
    mark = slack.mark()
    bot.click(ids.ACTION_CHOOSE_TENANT, f"{flow['id']}:{tenant.id}", user=ADMIN)
    # the click's own answer (the cancel may still be closing the chooser as it comes)
    slack.wait_for(
        lambda c: c.method == "response_url"
        and "is cancelled; nothing to choose" in json.dumps(c.args),
        after=mark,
    )
    assert len(ms.flows) == 1 and ms.applications == []
