"""Drift watch: the health check finds what was changed behind the bot's back (a role
assignment, the secret, the application, the appliance's view), alerts once per account
and kind, and Repair restores it; drift that goes away by itself edits its alert."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from apscheduler.schedulers.base import STATE_RUNNING

from bot import scheduler as bot_scheduler
from bot.core.pacing import RateLimiter
from bot.flows import accounts as account_views
from bot.flows.stats import DatabaseCollector
from bot.slack import ids
from storage import queries
from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.tls import TestCA
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble
from tests.harness import ADMIN, CHANNEL, OTHER, Bot
from tests.test_renew import approve_next, managed, sign_in

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


def drift_alerts(slack: SlackDouble) -> list[dict]:
    """Every drift alert posted (as first posted)."""
    return [
        c.args
        for c in slack.calls_to("chat.postMessage")
        if ids.ACTION_REPAIR_DRIFT in json.dumps(c.args.get("blocks") or [])
        and not c.args.get("thread_ts")
    ]


def alert_ts(slack: SlackDouble) -> str:
    [call] = [
        c
        for c in slack.calls_to("chat.postMessage")
        if ids.ACTION_REPAIR_DRIFT in json.dumps(c.args.get("blocks") or [])
    ]
    return str(call.response["ts"])


def text_of(message: dict) -> str:
    return message.get("text", "") + json.dumps(message.get("blocks") or [], ensure_ascii=False)


def repair_flow(bot: Bot, state: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    flow: dict = {}
    while time.monotonic() < deadline:
        rows = list(bot.db.table("flows").rows_where("kind = 'repair'", order_by="created_at desc"))
        flow = dict(rows[0]) if rows else {}
        if flow.get("state") == state:
            return flow
        time.sleep(0.02)
    raise AssertionError(f"repair did not reach {state}: {flow}")


def repair(bot: Bot, ts: str, drift_id: int, flows_before: int) -> dict:
    status, _ = bot.click(ids.ACTION_REPAIR_DRIFT, str(drift_id), user=ADMIN, message_ts=ts)
    assert status == 200
    approve_next(bot, flows_before + 1)
    return repair_flow(bot, "done")


def health_of(bot: Bot, name: str = "prod") -> str:
    return str(next(bot.db.table("accounts").rows_where("name = ?", [name]))["health_state"])


def only_drift(bot: Bot) -> dict:
    [row] = list(bot.db.table("drifts").rows)
    return dict(row)


def test_a_healthy_account_is_never_alerted(bot: Bot, ms: MicrosoftDouble, slack: SlackDouble) -> None:
    account = managed(bot)
    for _ in range(3):
        result = bot.services.health.run()
        assert result.checked == 1 and result.states["healthy"] == 1 and result.alerted == 0
    assert drift_alerts(slack) == []
    assert health_of(bot) == "healthy"
    # it read as the application itself, and wrote nothing in the tenant
    assert sum(1 for c in ms.client_logins if c.app_id == account["app_id"]) >= 3
    writes = [
        r
        for r in ms.requests
        if r.method in ("PUT", "PATCH", "POST", "DELETE") and r.server != "login"
    ]
    before = len(writes)
    bot.services.health.run()
    after = [
        r
        for r in ms.requests
        if r.method in ("PUT", "PATCH", "POST", "DELETE") and r.server != "login"
    ]
    assert len(after) == before
    listed = [r for r in ms.requests if "roleAssignments" in r.path and r.method == "GET"]
    assert listed and all(
        r.query.get("$filter") == f"principalId eq '{account['sp_id']}'" for r in listed
    )
    # list, show and the metrics say so
    assert "healthy" in bot.command("list") and "Health: :large_green_circle: healthy" in bot.command(
        "show prod"
    )
    collector = DatabaseCollector(bot.store, bot.services.clock)
    [family] = [f for f in collector.collect() if f.name == "veeam_sa_accounts_by_health"]
    assert {s.labels["state"]: s.value for s in family.samples}["healthy"] == 1
    assert account_views.health_summary(bot.store)["counts"]["healthy"] == 1


def test_a_removed_role_assignment_is_alerted_once_and_repair_assigns_it_again(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    account = managed(bot)
    assert ms.remove_role_assignment(account["sp_id"], SUB, "Key Vault Crypto User") == 1
    for _ in range(2):
        bot.services.health.run()
    [posted] = drift_alerts(slack)
    text = text_of(posted)
    assert "`prod`*: role assignments are missing" in text
    assert f"on subscription `{SUB}`: Key Vault Crypto User is no longer assigned" in text
    assert "First seen" in text and "last healthy check" in text
    assert posted["channel"] == CHANNEL
    assert health_of(bot) == "drift"
    assert "drift: role assignments are missing" in bot.command("list")
    assert "role assignments are missing" in bot.command("show prod")

    ts = alert_ts(slack)
    drift = only_drift(bot)
    # only admins may repair
    bot.click(ids.ACTION_REPAIR_DRIFT, str(drift["id"]), user=OTHER, message_ts=ts)
    assert not list(bot.db.table("flows").rows_where("kind = 'repair'"))

    flows = len(ms.flows)
    repair(bot, ts, drift["id"], flows)
    roles = {ra.role_definition_id for ra in ms.assignments_for(account["sp_id"])}
    assert ms.role_id("Key Vault Crypto User") in roles and len(roles) == 3
    edited = text_of(slack.message(CHANNEL, ts))
    assert "*repaired* by <@U0ADMIN>" in edited and ids.ACTION_REPAIR_DRIFT not in edited
    assert any("Repaired `prod`" in m["text"] for m in slack.thread(CHANNEL, ts))
    assert only_drift(bot)["state"] == "repaired" and health_of(bot) == "healthy"
    # the code went only to the clicker
    code = ms.flows[flows].user_code
    assert all(code not in json.dumps(m) for m in slack.messages())
    bot.services.health.run()
    assert len(drift_alerts(slack)) == 1


def test_a_deleted_secret_is_alerted_once_and_repair_adds_and_hands_off_a_new_one(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    account = managed(bot)
    app = ms.application(app_id=account["app_id"])
    old_hint = app.passwords[0].hint
    assert ms.remove_password_out_of_band(account["app_id"]) == 1
    for _ in range(2):
        bot.services.health.run()
    [posted] = drift_alerts(slack)
    text = text_of(posted)
    assert "`prod`*: Entra rejects its client secret" in text
    assert f"stored client secret `{old_hint}…`" in text and "AADSTS7000215" in text
    assert "removed or replaced outside the bot" in text

    ts = alert_ts(slack)
    repair(bot, ts, only_drift(bot)["id"], len(ms.flows))
    [new] = app.passwords
    live = list(bot.db.table("secrets").rows_where("state = 'active'"))
    assert [bot.cipher.decrypt(s["ciphertext"]) for s in live] == [new.secret_text]
    assert any(c.key_id == new.key_id for c in ms.client_logins)  # proven
    assert "*repaired* by <@U0ADMIN>" in text_of(slack.message(CHANNEL, ts))
    done = next(m["text"] for m in slack.thread(CHANNEL, ts) if "Repaired" in m["text"])
    assert "veeam-sa-bot secret show prod" in done and new.secret_text not in done
    assert all(new.secret_text not in json.dumps(c.args) for c in slack.calls)
    bot.services.health.run()
    assert len(drift_alerts(slack)) == 1 and health_of(bot) == "healthy"


def test_drift_that_goes_away_by_itself_edits_its_alert(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    account = managed(bot)
    ms.remove_role_assignment(account["sp_id"], SUB, "Storage Queue Data Contributor")
    bot.services.health.run()
    ts = alert_ts(slack)
    ms.grant(account["sp_id"], SUB, "Storage Queue Data Contributor")
    result = bot.services.health.run()
    assert result.cleared == 1 and result.alerted == 0
    edited = text_of(slack.message(CHANNEL, ts))
    assert "*cleared by itself*" in edited and ids.ACTION_REPAIR_DRIFT not in edited
    assert only_drift(bot)["state"] == "cleared"
    # the Repair button of a closed drift does nothing
    bot.click(ids.ACTION_REPAIR_DRIFT, str(only_drift(bot)["id"]), user=ADMIN, message_ts=ts)
    assert not list(bot.db.table("flows").rows_where("kind = 'repair'"))
    # the same drift again later: a new alert
    ms.remove_role_assignment(account["sp_id"], SUB, "Storage Queue Data Contributor")
    bot.services.health.run()
    assert len(drift_alerts(slack)) == 2


def test_microsoft_unreachable_leaves_the_account_unknown_and_unalerted(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    managed(bot)
    bot.services.health.run()
    ms.fault("login", "POST", r"/oauth2/v2.0/token", status=429, retry_after=0, times=10)
    result = bot.services.health.run()
    assert result.states["unknown"] == 1 and drift_alerts(slack) == []
    assert health_of(bot) == "unknown"


# -- with a VBAzure appliance ------------------------------------------------------------


@pytest.fixture
def vb(ca: TestCA) -> Iterator[VBAzureDouble]:
    with VBAzureDouble(ca) as dbl:
        yield dbl


@pytest.fixture
def vbot(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, vb: VBAzureDouble
) -> Iterator[Bot]:
    instance = Bot(
        {**env, "VEEAM_URL": vb.url, "VEEAM_USERNAME": DEFAULT_USERNAME, "VEEAM_PASSWORD": DEFAULT_PASSWORD},
        slack,
        ms,
    )
    assert instance.services.appliance is not None
    instance.services.appliance.poll_interval = 0.01
    yield instance
    instance.close()


def test_a_deleted_application_is_recreated_and_the_appliance_account_updated(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    account = managed(vbot)
    [held] = vb.accounts.values()
    assert held["applicationId"] == account["app_id"]
    ms.delete_application_out_of_band(account["app_id"])
    for _ in range(2):
        vbot.services.health.run()
    [posted] = drift_alerts(slack)
    text = text_of(posted)
    assert "`prod`*: its application is gone from Entra" in text
    assert f"no application with client id `{account['app_id']}`" in text and "AADSTS700016" in text

    ts = alert_ts(slack)
    repair(vbot, ts, only_drift(vbot)["id"], len(ms.flows))
    row = dict(next(vbot.db.table("accounts").rows_where("name = 'prod'")))
    assert row["app_id"] != account["app_id"]
    app = ms.application(app_id=row["app_id"])
    assert app is not None and app.display_name == "prod"
    [password] = app.passwords
    # the same appliance account now holds the new application and secret
    assert list(vb.accounts) == [held["id"]] and row["appliance_id"] == held["id"]
    [updated] = vb.accounts.values()
    assert updated["applicationId"] == row["app_id"] and updated["clientSecret"] == password.secret_text
    roles = {ra.role_definition_id for ra in ms.assignments_for(row["sp_id"])}
    assert len(roles) == 3
    assert "*repaired* by <@U0ADMIN>" in text_of(slack.message(CHANNEL, ts))
    vbot.services.health.run()
    assert len(drift_alerts(slack)) == 1 and health_of(vbot) == "healthy"


def test_the_appliance_reporting_an_invalid_secret_is_alerted_and_repaired(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    managed(vbot)
    [held] = vb.accounts.values()
    vb.set_cloud_state(held["id"], "InvalidClientSecret")
    vbot.services.health.run()
    [posted] = drift_alerts(slack)
    text = text_of(posted)
    assert "Veeam reports the account is not valid" in text
    assert "cloudState is `InvalidClientSecret` (expected `Valid`)" in text
    repair(vbot, alert_ts(slack), only_drift(vbot)["id"], len(ms.flows))
    assert vb.accounts[held["id"]]["cloudState"] == "Valid"
    assert only_drift(vbot)["state"] == "repaired"


# -- spreading and pacing ----------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_rate_limiter_never_hands_out_two_slots_closer_than_its_gap() -> None:
    clock = FakeTime()
    limiter = RateLimiter(4, clock=clock.monotonic, sleep=clock.sleep)
    slots = []
    for _ in range(9):
        limiter.acquire()
        slots.append(clock.now)
    assert [b - a for a, b in zip(slots, slots[1:], strict=False)] == [0.25] * 8
    limiter.hold(3.0)  # a Retry-After
    limiter.acquire()
    assert clock.now - slots[-1] == pytest.approx(3.0)


def test_a_run_spreads_its_accounts_over_the_interval(bot: Bot) -> None:
    from bot.flows.health import SPREAD_SHARE, HealthCheck

    for n in range(4):
        queries.insert_account(
            bot.db,
            {
                "name": f"imported-{n}",
                "tenant_id": "t",
                "app_id": f"00000000-0000-0000-0000-00000000000{n}",
                "created_at": "2026-01-01T00:00:00+00:00",
                "state": "active",
                "imported": 1,
            },
        )
    clock = FakeTime()
    check = HealthCheck(bot.services.context, rate=10, sleep=clock.sleep, monotonic=clock.monotonic)
    result = check.run(interval_s=400)
    assert result.checked == 4 and result.states["unknown"] == 4  # no secret held: not provable
    # the checks start 400 × 0.9 / 4 = 90 s apart
    assert clock.sleeps == [pytest.approx(400 * SPREAD_SHARE / 4)] * 3


def test_the_scheduler_runs_the_health_check_as_its_own_job(bot: Bot) -> None:
    scheduler = bot_scheduler.start_scheduler(bot.services)
    try:
        assert scheduler.state == STATE_RUNNING
        job = scheduler.get_job(bot_scheduler.HEALTH_JOB_ID)
        assert job is not None and job.trigger.interval.total_seconds() == 24 * 3600
        assert job.args[1] is scheduler.stopping
    finally:
        scheduler.shutdown(wait=True)
    assert scheduler.stopping.is_set()


# -- `veeam-sa-bot check [NAME]` ------------------------------------------------------------


def test_the_check_command_reports_and_alerts_like_the_job(
    bot: Bot,
    ms: MicrosoftDouble,
    slack: SlackDouble,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path,
) -> None:
    from bot.cli import main

    account = managed(bot)
    monkeypatch.chdir(tmp_path)
    for key, value in bot.env.items():
        monkeypatch.setenv(key, value)
    assert main(["check", "prod"]) == 0
    assert "prod: healthy" in capsys.readouterr().out

    ms.remove_password_out_of_band(account["app_id"])
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "prod: drift — Entra rejects its client secret" in out and "AADSTS7000215" in out
    assert "1 alert(s) posted" in out
    assert len(drift_alerts(slack)) == 1
    assert main(["check", "prod"]) == 1
    assert len(drift_alerts(slack)) == 1  # still one alert

    assert main(["check", "nope"]) == 1
    assert "no managed service account 'nope'" in capsys.readouterr().err


def test_certificate_and_least_privilege_accounts_are_checked_as_what_they_are(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    # A certificate account proves itself with a signed client assertion (a certificate is
    # no client secret); a least-privilege account's own role is what it should hold.
    certs = managed_with(bot, "certs", "--credential certificate")
    lean = managed_with(bot, "lean", "--roles least-privilege")
    assert json.loads(lean["custom_role"])["id"]
    result = bot.services.health.run()
    assert result.states.get("healthy") == 2, result.lines
    assert drift_alerts(slack) == []
    assert any(
        c.app_id == certs["app_id"] for c in ms.client_logins
    ), "the certificate account was not proven as itself"

    assert ms.remove_certificate_out_of_band(certs["app_id"]) == 1
    bot.services.health.run()
    [posted] = drift_alerts(slack)
    text = text_of(posted)
    assert "certs" in text and "certificate" in text and "AADSTS700027" in text
    assert health_of(bot, "certs") == "drift" and health_of(bot, "lean") == "healthy"


def managed_with(bot: Bot, name: str, extra: str) -> dict:
    sign_in(bot, f"create {name} --subscription {SUB} {extra}")
    bot.wait_state(name, "done", timeout=30)
    return dict(next(bot.db.table("accounts").rows_where("name = ?", [name])))
