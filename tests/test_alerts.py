"""Escalating expiry alerts, through the scheduler's job function (`scheduler.run_scan`)
against a real SQLite file and the Slack double: loud warnings broadcast and mention, one
digest per threshold and channel that is edited as its accounts are renewed, a stale Renew
that starts nothing, and an admin's Snooze that holds a warning and is audited."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from bot import scheduler
from bot.flows import expiry
from bot.flows.root import utcnow
from bot.slack import blocks, ids
from tests.fakes.blockkit import block_errors
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, CHANNEL, OTHER, Bot, bot_env
from tests.test_expiry import add_account
from tests.test_renew import approve_next, managed, wait_renew

ADMIN_GROUP = "S0ADMINS"
REQUESTER = "U0REQ"


class Clock:
    """The bot's clock: real time, shifted by the test."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    @property
    def now(self) -> datetime:
        return utcnow() + self.shift

    @now.setter
    def now(self, when: datetime) -> None:
        self.shift = when - utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alerts_bot(
    slack: SlackDouble, ms: MicrosoftDouble, tmp_path: Any, ca: Any, clock: Clock
) -> Iterator[Bot]:
    slack.usergroups[ADMIN_GROUP] = ["U0ADMIN2"]
    env = bot_env(slack, ms, tmp_path, ca.ca_pem_path, VEEAM_SA_ADMINS=f"{ADMIN},{ADMIN_GROUP}")
    instance = Bot(env, slack, ms, clock=clock)
    yield instance
    instance.close()


def scan_at(bot: Bot, clock: Clock, when: datetime) -> expiry.ScanResult:
    clock.now = when
    return scheduler.run_scan(bot.services)


def check_payloads(slack: SlackDouble) -> None:
    """Every message Slack holds passes Block Kit's rules and has at most one primary button."""
    for message in slack.messages():
        assert block_errors(message["blocks"]) == [], message["text"]
        primary = [
            e
            for b in message["blocks"]
            if b["type"] == "actions"
            for e in b["elements"]
            if e.get("style") == "primary"
        ]
        assert len(primary) <= 1, message["text"]


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def wait_edit(slack: SlackDouble, ts: str, fragment: str) -> dict[str, Any]:
    """The message once an edit containing `fragment` reached Slack (the renewal edits its
    warnings after it is recorded as done)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = slack.message(CHANNEL, ts)
        if message.get("edited") and fragment in json.dumps(message["blocks"]):
            return message
        time.sleep(0.02)
    raise AssertionError(f"message {ts} was not edited to show {fragment!r}: {message}")


def set_requester(bot: Bot, name: str, user: str) -> None:
    bot.db.execute("UPDATE accounts SET created_by = ? WHERE name = ?", [user, name])


def test_loud_warnings_are_broadcast_and_mention_the_requester_and_the_admins(
    alerts_bot: Bot, slack: SlackDouble, clock: Clock
) -> None:
    bot = alerts_bot
    end = clock.now + timedelta(days=40)
    add_account(bot.store, "prod", end, channel=CHANNEL)
    set_requester(bot, "prod", REQUESTER)
    calls = (f"<@{REQUESTER}>", f"<!subteam^{ADMIN_GROUP}>")

    for left in (timedelta(days=30), timedelta(days=14)):
        assert scan_at(bot, clock, end - left).posted == 1
    first, second = slack.calls_to("chat.postMessage", channel=CHANNEL)
    assert "reply_broadcast" not in second.args  # 14 days: a quiet reply in the thread
    quiet = json.dumps(first.args) + json.dumps(second.args)
    assert f"<!subteam^{ADMIN_GROUP}>" not in quiet and f"<@{REQUESTER}>" not in first.args["text"]
    parent = str(first.response["ts"])

    for left, threshold in (
        (timedelta(days=6), 7),
        (timedelta(hours=20), 1),
        (-timedelta(minutes=5), 0),
    ):
        result = scan_at(bot, clock, end - left)
        assert (result.posted, [d.threshold for d in result.due]) == (1, [threshold])
        reply = slack.calls_to("chat.postMessage", channel=CHANNEL)[-1]
        assert reply.ok and reply.args["thread_ts"] == parent
        assert reply.args["reply_broadcast"] is True
        assert all(c in reply.args["text"] for c in calls), reply.args["text"]  # notifications
        head = reply.args["blocks"][0]["text"]["text"]
        assert all(c in head for c in calls), head

    expired = slack.calls_to("chat.postMessage", channel=CHANNEL)[-1]
    said = json.dumps(expired.args["blocks"])
    assert "has *expired*" in said and "expired <!date^" in said and "expires <!date^" not in said
    # the channel shows the first warning and the three loud ones
    assert len(slack.channel_view(CHANNEL)) == 4
    assert [m["subtype"] for m in slack.channel_view(CHANNEL)[1:]] == ["thread_broadcast"] * 3
    # the parent shows the latest state, expired, with its Renew button and no Snooze
    top = slack.message(CHANNEL, parent)
    assert "has *expired*" in json.dumps(top["blocks"])
    assert [b["action_id"] for b in buttons(top)] == [ids.renew_action(1)]
    # one DM to the requester, at the 7-day mark only
    dms = slack.messages(slack.dm_channel(REQUESTER))
    assert len(dms) == 1 and "`prod`" in json.dumps(dms[0]["blocks"])
    check_payloads(slack)


def test_a_digest_of_fifty_stays_one_message_per_threshold_and_is_edited_after_a_renewal(
    alerts_bot: Bot, slack: SlackDouble, ms: MicrosoftDouble, clock: Clock
) -> None:
    bot = alerts_bot
    account = managed(bot)
    secret = next(bot.db.table("secrets").rows_where("account_id = ?", [account["id"]]))
    end = expiry.parse_time(secret["end_at"])
    for n in range(49):  # due just before the real account, which comes last
        add_account(bot.store, f"due-{n:02d}", end - timedelta(minutes=49 - n), channel=CHANNEL)
    mark = len(slack.channel_view(CHANNEL))
    bot.wait_thread("prod", "is ready")  # the create's last note is in
    posts_before = len(slack.calls_to("chat.postMessage", channel=CHANNEL))

    week = scan_at(bot, clock, end - timedelta(days=6))
    day = scan_at(bot, clock, end - timedelta(hours=20))
    assert (week.digests, week.posted, day.digests, day.posted) == (1, 1, 1, 1)
    posted = [m for m in slack.channel_view(CHANNEL)[mark:] if "secret" in m["text"]]
    assert len(posted) == 2  # one message per threshold, not 50 replies
    assert len(slack.calls_to("chat.postMessage", channel=CHANNEL)) == posts_before + 2
    assert all(not m.get("thread_ts") or m["thread_ts"] == m["ts"] for m in posted)
    seven, one = posted
    assert "50 client secrets need renewing within 7 days" in seven["text"]
    assert "50 client secrets need renewing within a day" in one["text"]
    assert f"<!subteam^{ADMIN_GROUP}>" in one["text"]
    assert len(buttons(one)) == 50
    assert [b.get("style") for b in buttons(one)].count("primary") == 1
    check_payloads(slack)

    renew = next(b for b in buttons(one) if b["value"] == str(account["id"]))
    block = next(b for b in one["blocks"] if renew in b.get("elements", []))
    flows_before = len(ms.flows)
    clock.shift = timedelta(0)  # back to today: the sign-in runs on the real clock
    status, _ = bot.click(
        renew["action_id"], renew["value"], message_ts=one["ts"], block_id=block["block_id"]
    )
    assert status == 200
    approve_next(bot, flows_before + 1)
    wait_renew(bot, "done")

    for digest in (seven, one):  # both digests listed prod: both are edited
        edited = wait_edit(slack, digest["ts"], "renewed by")
        text = json.dumps(edited["blocks"], ensure_ascii=False)
        assert f"~`prod`~ — renewed by <@{ADMIN}>" in text
        assert "(1 renewed since)" in text
        assert str(account["id"]) not in [b["value"] for b in buttons(edited)]
        assert len(buttons(edited)) == 49
    check_payloads(slack)

    # a stale Renew (the 7-day digest, drawn before the edit reached this client)
    renews = bot.db.table("flows").count_where("kind = 'renew'")
    mark = slack.mark()
    status, _ = bot.click(renew["action_id"], renew["value"], message_ts=seven["ts"])
    assert status == 200
    told = slack.wait_for("response_url", after=mark)
    assert "already renewed" in json.dumps(told.args) and told.args["response_type"] == "ephemeral"
    assert bot.db.table("flows").count_where("kind = 'renew'") == renews
    assert len(ms.flows) == flows_before + 1  # no new sign-in
    # another account of the digest still renews as before
    other = buttons(slack.message(CHANNEL, one["ts"]))[0]
    assert other["value"] != str(account["id"])


def test_snooze_holds_the_next_warning_until_it_ends_and_is_audited(
    alerts_bot: Bot, slack: SlackDouble, clock: Clock
) -> None:
    bot = alerts_bot
    start = clock.now
    end = start + timedelta(days=1, hours=2)
    add_account(bot.store, "prod", end, channel=CHANNEL)
    assert scan_at(bot, clock, start).posted == 1  # the 7-day warning
    warning = slack.calls_to("chat.postMessage", channel=CHANNEL)[-1]
    ts = str(warning.response["ts"])
    snooze = {b["action_id"]: b for b in buttons(slack.message(CHANNEL, ts))}
    assert ids.snooze_action("1d") in snooze
    assert snooze[ids.snooze_action("next")]["text"]["text"] == "Snooze until it expires"
    button = snooze[ids.snooze_action("1d")]

    # not an admin: refused, audited, nothing held
    mark = slack.mark()
    status, _ = bot.click(button["action_id"], button["value"], user=OTHER, message_ts=ts)
    assert status == 200
    assert slack.wait_for("response_url", after=mark).args["response_type"] == "ephemeral"
    assert (
        bot.db.table("audit").count_where("action = 'snooze.refused' AND actor = ?", [OTHER]) == 1
    )
    assert next(bot.db.table("secrets").rows)["snoozed_until"] is None

    status, _ = bot.click(button["action_id"], button["value"], message_ts=ts)
    assert status == 200
    slack.wait_for("chat.postMessage", thread_ts=ts)
    [audit] = bot.db.table("audit").rows_where("action = 'expiry.snoozed'")
    assert audit["actor"] == ADMIN and audit["target"] == "prod" and audit["outcome"] == "ok"
    assert json.loads(audit["detail"])["option"] == "1d"
    assert any("snoozed the warnings for `prod`" in m["text"] for m in slack.thread(CHANNEL, ts))

    held = scan_at(bot, clock, start + timedelta(hours=3))  # 23 hours left: the 1-day is due
    assert (held.posted, held.held) == (0, 1)
    before = len(slack.calls_to("chat.postMessage", channel=CHANNEL))
    sent = scan_at(bot, clock, start + timedelta(days=1, minutes=1))  # the snooze is over
    assert (sent.posted, sent.held, [d.threshold for d in sent.due]) == (1, 0, [1])
    reply = slack.calls_to("chat.postMessage", channel=CHANNEL)[before]
    assert reply.args["reply_broadcast"] is True and reply.args["thread_ts"] == ts
    check_payloads(slack)


def test_snooze_until_the_warning_after_next_and_forged_values(
    alerts_bot: Bot, slack: SlackDouble, clock: Clock
) -> None:
    bot = alerts_bot
    start = clock.now
    end = start + timedelta(days=13)
    add_account(bot.store, "prod", end, channel=CHANNEL)
    assert scan_at(bot, clock, start).posted == 1  # the 14-day warning
    ts = str(slack.calls_to("chat.postMessage", channel=CHANNEL)[-1].response["ts"])
    button = next(b for b in buttons(slack.message(CHANNEL, ts)) if b["action_id"].endswith("next"))
    assert button["text"]["text"] == "Snooze until 1 day left"

    mark = slack.mark()
    bot.click(button["action_id"], "1:forever", message_ts=ts)
    assert "nothing was changed" in json.dumps(slack.wait_for("response_url", after=mark).args)
    assert next(bot.db.table("secrets").rows)["snoozed_until"] is None

    bot.click(button["action_id"], button["value"], message_ts=ts)
    slack.wait_for("chat.postMessage", thread_ts=ts)
    assert scan_at(bot, clock, end - timedelta(days=6)).held == 1  # the 7-day one is held
    result = scan_at(bot, clock, end - timedelta(hours=23))  # 1 day left: the snooze ended
    assert [d.threshold for d in result.due] == [1] and result.posted == 1
    assert bot.db.table("notices").count_where("threshold = 7") == 0


def test_a_renewal_by_command_edits_the_warning_and_its_stale_renew_starts_nothing(
    alerts_bot: Bot, slack: SlackDouble, ms: MicrosoftDouble, clock: Clock
) -> None:
    bot = alerts_bot
    account = managed(bot)
    secret = next(bot.db.table("secrets").rows_where("account_id = ?", [account["id"]]))
    end = expiry.parse_time(secret["end_at"])
    assert scan_at(bot, clock, end - timedelta(days=6)).posted == 1
    # the warning's ts, as the scan recorded it (the create's last thread notes may land later)
    ts = str(next(bot.db.table("notices").rows_where("threshold = 7"))["ts"])
    [renew] = [
        b for b in buttons(slack.message(CHANNEL, ts)) if ids.RENEW_ACTION.search(b["action_id"])
    ]
    assert renew.get("style") == "primary"
    assert all(
        b.get("style") is None
        for b in buttons(slack.message(CHANNEL, ts))
        if b["action_id"] != renew["action_id"]
    )

    clock.shift = timedelta(0)
    flows_before = len(ms.flows)
    assert "Renewing `prod`" in bot.command("renew prod")
    approve_next(bot, flows_before + 1)
    wait_renew(bot, "done")
    edited = wait_edit(slack, ts, "was renewed by")
    assert buttons(edited) == []  # the warning's Renew and Snooze are gone

    mark = slack.mark()
    bot.click(renew["action_id"], renew["value"], message_ts=ts)
    told = slack.wait_for("response_url", after=mark)
    assert f"already renewed by <@{ADMIN}>" in json.dumps(told.args)
    assert len(ms.flows) == flows_before + 1
    assert bot.db.table("flows").count_where("kind = 'renew'") == 1
    check_payloads(slack)


def test_an_expired_digest_says_expired_not_expires() -> None:
    now = utcnow()
    items = [
        expiry.Due(
            secret_id=n,
            threshold=0,
            days_left=-2,
            end_at=now - timedelta(days=1, hours=n),
            account={"id": n, "name": f"gone-{n}", "app_id": "a", "created_by": REQUESTER},
            hint="abc",
            channel=CHANNEL,
        )
        for n in range(1, 8)
    ]
    payload = blocks.expiry_digest(items, now, calls=blocks.mentions([], [ADMIN_GROUP]))
    text = json.dumps(payload["blocks"], ensure_ascii=False)
    assert block_errors(payload["blocks"]) == []
    assert text.count("*expired* <!date^") == 7 and "expires" not in text
    assert payload["text"].startswith("7 client secrets need renewing — expired")
    assert f"<!subteam^{ADMIN_GROUP}>" in payload["text"]
    dm = blocks.requester_dm(items)
    assert block_errors(dm["blocks"]) == [] and "expired <!date^" in json.dumps(dm["blocks"])
