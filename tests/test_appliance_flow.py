"""The VBAzure appliance as the secret's consumer: hand-off on create, update on renew
before the old secret goes, sync after an outage, import of appliance-only accounts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.flows import expiry
from bot.slack import ids
from tests.fakes.microsoft import (
    ALICE_UPN,
    DEFAULT_SUBSCRIPTIONS,
    DEFAULT_TENANT_ID,
    MicrosoftDouble,
)
from tests.fakes.slack import SlackDouble
from tests.fakes.tls import TestCA
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble
from tests.harness import ADMIN, Bot
from tests.test_provision import sign_in
from tests.test_renew import alert, approve_next, wait_renew

SUB = DEFAULT_SUBSCRIPTIONS[0][0]
SUB_B = DEFAULT_SUBSCRIPTIONS[1][0]
EVERY_RUNNING_STATUS = ["Pending", "Running", "RunningWithWarning", "RunningWithError", "Canceling"]


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
    instance.services.appliance.poll_interval = 0.01  # the double's operations need no rest
    yield instance
    instance.close()


def created(bot: Bot, name: str = "prod") -> dict:
    sign_in(bot, f"create {name} --subscription {SUB}")
    bot.wait_state(name, "done", timeout=30)
    bot.wait_thread(name, "is ready")
    return dict(next(bot.db.table("accounts").rows_where("name = ?", [name])))


def test_create_hands_the_same_secret_to_the_appliance(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    account = created(vbot)
    app = ms.application(app_id=account["app_id"])
    [held] = vb.accounts.values()
    assert held["clientSecret"] == app.passwords[0].secret_text
    assert held["applicationId"] == app.app_id and held["tenantId"] == DEFAULT_TENANT_ID
    assert held["subscriptions"] == [SUB] and held["name"] == "prod"
    assert account["appliance_id"] == held["id"] and account["handoff"] == "done"
    parent = slack.message(account["channel_id"], vbot.flow("prod")["parent_ts"])
    text = json.dumps(parent["blocks"])
    assert "Hand the secret to Veeam" in text and held["id"] in text
    # what to do next: nothing, Veeam has it; and where the application is
    assert "nothing to do" in text and "secret show" not in text
    assert (
        f"https://portal.azure.com/{DEFAULT_TENANT_ID}/#view/Microsoft_AAD_RegisteredApps/"
        f"ApplicationMenuBlade/~/Overview/appId/{app.app_id}|open it in the Azure portal>"
    ) in text
    assert all(app.passwords[0].secret_text not in json.dumps(c.args) for c in slack.calls)


def test_renewal_updates_the_appliance_before_the_old_secret_goes(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble
) -> None:
    account = created(vbot)
    app = ms.application(app_id=account["app_id"])
    old_key = app.passwords[0].key_id
    ts = alert(vbot, account)
    vbot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
    approve_next(vbot, 2)
    wait_renew(vbot, "done")

    new = app.passwords[0]
    assert new.key_id != old_key and len(app.passwords) == 1
    [held] = vb.accounts.values()
    assert held["clientSecret"] == new.secret_text
    # the thread says what really happened: which secret, the appliance, the old one
    done = vbot.wait_thread("prod", "Renewed")
    assert f"(id `{new.key_id}`)" in done
    assert f"The Veeam appliance was updated: its account `{held['id']}` now uses the new secret" in done
    assert "was removed in Entra" in done
    offset = time.time() - time.monotonic()
    [update] = vb.events_for(r"updateByApp", "PUT")
    [removal] = [
        r
        for r in ms.requests
        if r.path.endswith("/removePassword") and r.body.get("keyId") == old_key
    ]
    assert update.time + offset < removal.time, (
        "the appliance got the new secret after the old one was removed"
    )


def test_appliance_failure_on_renew_keeps_the_old_secret(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble
) -> None:
    account = created(vbot)
    app = ms.application(app_id=account["app_id"])
    old = app.passwords[0]
    vb.fault("PUT", r"updateByApp", 403, times=5)
    assert "Renewing" in vbot.command("renew prod")
    approve_next(vbot, 2)
    flow = wait_renew(vbot, "failed")
    vbot.slack.wait_for(lambda c: "old secret is still in place" in c.args.get("text", ""))
    assert [p.key_id for p in app.passwords] == [old.key_id]
    assert next(iter(vb.accounts.values()))["clientSecret"] == old.secret_text
    replies = [m.get("text", "") for m in vbot.slack.thread(flow["channel_id"], flow["parent_ts"])]
    assert any("Veeam appliance" in r and "old secret is still in place" in r for r in replies), (
        replies
    )


def test_appliance_down_during_create_then_sync(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    vb.fault("POST", r"saveByApp", 503, times=10)
    account = created(vbot)
    assert account["state"] == "active" and account["handoff"] == "failed"
    assert len(ms.applications) == 1  # the Azure side stays: it is valid
    assert vb.accounts == {}
    assert "/veeam-sa sync prod" in vbot.wait_thread("prod", "handing it to Veeam failed")
    assert "hand-off to Veeam failed" in vbot.command("list")

    vb.faults.clear()
    mark = slack.mark()
    assert "Handing `prod`" in vbot.command("sync prod")
    reply = slack.wait_for("response_url", after=mark, timeout=10)
    assert "registered with the Veeam appliance" in json.dumps(reply.args)
    [held] = vb.accounts.values()
    assert held["clientSecret"] == ms.application(app_id=account["app_id"]).passwords[0].secret_text


def test_import_brings_appliance_accounts_under_watch(
    vbot: Bot, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    soon = (datetime.now(UTC) + timedelta(days=5)).isoformat(timespec="seconds")
    vb.add_account("legacy-backup", expirationDate=soon, tenantId=DEFAULT_TENANT_ID)
    mark = slack.mark()
    vbot.command("import")
    reply = slack.wait_for("response_url", after=mark, timeout=10)
    assert "legacy-backup" in json.dumps(reply.args)
    account = next(vbot.db.table("accounts").rows_where("name = 'legacy-backup'"))
    assert account["imported"] == 1
    result = expiry.scan(
        vbot.store, vbot.services.slack, vbot.config, datetime.now(UTC), sleep=lambda s: None
    )
    assert [d.account["name"] for d in result.due] == ["legacy-backup"] and result.posted == 1
    mark = slack.mark()
    vbot.command("import")
    assert "already managed" in json.dumps(
        slack.wait_for("response_url", after=mark, timeout=10).args
    )


def test_appliance_state_shows_in_list_and_disagreement_is_flagged(
    vbot: Bot, vb: VBAzureDouble
) -> None:
    account = created(vbot)
    vb.set_cloud_state(account["appliance_id"], "InvalidClientSecret")
    from bot.scheduler import run_scan

    run_scan(vbot.services)
    listing = vbot.command("list")
    assert (
        "Veeam: InvalidClientSecret" in listing and "Veeam reports InvalidClientSecret" in listing
    )
    assert "InvalidClientSecret" in vbot.command("show prod")


def test_without_an_appliance_nothing_of_this_runs(bot: Bot, ms: MicrosoftDouble) -> None:
    account = created(bot)
    assert account["handoff"] is None and account["appliance_id"] is None
    assert "No Veeam appliance is configured" in bot.command("sync prod")
    assert "No Veeam appliance is configured" in bot.command("import")
    flow = bot.flow("prod")
    assert "Hand the secret to Veeam" not in json.dumps(
        bot.slack.message(flow["channel_id"], flow["parent_ts"])
    )


# --------------------------------------------------------------------------- v8.1 as it is


def slow_appliance(vb: VBAzureDouble) -> None:
    """Every write and every read answers 202; operations pass through every in-progress
    status and end in Warning (done, with a warning)."""
    vb.async_save = True
    vb.async_reads = True
    vb.operation_statuses = list(EVERY_RUNNING_STATUS)
    vb.operation_outcome = "Warning"


def test_create_and_renew_when_operations_end_in_warning(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble
) -> None:
    slow_appliance(vb)
    account = created(vbot)
    [held] = vb.accounts.values()
    app = ms.application(app_id=account["app_id"])
    assert account["handoff"] == "done" and account["appliance_id"] == held["id"]
    assert held["clientSecret"] == app.passwords[0].secret_text

    assert "Renewing" in vbot.command("renew prod")
    approve_next(vbot, 2)
    wait_renew(vbot, "done")
    assert len(app.passwords) == 1  # the appliance holds the new one: the old went at once
    assert held["clientSecret"] == app.passwords[0].secret_text
    assert held["subscriptions"] == [SUB]
    statuses = vb.events_for(r"/operations/", "GET")
    assert len(statuses) >= 3 * len(EVERY_RUNNING_STATUS)  # save, read before update, update
    assert vb.internal_errors == []


def test_lost_save_answer_then_202_listing_creates_no_second_account(
    vbot: Bot, vb: VBAzureDouble
) -> None:
    vb.async_reads = True
    vb.fault("POST", r"saveByApp", 504, after_processing=True)  # the gateway lost the answer
    account = created(vbot)
    assert len(vb.accounts) == 1
    [held] = vb.accounts.values()
    assert account["appliance_id"] == held["id"] and account["handoff"] == "done"
    assert len(vb.events_for(r"saveByApp", "POST")) == 1


def test_import_and_sync_when_every_read_answers_202(
    vbot: Bot, vb: VBAzureDouble, slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    account = created(vbot)
    vb.add_account("legacy-a", tenantId=DEFAULT_TENANT_ID, subscriptions=[SUB])
    vb.add_account("legacy-cert", tenantId=DEFAULT_TENANT_ID, origin="Imported Certificate")
    slow_appliance(vb)
    vb.total_count_null = True

    mark = slack.mark()
    vbot.command("import")
    reply = json.dumps(slack.wait_for("response_url", after=mark, timeout=10).args)
    assert "legacy-a" in reply and "Left alone" in reply and "legacy-cert" in reply
    imported = next(vbot.db.table("accounts").rows_where("name = 'legacy-a'"))
    assert json.loads(imported["subscriptions"]) == [SUB]
    assert not list(vbot.db.table("accounts").rows_where("name = 'legacy-cert'"))

    mark = slack.mark()
    vbot.command("sync prod")
    reply = json.dumps(slack.wait_for("response_url", after=mark, timeout=10).args)
    assert "registered with the Veeam appliance" in reply
    held = vb.accounts[account["appliance_id"]]
    assert held["clientSecret"] == ms.application(app_id=account["app_id"]).passwords[0].secret_text
    assert held["subscriptions"] == [SUB]


def existing_application(ms: MicrosoftDouble, ca: TestCA, days_left: int) -> tuple[str, str]:
    """An application made outside the bot (as VBAzure's own wizard would): its client id
    and its one secret, which ends in `days_left` days."""
    headers = {"Authorization": f"Bearer {ms.token_for(ALICE_UPN, 'graph')}"}
    with ca.httpx_client(timeout=10) as http:
        app = http.post(
            f"{ms.graph_url}/v1.0/applications",
            json={"displayName": "legacy-backup", "signInAudience": "AzureADMyOrg"},
            headers=headers,
        ).json()
        http.post(
            f"{ms.graph_url}/v1.0/servicePrincipals", json={"appId": app["appId"]}, headers=headers
        ).raise_for_status()
        end = (datetime.now(UTC) + timedelta(days=days_left)).isoformat(timespec="seconds")
        password = http.post(
            f"{ms.graph_url}/v1.0/applications/{app['id']}/addPassword",
            json={"passwordCredential": {"displayName": "vbazure", "endDateTime": end}},
            headers=headers,
        )
        password.raise_for_status()
    return str(app["appId"]), str(password.json()["secretText"])


def test_imported_account_keeps_its_subscriptions_and_purposes_through_renewal(
    vbot: Bot, vb: VBAzureDouble, ms: MicrosoftDouble, slack: SlackDouble, ca: TestCA
) -> None:
    app_id, old_secret = existing_application(ms, ca, days_left=5)
    end = ms.application(app_id=app_id).passwords[0].end
    appliance_id = vb.add_account(
        "legacy-backup",
        applicationId=app_id,
        tenantId=DEFAULT_TENANT_ID,
        clientSecret=old_secret,
        subscriptions=[SUB, SUB_B],
        purposes=["VirtualMachineBackup", "AzureSqlBackup"],  # not VEEAM_PURPOSES
        origin="Imported Secret",
        expirationDate=datetime.fromtimestamp(end, UTC).isoformat(timespec="seconds"),
    )
    slow_appliance(vb)

    mark = slack.mark()
    vbot.command("import")
    assert "legacy-backup" in json.dumps(slack.wait_for("response_url", after=mark).args)
    account = dict(next(vbot.db.table("accounts").rows_where("name = 'legacy-backup'")))

    result = expiry.scan(
        vbot.store, vbot.services.slack, vbot.config, datetime.now(UTC), sleep=lambda s: None
    )
    [due] = result.due
    assert due.account["name"] == "legacy-backup" and due.days_left in (4, 5)
    ts = str(slack.calls_to("chat.postMessage", channel=due.channel)[-1].response["ts"])
    vbot.click(ids.ACTION_RENEW, str(account["id"]), message_ts=ts)
    approve_next(vbot, 1)
    wait_renew(vbot, "done", name="legacy-backup")

    held = vb.accounts[appliance_id]
    app = ms.application(app_id=app_id)
    [new] = app.passwords  # the old one went once the appliance had the new one
    assert new.secret_text != old_secret and held["clientSecret"] == new.secret_text
    assert held["subscriptions"] == [SUB, SUB_B]
    assert held["purposes"] == ["VirtualMachineBackup", "AzureSqlBackup"]
    assert held["cloudState"] == "Valid"
    [update] = vb.events_for(r"updateByApp", "PUT")
    assert update.account_id == appliance_id
