"""Renewal from the alert's Renew button and from `/veeam-sa renew NAME`."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta

from bot.flows import expiry
from bot.slack import ids
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
    return str(bot.slack.calls_to("chat.postMessage", channel=CHANNEL)[-1].response["ts"])


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


def retire_flow(bot: Bot, name: str = "prod") -> dict:
    rows = list(
        bot.db.table("flows").rows_where(
            "name = ? AND kind = 'retire'", [name], order_by="created_at desc"
        )
    )
    assert rows
    return dict(rows[0])


def wait_retire(bot: Bot, state: str, name: str = "prod", timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    flow: dict = {}
    while time.monotonic() < deadline:
        rows = list(
            bot.db.table("flows").rows_where(
                "name = ? AND kind = 'retire'", [name], order_by="created_at desc"
            )
        )
        flow = dict(rows[0]) if rows else {}
        if flow.get("state") == state:
            return flow
        time.sleep(0.02)
    raise AssertionError(f"retirement did not reach {state}: {flow}")


def secret_states(bot: Bot) -> dict[str, str]:
    return {s["key_id"]: s["state"] for s in bot.db.table("secrets").rows}


def retire_offer(bot: Bot, channel: str, thread_ts: str) -> dict:
    """The renewal's thread message that carries the remove-the-old-one button."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for message in bot.slack.thread(channel, thread_ts):
            if ids.ACTION_RETIRE_OLD_SECRET in json.dumps(message.get("blocks", [])):
                return message
        time.sleep(0.02)
    raise AssertionError("no message offers to remove the old secret")


def age_secret(bot: Bot, ms: MicrosoftDouble, key_id: str, days_left: float) -> dict:
    """Make a secret one that was added about a year ago: `days_left` days to go, in Entra
    and in the bot's records alike."""
    for app in ms.applications:
        for password in app.passwords:
            if password.key_id == key_id:
                password.end = ms.now() + days_left * 86400
                end = datetime.fromtimestamp(password.end, UTC).isoformat(timespec="seconds")
    row = next(bot.db.table("secrets").rows_where("key_id = ?", [key_id]))
    bot.db.table("secrets").update(row["id"], {"end_at": end})
    return dict(next(bot.db.table("secrets").rows_where("key_id = ?", [key_id])))


def test_renewal_without_an_appliance_keeps_the_old_secret_until_veeam_has_the_new_one(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    account = managed(bot)
    app = ms.application(app_id=account["app_id"])
    old = app.passwords[0]
    old_row = age_secret(bot, ms, old.key_id, 5)
    ts = alert(bot, account)

    status, _ = bot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
    assert status == 200
    approve_next(bot, 2)
    flow = wait_renew(bot, "done")
    assert flow["parent_ts"] == ts

    # added and proven, and the old secret is still live in Entra: Veeam still uses it
    assert len(app.passwords) == 2
    new = next(p for p in app.passwords if p.key_id != old.key_id)
    assert abs(new.end - (ms.now() + 365 * 86400)) <= 86400
    assert any(login.app_id == account["app_id"] for login in ms.client_logins)
    assert secret_states(bot) == {old.key_id: "retiring", new.key_id: "active"}
    live = next(bot.db.table("secrets").rows_where("state = 'active'"))
    assert bot.cipher.decrypt(live["ciphertext"]) == new.secret_text

    # the thread says where the new secret is and how to put it into Veeam
    offer = retire_offer(bot, CHANNEL, ts)
    text = json.dumps(offer["blocks"])
    assert "veeam-sa-bot secret show prod" in text
    assert "*Service Accounts*" in text and "*Edit*" in text and "*Secret*" in text
    assert "still live" in text and "/veeam-sa retire prod" in text
    [button] = [e for b in offer["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert button["text"]["text"] == "Veeam has the new secret — remove the old one"
    assert button["value"] == str(old_row["id"])
    alert_text = json.dumps(slack.message(CHANNEL, ts)["blocks"])
    assert "renewed by <@U0ADMIN>" in alert_text and "stays live" in alert_text
    # the code went only to the clicker, somewhere Slack shows it (the alert had no replies)
    code = ms.flows[1].user_code
    assert [m["where"] for m in slack.seen_by(ADMIN) if code in m["text"]] == ["ephemeral"]
    assert all(code not in json.dumps(m) for m in slack.messages())
    assert any("Waiting for <@U0ADMIN>" in m["text"] for m in slack.thread(CHANNEL, ts))
    assert all(new.secret_text not in json.dumps(c.args) for c in slack.calls)

    # list and show name both secrets
    for shown in (bot.command("list"), bot.command("show prod")):
        assert "old secret `" in shown and "still live, retire it after updating Veeam" in shown

    # the expiry scan follows the new secret: nothing about the old one, even near its end
    old_end = datetime.fromisoformat(old_row["end_at"])
    quiet = expiry.scan(
        bot.store, bot.services.slack, bot.config, old_end - timedelta(days=3), sleep=lambda s: None
    )
    assert quiet.due == [] and quiet.posted == 0
    # ... until the old one comes within the last threshold of its own end: said once
    for _ in range(2):
        expiry.scan(
            bot.store,
            bot.services.slack,
            bot.config,
            old_end - timedelta(hours=12),
            sleep=lambda s: None,
        )
    reminders = [m for m in slack.thread(CHANNEL, ts) if "is still live and expires" in m["text"]]
    assert len(reminders) == 1

    # press it: the clicker signs in, the old secret goes, the thread says so
    mark = slack.mark()
    bot.click(ids.ACTION_RETIRE_OLD_SECRET, button["value"], user=ADMIN, message_ts=offer["ts"])
    approve_next(bot, 3)
    retire = wait_retire(bot, "done")
    assert retire["parent_ts"] == ts
    code = slack.calls_to("chat.postEphemeral")[-1]
    assert code.args["user"] == ADMIN and "remove the old secret of `prod`" in code.args[
        "text"
    ] + json.dumps(code.args["blocks"])
    assert [p.key_id for p in app.passwords] == [new.key_id]
    assert secret_states(bot) == {old.key_id: "retired", new.key_id: "active"}
    slack.wait_for(
        lambda c: c.method == "chat.update" and "was removed in Entra" in json.dumps(c.args),
        after=mark,
    )
    updated = slack.message(CHANNEL, offer["ts"])
    assert not any(b["type"] == "actions" for b in updated["blocks"])
    assert "Only the new secret" in json.dumps(updated["blocks"])
    assert "still live" not in bot.command("list")
    actions = [r["action"] for r in bot.db.table("audit").rows]
    assert {"renew.requested", "renew.completed", "retire.requested", "retire.completed"} <= set(
        actions
    )


def test_remove_the_old_one_is_for_admins_and_only_for_an_old_secret(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    account = managed(bot)
    app = ms.application(app_id=account["app_id"])
    assert "Renewing" in bot.command("renew prod")
    approve_next(bot, 2)
    flow = wait_renew(bot, "done")
    offer = retire_offer(bot, flow["channel_id"], flow["parent_ts"])
    [old_id] = [
        e["value"] for b in offer["blocks"] if b["type"] == "actions" for e in b["elements"]
    ]
    current = next(bot.db.table("secrets").rows_where("state = 'active'"))

    bot.click(ids.ACTION_RETIRE_OLD_SECRET, old_id, user=OTHER, message_ts=offer["ts"])
    assert "only the bot's admins" in json.dumps(slack.wait_for("response_url").args)
    arabic_indic = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    for forged in (
        str(current["id"]),
        "999",
        "1; DROP TABLE secrets",
        "",
        old_id.translate(arabic_indic),  # int() reads these as the old secret's id
        "9" * 5000,
    ):
        mark = slack.mark()
        bot.click(ids.ACTION_RETIRE_OLD_SECRET, forged, user=ADMIN, message_ts=offer["ts"])
        answer = slack.wait_for("response_url", after=mark)
        assert "not an old secret of a managed account" in json.dumps(answer.args)
    assert bot.db.table("flows").count_where("kind = 'retire'") == 0
    assert len(app.passwords) == 2 and len(ms.flows) == 2
    refusals = [r for r in bot.db.table("audit").rows if r["action"] == "retire.refused"]
    assert len(refusals) == 1

    # typed instead of clicked: same rules, same outcome
    assert "no managed service account `ghost`" in bot.command("retire ghost")
    assert "only the bot's admins" in bot.command("retire prod", user=OTHER)
    assert "Removing the old secret of `prod`" in bot.command("retire prod")
    approve_next(bot, 3)
    wait_retire(bot, "done")
    assert [p.key_id for p in app.passwords] == [current["key_id"]]
    assert "no old secret waiting to be removed" in bot.command("retire prod")
    # a button pressed again after the old secret is gone is refused
    mark = slack.mark()
    bot.click(ids.ACTION_RETIRE_OLD_SECRET, old_id, user=ADMIN, message_ts=offer["ts"])
    assert "not an old secret" in json.dumps(slack.wait_for("response_url", after=mark).args)


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
    # one new secret; the old one stays until Veeam has the new one
    assert len(ms.application(app_id=account["app_id"]).passwords) == 2


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
    assert "*1 managed service account*" in listing  # one, not "1 … accounts"
    detail = bot.command("show alpha")
    # history in plain words, each at a time Slack shows in the reader's own zone
    history = json.loads(detail.split("\n", 1)[1])[-1]["text"]["text"]
    assert "create.completed" not in history and "sign_in" not in history
    assert re.search(r"<!date\^\d+\^\{date_short_pretty\} \{time\}\|[^>]+> · <@U0ADMIN> asked for it", history)
    assert "<@U0ADMIN> signed in as alice@" in history
    assert re.search(r"secret added, expires <!date\^\d+\^", history)
    assert history.endswith("· ready")
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
    slack.wait_for(
        lambda c: c.method == "chat.postMessage"
        and c.args.get("thread_ts") == ts
        and "direct message" in c.args.get("text", "")
    )
