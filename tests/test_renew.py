"""Renewal from the alert's Renew button and from `/veeam-sa renew NAME`."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta

from bot import expiry, ids
from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, CHANNEL, OTHER, Bot
from tests.test_provision import sign_in

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


def managed(bot: Bot, name: str = "prod") -> dict:
    sign_in(bot, f"create {name} --subscription {SUB}")
    bot.wait_state(name, "done", timeout=30)
    return dict(next(bot.db.table("accounts").rows_where("name = ?", [name])))


def alert(bot: Bot, account: dict) -> str:
    """Run the expiry scan as if a week were left; returns the alert's ts."""
    secret = next(
        bot.db.table("secrets").rows_where("account_id = ? AND state = 'active'", [account["id"]])
    )
    end = datetime.fromisoformat(secret["end_at"])
    result = expiry.scan(
        bot.store, bot.services.slack, bot.config, end - timedelta(days=6), sleep=lambda s: None
    )
    assert result.posted == 1
    return str(bot.slack.calls_to("chat.postMessage")[-1].response["ts"])


def approve_next(bot: Bot, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(bot.ms.flows) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(bot.ms.flows) >= count
    bot.ms.approve(bot.ms.flows[count - 1].user_code)


def renew_flow(bot: Bot, name: str = "prod") -> dict:
    rows = list(
        bot.db.table("flows").rows_where(
            "name = ? AND kind = 'renew'", [name], order_by="created_at desc"
        )
    )
    assert rows
    return dict(rows[0])


def wait_renew(bot: Bot, state: str, name: str = "prod", timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    flow: dict = {}
    while time.monotonic() < deadline:
        try:
            flow = renew_flow(bot, name)
        except AssertionError:
            flow = {}
        if flow.get("state") == state:
            return flow
        time.sleep(0.02)
    raise AssertionError(f"renewal did not reach {state}: {flow}")


def test_renew_button_rotates_the_secret(bot: Bot, ms: MicrosoftDouble, slack: SlackDouble) -> None:
    account = managed(bot)
    app = ms.application(app_id=account["app_id"])
    old_key = app.passwords[0].key_id
    ts = alert(bot, account)

    status, _ = bot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
    assert status == 200
    approve_next(bot, 2)
    flow = wait_renew(bot, "done")
    slack.wait_for(
        lambda c: c.method == "chat.postMessage" and "Renewed." in c.args.get("text", "")
    )
    assert flow["parent_ts"] == ts

    assert [p.key_id for p in app.passwords] != [old_key]
    assert len(app.passwords) == 1
    new = app.passwords[0]
    assert abs(new.end - (ms.now() + 365 * 86400)) <= 86400
    secrets = {s["key_id"]: s["state"] for s in bot.db.table("secrets").rows}
    assert secrets == {old_key: "retired", new.key_id: "active"}
    live = next(bot.db.table("secrets").rows_where("state = 'active'"))
    assert bot.cipher.decrypt(live["ciphertext"]) == new.secret_text
    # the new secret was proven with the client-credentials grant before the old one went
    assert any(login.app_id == account["app_id"] for login in ms.client_logins)
    message = slack.message(CHANNEL, ts)
    assert "renewed by <@U0ADMIN>" in json.dumps(message["blocks"])
    assert not any(b["type"] == "actions" for b in message["blocks"])
    # the code went only to the clicker, somewhere Slack shows it (the alert had no replies)
    code = ms.flows[1].user_code
    assert [m["where"] for m in slack.seen_by(ADMIN) if code in m["text"]] == ["ephemeral"]
    assert all(code not in json.dumps(m) for m in slack.messages())
    assert any("Waiting for <@U0ADMIN>" in m["text"] for m in slack.thread(CHANNEL, ts))
    assert all(new.secret_text not in json.dumps(c.args) for c in slack.calls)
    actions = [r["action"] for r in bot.db.table("audit").rows]
    assert "renew.requested" in actions and "renew.completed" in actions


def test_non_admin_and_forged_ids_change_nothing(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    account = managed(bot)
    ts = alert(bot, account)
    flows_before = bot.db.table("flows").count

    bot.click(ids.ACTION_RENEW, str(account["id"]), user=OTHER, message_ts=ts)
    refusal = slack.wait_for("response_url")
    assert "only the bot's admins" in json.dumps(refusal.args)

    for forged in ("999", "1; DROP TABLE accounts", ""):
        mark = slack.mark()
        bot.click(ids.ACTION_RENEW, forged, user=ADMIN, message_ts=ts)
        answer = slack.wait_for("response_url", after=mark)
        assert "not managed by this bot" in json.dumps(answer.args)
    assert bot.db.table("flows").count == flows_before
    assert len(ms.flows) == 1


def test_two_clicks_start_one_renewal(bot: Bot, ms: MicrosoftDouble, slack: SlackDouble) -> None:
    slack.add_user("U0ADMIN2", name="second-admin")
    account = managed(bot)
    ts = alert(bot, account)
    barrier = threading.Barrier(2)
    results: list[int] = []

    def click(user: str) -> None:
        barrier.wait()
        status, _ = bot.click(ids.ACTION_RENEW, str(account["id"]), user=user, message_ts=ts)
        results.append(status)

    threads = [
        threading.Thread(target=click, args=(ADMIN,)),
        threading.Thread(target=click, args=(ADMIN,)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200]
    told = slack.wait_for("response_url")
    assert "already renewing" in json.dumps(told.args)
    assert bot.db.table("flows").count_where("kind = 'renew'") == 1
    approve_next(bot, 2)
    wait_renew(bot, "done")
    assert len(ms.application(app_id=account["app_id"]).passwords) == 1


def test_unproven_new_secret_keeps_the_old_one(bot: Bot, ms: MicrosoftDouble) -> None:
    account = managed(bot)
    app = ms.application(app_id=account["app_id"])
    old_key = app.passwords[0].key_id
    ms.new_secret_delay = 1000
    bot.services.renew.proof_budget = 1.5
    assert "Renewing `prod`" in bot.command("renew prod")
    approve_next(bot, 2)
    wait_renew(bot, "failed")
    bot.slack.wait_for(lambda c: "old secret is still in place" in c.args.get("text", ""))
    assert [p.key_id for p in app.passwords] == [old_key]
    states = {s["key_id"]: s["state"] for s in bot.db.table("secrets").rows}
    assert states[old_key] == "active"
    assert list(states.values()).count("active") == 1
    flow = renew_flow(bot)
    replies = [m.get("text", "") for m in bot.slack.thread(flow["channel_id"], flow["parent_ts"])]
    assert any("old secret is still in place" in r for r in replies), replies


def test_renew_command_for_an_unknown_name(bot: Bot) -> None:
    assert "no managed service account `ghost`" in bot.command("renew ghost")
    assert bot.db.table("flows").count == 0


def test_list_and_show(bot: Bot) -> None:
    managed(bot, "alpha")
    listing = bot.command("list")
    assert "alpha" in listing and "valid" in listing
    detail = bot.command("show alpha")
    assert "create.completed" in detail and "azure.secret" in detail
    assert "only the bot's admins" in bot.command("list", user=OTHER)
    assert "no managed service account `beta`" in bot.command("show beta")


def test_renewal_code_reaches_a_clicker_outside_the_alert_channel(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    """The clicker may not be a member of the alert channel: the code then goes by DM."""
    account = managed(bot)
    ts = alert(bot, account)
    slack.channel_members[CHANNEL] = {OTHER}
    status, _ = bot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
    assert status == 200
    deadline = time.monotonic() + 10
    while len(ms.flows) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    code = ms.flows[1].user_code
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        code in m["text"] for m in slack.seen_by(ADMIN)
    ):
        time.sleep(0.02)
    assert [m["where"] for m in slack.seen_by(ADMIN) if code in m["text"]] == ["dm"]
    assert any("direct message" in m["text"] for m in slack.thread(CHANNEL, ts))
