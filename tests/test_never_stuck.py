"""Every flow ends or says why: unexpected answers, failed writes, lost jobs, cancels.

Driven through signed slash commands and button clicks against the doubles; the failures are
the services' own (a JSON answer cut short after the request was carried out, Slack refusing
a post, SQLite refusing writes) or lost background jobs, found again by the watchdog.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest

from storage import queries
from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, Bot
from tests.test_provision import assert_provisioned, sign_in

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


def wait(predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def assert_ended_cleanly(bot: Bot, ms: MicrosoftDouble, name: str, creatable: str) -> None:
    flow = bot.wait_state(name, "failed", "rolled_back", timeout=30)
    text = bot.wait_thread(name, "reference `")
    assert "Something unexpected went wrong" in text
    assert ms.applications == [], [a.display_name for a in ms.applications]
    assert not any(ra.principal_type == "ServicePrincipal" for ra in ms.role_assignments)
    assert any(
        r["action"] == "create.failed" and json.loads(r["detail"])["flow"] == flow["id"]
        for r in bot.db.table("audit").rows
    )
    assert flow["error"].startswith("UnexpectedError:")  # the failures metric's label
    # nothing holds the name: it can be created again
    assert "Starting" in bot.command(f"create {creatable}")


@pytest.mark.parametrize(
    ("server", "method", "path"),
    [
        ("graph", "PATCH", r"/applications\(uniqueName="),
        ("graph", "POST", r"/servicePrincipals$"),
        ("graph", "POST", r"/addPassword$"),
        ("arm", "GET", r"/providers/Microsoft\.Authorization/permissions$"),
    ],
    ids=["application", "service-principal", "add-password", "permissions"],
)
def test_truncated_answer_at_each_step_ends_the_flow(
    bot: Bot, ms: MicrosoftDouble, server: str, method: str, path: str
) -> None:
    ms.fault(server, method, path, 200, truncate=True, times=1)
    sign_in(bot, f"create cut --subscription {SUB}")
    assert_ended_cleanly(bot, ms, "cut", f"cut --subscription {SUB}")


def test_truncated_subscription_list_ends_the_flow(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.fault("arm", "GET", r"^/subscriptions$", 200, truncate=True, times=1)
    sign_in(bot, "create cutlist")
    assert_ended_cleanly(bot, ms, "cutlist", "cutlist")


def test_slack_refusing_the_chooser_ends_the_flow(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    def post(args: dict[str, Any], token: str | None) -> dict[str, Any]:
        if "Create" in json.dumps(args.get("blocks") or []) and "multi_static_select" in json.dumps(
            args.get("blocks") or []
        ):
            return {"ok": False, "error": "invalid_blocks"}
        return {"ok": True, **slack._m_chat_postMessage(args, token)}

    slack.on("chat.postMessage", post)
    sign_in(bot, "create nochooser")
    flow = bot.wait_state("nochooser", "failed", timeout=30)
    assert "invalid_blocks" in flow["error"]
    assert ms.applications == []
    assert "Starting" in bot.command("create nochooser")


def read_only(bot: Bot, on: bool) -> None:
    """Make SQLite refuse every write on the bot's connections, as a read-only file would."""
    for db in list(bot.store._all):
        db.execute(f"PRAGMA query_only = {1 if on else 0}")


def test_failed_database_write_during_a_poll_recovers(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    """Sign-in succeeds while the database refuses writes: the poll's bookkeeping fails, is
    rescheduled (the code, now redeemed, is not polled again), and the flow goes on once
    writes work again."""
    bot = Bot({**env, "VEEAM_SA_WORKERS": "1"}, slack, ms)
    try:
        sign_in_started = len(ms.flows)
        assert "Starting" in bot.command(f"create diskfull --subscription {SUB}")
        wait(lambda: len(ms.flows) > sign_in_started, what="device flow")
        bot.wait_state("diskfull", "awaiting_sign_in")
        wait(
            lambda: any(r["action"] == "sign_in.started" for r in bot.db.table("audit").rows),
            what="the code sent",
        )
        read_only(bot, True)
        ms.approve(ms.flows[-1].user_code)
        wait(lambda: ms.flows[-1].state == "redeemed", what="sign-in redeemed")
        time.sleep(2.5)  # a failed write or two, rescheduled
        read_only(bot, False)
        bot.wait_state("diskfull", "done", timeout=60)
        assert_provisioned(bot, ms, "diskfull", [SUB])
        assert ms.flows[-1].outcomes.count("token") == 1
        assert "invalid_grant" not in ms.flows[-1].outcomes
    finally:
        read_only(bot, False)
        bot.close()


def lose_jobs(bot: Bot, flow_id: str) -> None:
    """Drop a flow's scheduled jobs, as a lost task would."""
    workers = bot.services.workers
    with workers._cond:
        for _, _, item in workers._heap:
            if item.args[:1] == (flow_id,):
                item.cancel()


def test_watchdog_resumes_a_sign_in_whose_poll_was_lost(bot: Bot, ms: MicrosoftDouble) -> None:
    assert "Starting" in bot.command(f"create lostpoll --subscription {SUB}")
    flow = bot.wait_state("lostpoll", "awaiting_sign_in")
    wait(lambda: bot.services.workers.has_work_for(flow["id"]), what="scheduled poll")

    def lost() -> bool:  # a poll running right now schedules the next one: drop that too
        lose_jobs(bot, flow["id"])
        return not bot.services.workers.has_work_for(flow["id"])

    wait(lost, what="the flow's jobs gone")
    assert bot.services.endings.watchdog(bot.services.clock() + timedelta(seconds=30)) == []
    acted = bot.services.endings.watchdog(bot.services.clock() + timedelta(minutes=10))
    assert acted == ["lostpoll: polling again"]
    ms.approve(ms.flows[-1].user_code)
    bot.wait_state("lostpoll", "done", timeout=30)


def test_watchdog_ends_a_lost_check(bot: Bot, ms: MicrosoftDouble) -> None:
    bob = "bob@contoso.onmicrosoft.com"
    ms.add_user(bob, name="Bob Operator")  # no right to assign roles: the checks park
    sign_in(bot, f"create stalled --subscription {SUB}", user=bob)
    flow = bot.wait_state("stalled", "blocked", timeout=30)
    wait(lambda: not bot.services.workers.has_work_for(flow["id"]), what="the check to end")
    # the Recheck job was lost on its way: the flow says checking, nothing runs
    assert queries.transition_flow(bot.db, flow["id"], ["blocked"], "checking")
    acted = bot.services.endings.watchdog(bot.services.clock() + timedelta(hours=1))
    assert acted == ["stalled: ended from checking"]
    bot.wait_state("stalled", "failed")
    assert "stopped in checking" in bot.wait_thread("stalled", "stopped in checking")
    assert "reference `" in bot.wait_thread("stalled", "reference `")
    assert ms.applications == []


def test_watchdog_closes_a_choice_nobody_made(bot: Bot, ms: MicrosoftDouble) -> None:
    sign_in(bot, "create undecided")
    flow = bot.wait_state("undecided", "choosing", timeout=30)
    wait(lambda: not bot.services.workers.has_work_for(flow["id"]), what="the check to end")
    assert bot.services.endings.watchdog(bot.services.clock() + timedelta(hours=2)) == []
    acted = bot.services.endings.watchdog(bot.services.clock() + timedelta(days=2))
    assert acted and acted[0].startswith("undecided: closed")
    bot.wait_state("undecided", "expired")
    assert "waited a day" in bot.wait_thread("undecided", "waited a day")


def test_a_job_that_raises_past_every_handler_ends_its_flow(bot: Bot) -> None:
    assert "Starting" in bot.command(f"create crashing --subscription {SUB}")
    flow = bot.wait_state("crashing", "awaiting_sign_in")

    def broken(flow_id: str) -> None:
        raise RuntimeError("a bug")

    bot.services.workers.submit(broken, flow["id"])
    bot.wait_state("crashing", "failed")
    assert "reference" in bot.wait_thread("crashing", "went wrong on the bot's side")


def test_cancel_during_provisioning_rolls_back(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    """`/veeam-sa cancel` while role assignments are being made: the flow stops at the next
    step boundary and rolls back what it created."""
    ms.fault(
        "arm",
        "PUT",
        r"/roleAssignments/",
        400,
        body={
            "error": {
                "code": "PrincipalNotFound",
                "message": "Principal abc does not exist in the directory def.",
            }
        },
        times=2,
    )
    sign_in(bot, f"create halfway --subscription {SUB}")
    wait(
        lambda: any("/roleAssignments/" in r.path for r in ms.requests),
        timeout=30,
        what="the first role assignment",
    )
    answer = bot.command("cancel")
    assert "Cancel" in answer
    flow = bot.wait_state("halfway", "cancelled", timeout=30)
    assert flow["state"] == "cancelled"
    assert ms.applications == []
    assert not any(ra.principal_type == "ServicePrincipal" for ra in ms.role_assignments)
    text = bot.wait_thread("halfway", "Rolled back")
    assert f"<@{ADMIN}>" in text
    assert any(r["action"] == "create.cancelled" for r in bot.db.table("audit").rows)
