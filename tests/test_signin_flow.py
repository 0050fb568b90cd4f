"""`/veeam-sa create`, part 1: the device-code sign-in, driven by signed slash commands."""

from __future__ import annotations

import json
import threading
import time

import pytest

from bot.slack import ids
from tests.fakes.microsoft import (
    ALICE_UPN,
    DEFAULT_SUBSCRIPTIONS,
    DEFAULT_TENANT_ID,
    MicrosoftDouble,
)
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, CHANNEL, OTHER, Bot

SUB = DEFAULT_SUBSCRIPTIONS[0][0]
#: After sign-in the flow moves straight on to the checks and provisioning.
SIGNED_IN = ("signed_in", "checking", "blocked", "choosing", "provisioning", "done")


def wait_flow(ms: MicrosoftDouble, count: int = 1, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(ms.flows) >= count:
            return ms.flows[count - 1]
        time.sleep(0.02)
    raise AssertionError(f"only {len(ms.flows)} device flows started")


def start(bot: Bot, name: str = "prod-backup", extra: str = f" --subscription {SUB}"):  # type: ignore[no-untyped-def]
    before = len(bot.ms.flows)
    answer = bot.command(f"create {name}{extra}")
    assert "Starting" in answer
    device = wait_flow(bot.ms, before + 1)
    bot.wait_state(name, "awaiting_sign_in")
    return device


def test_happy_path_code_only_to_requester(
    bot: Bot, slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    device = start(bot)
    slack.wait_for("chat.postEphemeral", user=ADMIN)
    # Slack displayed the code to the requester (a threaded ephemeral to a fresh thread is not)
    (shown,) = [m for m in slack.seen_by(ADMIN) if device.user_code in m["text"]]
    assert shown["where"] == "ephemeral" and shown["channel"] == CHANNEL
    buttons = [e for b in shown["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons[0]["url"] == "https://microsoft.com/devicelogin"
    assert buttons[0]["text"]["text"] == "Open microsoft.com/devicelogin"
    assert buttons[1]["action_id"] == ids.ACTION_CANCEL_FLOW
    # the public thread says whom it waits for, without the code
    waiting = bot.wait_thread("prod-backup", "Waiting for")
    assert f"<@{ADMIN}>" in waiting and "privately" in waiting
    assert device.user_code not in waiting

    parent = slack.calls_to("chat.postMessage")[0]
    assert parent.args["channel"] == CHANNEL
    assert "prod-backup" in parent.args["text"] and f"<@{ADMIN}>" in parent.args["text"]

    ms.approve(device.user_code, ALICE_UPN)
    flow = bot.wait_state("prod-backup", *SIGNED_IN)
    text = bot.wait_thread("prod-backup", "Signed in as")
    assert ALICE_UPN in text and "Contoso" in text and DEFAULT_TENANT_ID in text
    # The code never went to the channel, and the device code is encrypted at rest
    for call in slack.calls_to("chat.postMessage") + slack.calls_to("chat.update"):
        assert device.user_code not in str(call.args)
    assert flow["device_flow"] is None
    assert device.device_code.encode() not in bot.store.path.read_bytes()
    actions = [r["action"] for r in bot.db.table("audit").rows]
    assert actions[:3] == ["create.requested", "sign_in.started", "sign_in.completed"]


def test_pending_then_slow_down_then_approval(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.script_next_flow(["pending", "pending", "slow_down", "approve"])
    device = start(bot)
    bot.wait_state("prod-backup", *SIGNED_IN, timeout=20)
    polls = device.poll_times
    assert len(polls) == 4
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 0.9
    assert gaps[2] >= 5.9  # slow_down added five seconds to the one-second interval


@pytest.mark.parametrize(
    ("step", "fragment", "code"),
    [
        ("decline", "declined", None),
        ("expire", "expired", "AADSTS70019"),
        ("bad_code", "did not recognise the sign-in code", "AADSTS70018"),
        (("aadsts", 53003), "Conditional Access policy in your tenant blocks", "AADSTS53003"),
        (("aadsts", 530033), "managed or compliant device", "AADSTS530033"),
        (("aadsts", 50076), "multi-factor authentication", "AADSTS50076"),
        (("aadsts", 50079), "multi-factor authentication", "AADSTS50079"),
        (("aadsts", 50020), "does not belong to the tenant", "AADSTS50020"),
        (("aadsts", 90002), "does not know the tenant", "AADSTS90002"),
        (("aadsts", 700016), "does not exist in this tenant", "AADSTS700016"),
        (("aadsts", 65001), "needs consent", "AADSTS65001"),
        (("aadsts", 65002), "needs consent", "AADSTS65002"),
        (("aadsts", 50126), "Microsoft refused the sign-in", "AADSTS50126"),
    ],
)
def test_each_error_gets_its_own_message(
    bot: Bot, ms: MicrosoftDouble, step: object, fragment: str, code: str | None
) -> None:
    ms.script_next_flow([step])
    start(bot)
    flow = bot.wait_state("prod-backup", "failed")
    text = bot.wait_thread("prod-backup", fragment)
    if code:
        assert code in text
    if step != "decline":
        assert "correlation id" in text
    assert "Traceback" not in text
    assert flow["device_flow"] is None
    assert bot.db.table("accounts").count == 0


def test_microsoft_unreachable_after_bounded_retries(bot: Bot, ms: MicrosoftDouble) -> None:
    bot.services.signin.transient_budget = 2.5
    ms.script_next_flow([("http", 503, None)])
    device = start(bot)
    bot.wait_state("prod-backup", "failed", timeout=20)
    assert "could not be reached or kept failing" in bot.wait_thread(
        "prod-backup", "could not be reached"
    )
    # MSAL itself replays a 5xx from its throttling cache for a few seconds, so not every retry
    # reaches the server; the flow still gives up once the budget is spent.
    assert len(device.poll_times) >= 1


def test_personal_account_is_refused(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    ms.add_user("bob@outlook.com", name="Bob Personal", personal=True)
    bot = Bot({**env, "VEEAM_SA_TENANT": "common"}, slack, ms)
    try:
        device = start(bot)
        ms.approve(device.user_code, "bob@outlook.com")
        bot.wait_state("prod-backup", "failed")
        text = bot.wait_thread("prod-backup", "personal Microsoft account")
        assert "work or school account" in text and "bob@outlook.com" in text
        assert [
            r["outcome"] for r in bot.db.table("audit").rows_where("action = 'sign_in.failed'")
        ] == ["personal"]
    finally:
        bot.close()


def test_guest_from_a_personal_account_is_refused(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.add_user(
        "carol_outlook.com#EXT#@contoso.onmicrosoft.com", name="Carol Guest", guest_idp="live.com"
    )
    device = start(bot)
    ms.approve(device.user_code, "carol_outlook.com#EXT#@contoso.onmicrosoft.com")
    bot.wait_state("prod-backup", "failed")
    assert "personal Microsoft account" in bot.wait_thread(
        "prod-backup", "personal Microsoft account"
    )


def test_cancel_by_button_and_refusal_for_others(
    bot: Bot, slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    slack.add_user("U0ADMIN2", name="second-admin")
    start(bot)
    flow = bot.flow("prod-backup")
    status, _ = bot.click(ids.ACTION_CANCEL_FLOW, flow["id"], user=OTHER)
    assert status == 200
    refusal = slack.wait_for("response_url")
    # the refusal says who may: the requester, and the admins by name
    assert "only <@U0ADMIN>, who started this, or an admin may do this" in str(refusal.args)
    assert "Ask <@U0ADMIN>." in str(refusal.args)
    assert "VEEAM_SA_ADMINS" not in str(refusal.args)
    assert refusal.args["replace_original"] is False  # the code's message stays for its owner
    assert bot.flow("prod-backup")["state"] == "awaiting_sign_in"

    mark = slack.mark()
    status, _ = bot.click(ids.ACTION_CANCEL_FLOW, flow["id"], user=ADMIN)
    assert status == 200
    bot.wait_state("prod-backup", "cancelled")
    assert "Cancelled by" in bot.wait_thread("prod-backup", "Cancelled by")
    # the code's message is replaced: no code, no Cancel
    replaced = slack.wait_for("response_url", after=mark)
    assert replaced.args["replace_original"] is True
    assert "Cancelled; this code no longer works" in replaced.args["text"]
    assert "actions" not in json.dumps(replaced.args["blocks"])
    # a Cancel pressed again (an older copy of the message) says what became of the flow
    mark = slack.mark()
    bot.click(ids.ACTION_CANCEL_FLOW, flow["id"], user=ADMIN)
    again = slack.wait_for("response_url", after=mark)
    assert again.args["replace_original"] is True
    assert "can't be cancelled" not in again.args["text"]
    assert "Cancelled; this code no longer works" in again.args["text"]
    # polling stopped: no poll after the cancel has settled
    polls = len(ms.flows[-1].poll_times)
    time.sleep(1.5)
    assert len(ms.flows[-1].poll_times) <= polls + 1


def test_cancel_by_command(bot: Bot) -> None:
    start(bot)
    assert "Cancelling" in bot.command("cancel")  # acked first; the answer follows
    bot.wait_state("prod-backup", "cancelled")
    told = bot.slack.wait_for("response_url", text="Cancelled: `prod-backup`.")
    assert told.args["response_type"] == "ephemeral"
    mark = bot.slack.mark()
    bot.command("cancel")
    bot.slack.wait_for("response_url", after=mark, text="You have nothing in progress to cancel.")


def test_non_admin_cannot_create(bot: Bot) -> None:
    answer = bot.command("create prod-backup", user=OTHER)
    assert "only the bot's admins" in answer
    assert bot.db.table("flows").count == 0


def test_name_in_flight_is_refused_with_a_pointer_to_renew(bot: Bot) -> None:
    start(bot)
    answer = bot.command("create PROD-backup")
    assert "already in progress" in answer and "renew" in answer


@pytest.mark.parametrize(
    "text",
    [
        "create --description",
        "create bad!name",
        "create ok --subscription nope",
        "create ok --region x",
        "create 'x",
        "wat",
    ],
)
def test_bad_command_text_writes_nothing(bot: Bot, slack: SlackDouble, text: str) -> None:
    answer = bot.command(text)
    assert answer.startswith(":warning:")
    assert bot.db.table("flows").count == 0
    assert bot.db.table("audit").count == 0
    assert slack.calls_to("chat.postMessage") == []


def test_bot_not_in_channel_tells_the_requester(bot: Bot, slack: SlackDouble) -> None:
    slack.fail("chat.postMessage", error="not_in_channel")
    bot.command("create prod-backup")
    bot.wait_state("prod-backup", "failed")
    note = slack.wait_for("chat.postEphemeral", user=ADMIN)
    assert "/invite @veeam-sa" in note.args["text"]


def test_code_falls_back_to_a_dm(bot: Bot, slack: SlackDouble, ms: MicrosoftDouble) -> None:
    slack.fail("chat.postEphemeral", error="user_not_in_channel")
    device = start(bot)
    dm = slack.wait_for(
        lambda c: c.method == "chat.postMessage" and device.user_code in str(c.args)
    )
    assert dm.args["channel"] == slack.dm_channel(ADMIN)
    assert "direct message" in bot.wait_thread("prod-backup", "direct message")


def test_two_hundred_pending_flows_keep_polling_with_bounded_threads(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    ms.device_interval = 2
    def bot_threads() -> int:
        # The doubles run in this process too; count only what the bot starts: its worker
        # pool and timer ("veeam-sa-*") and Bolt's listener pool ("ThreadPoolExecutor-*").
        return sum(1 for t in threading.enumerate() if t.name.startswith(("veeam-sa", "ThreadPoolExecutor")))

    baseline = bot_threads()
    for n in range(200):
        if n == 0:
            ms.script_next_flow([("http", 429, 30)])
        assert "Starting" in bot.command(f"create acct-{n}")
    wait_flow(ms, 200, timeout=60)
    peak = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        peak = max(peak, bot_threads())
        if all(len(f.poll_times) >= 2 for f in ms.flows[1:]):
            break
        time.sleep(0.1)
    stalled = [f.user_code for f in ms.flows[1:] if len(f.poll_times) < 2]
    assert stalled == [], f"{len(stalled)} flows were not polled twice"
    assert len(ms.flows[0].poll_times) >= 1  # the throttled one was polled and is backing off
    # the pool, the timer and Bolt's five listener threads; never a thread per flow
    assert peak - baseline <= bot.config.workers + 1 + 5


def test_a_network_blip_while_a_sign_in_starts_is_retried(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    """The device-code request dropped once and answered 503 once: the sign-in still starts
    and the requester is shown the code (hundreds of sign-ins starting together meet such
    blips; none may fail for it)."""
    ms.fault("login", "POST", r"/oauth2/v2\.0/devicecode$", 0, times=1)
    ms.fault("login", "POST", r"/oauth2/v2\.0/devicecode$", 503, times=1)
    device = start(bot)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        device.user_code in m["text"] for m in slack.seen_by(ADMIN)
    ):
        time.sleep(0.02)
    assert any(device.user_code in m["text"] for m in slack.seen_by(ADMIN))
    assert [f.hits for f in ms.faults] == [1, 1]


def test_sign_in_that_cannot_start_fails_cleanly(bot: Bot, ms: MicrosoftDouble) -> None:
    bot.services.signin.device.transient_budget = 1.0
    ms.fault("login", "POST", r"/oauth2/v2\.0/devicecode$", 503, times=1000)
    assert "Starting" in bot.command("create prod-backup")
    bot.wait_state("prod-backup", "failed", timeout=20)
    assert "could not be reached" in bot.wait_thread("prod-backup", "could not be reached")


def test_the_openid_configuration_is_read_once_per_process(bot: Bot, ms: MicrosoftDouble) -> None:
    """Each sign-in has its own MSAL application; the authority's OpenID configuration is
    still fetched once, not once per sign-in (one round trip less before the code)."""
    for n in range(3):
        start(bot, name=f"acct-{n}")
    discovery = [r for r in ms.requests if r.path.endswith("/.well-known/openid-configuration")]
    assert len(discovery) == 1
    assert len(ms.flows) == 3


def test_unknown_tenant_is_not_remembered_as_known(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    """Only good discovery answers are cached: an unknown tenant fails every time."""
    bot = Bot({**env, "VEEAM_SA_TENANT": "nosuchtenant.example"}, slack, ms)
    try:
        for name in ("one", "two"):
            assert "Starting" in bot.command(f"create {name}")
            bot.wait_state(name, "failed", timeout=20)
        discovery = [r for r in ms.requests if "openid-configuration" in r.path]
        assert len(discovery) >= 2
    finally:
        bot.close()
