"""What a person sees: controls that retire, the checklist's true state in words, next
steps, notification texts that name the account, escaped user text, no unfurling, and
quiet logs for routine polls. Driven through signed Slack requests against the doubles."""

from __future__ import annotations

import json
import logging
import time

import pytest

from bot.slack import ids
from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS, DEFAULT_TENANT_ID, MicrosoftDouble
from tests.fakes.slack import SlackDouble, unfurls
from tests.harness import ADMIN, CHANNEL, Bot
from tests.test_provision import BOB, sign_in

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


def posted_calls(slack: SlackDouble) -> list:  # type: ignore[type-arg]
    return [
        c
        for c in slack.calls
        if c.method in ("chat.postMessage", "chat.postEphemeral", "chat.update", "response_url")
    ]


def test_code_by_dm_is_closed_after_sign_in_and_nothing_unfurls(
    bot: Bot, slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    slack.channel_members[CHANNEL] = {"U0OTHER"}  # the requester is not in the channel: DM
    flow = sign_in(
        bot, f'create prod --subscription {SUB} --description "&lt;!here&gt; R&amp;D &gt; ops"'
    )
    bot.wait_state("prod", "done", timeout=30)
    bot.wait_thread("prod", "is ready")
    dm = slack.dm_channel(ADMIN)
    [code_message] = [
        m for m in slack.messages(dm) if "Sign in to Microsoft" in json.dumps(m["blocks"])
    ]
    # once signed in, the code's message no longer offers the code or Cancel
    deadline = time.monotonic() + 5
    while "this code is used" not in code_message["text"] and time.monotonic() < deadline:
        time.sleep(0.02)
        code_message = slack.message(dm, code_message["ts"])
    assert "Signed in; this code is used" in json.dumps(code_message["blocks"])
    assert all(b["type"] != "actions" for b in code_message["blocks"])
    assert ms.flows[-1].user_code not in json.dumps(code_message)

    # unfurling off on every post: channel, thread, DM (the code's fallback), ephemerals
    posts = slack.messages(include_deleted=True) + slack.ephemerals()
    assert posts and not [m for m in posts if unfurls(m)]
    # the description reaches Slack escaped, in blocks and in notification texts alike
    everything = json.dumps([c.args for c in posted_calls(slack)])
    assert "<!here>" not in everything
    parent = slack.message(CHANNEL, flow["parent_ts"])
    assert "&lt;!here&gt; R&amp;D &gt; ops" in json.dumps(parent["blocks"])
    # every note in the thread names the account in its notification text
    for note in slack.thread(CHANNEL, flow["parent_ts"]):
        assert "prod" in note["text"], note["text"]
    # next steps without an appliance: where the secret is and how to put it into Veeam
    summary = json.dumps(parent["blocks"], ensure_ascii=False)
    assert "veeam-sa-bot secret show prod" in summary
    assert "Configuration → Service Accounts" in summary
    app_id = ms.applications[-1].app_id
    assert f"https://portal.azure.com/{DEFAULT_TENANT_ID}/#view/" in summary and app_id in summary


def test_checklist_after_a_cancel_keeps_what_succeeded_and_retires_recheck(
    bot: Bot, slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    ms.add_user(BOB, name="Bob Operator")  # may not register applications: blocked
    ms.grant(BOB, SUB, "Owner")
    ms.set_allowed_to_create_apps(DEFAULT_TENANT_ID, False)
    flow = sign_in(bot, f"create prod --subscription {SUB}", user=BOB)
    bot.wait_state("prod", "blocked", timeout=20)
    bot.wait_thread("prod", "Prerequisites")
    [prereq] = [
        m for m in slack.thread(CHANNEL, flow["parent_ts"]) if m["text"].startswith("Prerequisites")
    ]
    assert any(b["type"] == "actions" for b in prereq["blocks"])

    assert "Cancelling" in bot.command("cancel")
    bot.wait_state("prod", "cancelled")
    deadline = time.monotonic() + 5
    checklist = ""
    while "Cancelled by" not in checklist and time.monotonic() < deadline:
        time.sleep(0.02)
        checklist = json.dumps(
            slack.message(CHANNEL, flow["parent_ts"])["blocks"], ensure_ascii=False
        )
    # sign-in succeeded before the cancel and stays done; each state has its word
    assert ":white_check_mark: done — Sign in to Microsoft" in checklist
    assert ":x: failed — Check permissions" in checklist
    assert ":heavy_minus_sign: skipped — Create the application" in checklist
    assert ":heavy_minus_sign: skipped — Assign roles" in checklist
    # Recheck is gone: the creation is over
    closed = slack.message(CHANNEL, prereq["ts"])
    assert all(b["type"] != "actions" for b in closed["blocks"])
    assert "Closed: the creation was cancelled." in json.dumps(closed["blocks"])
    # a stale Recheck does nothing
    mark = slack.mark()
    bot.click(ids.ACTION_RECHECK, flow["id"], user=ADMIN, message_ts=prereq["ts"])
    time.sleep(0.3)
    assert bot.flow("prod")["state"] == "cancelled"
    assert not [c for c in slack.calls[mark:] if c.method == "chat.postMessage"]


@pytest.mark.parametrize(
    ("cloud", "portal"),
    [
        ("AzureUSGovernment", "https://portal.azure.us"),
        ("AzureChinaCloud", "https://portal.azure.cn"),
    ],
)
def test_summary_links_the_portal_of_the_configured_cloud(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, cloud: str, portal: str
) -> None:
    # the doubles stand in for the cloud's endpoints (set explicitly in `env`)
    bot = Bot({**env, "VEEAM_SA_CLOUD": cloud}, slack, ms)
    try:
        flow = sign_in(bot, f"create prod --subscription {SUB}")
        bot.wait_state("prod", "done", timeout=30)
        bot.wait_thread("prod", "is ready")
        summary = json.dumps(slack.message(CHANNEL, flow["parent_ts"])["blocks"])
        app_id = ms.applications[-1].app_id
        assert (
            f"{portal}/{DEFAULT_TENANT_ID}/#view/Microsoft_AAD_RegisteredApps/"
            f"ApplicationMenuBlade/~/Overview/appId/{app_id}"
        ) in summary
        assert "portal.azure.com" not in summary
    finally:
        bot.close()


def test_routine_polls_are_logged_at_debug(
    bot: Bot, ms: MicrosoftDouble, caplog: pytest.LogCaptureFixture
) -> None:
    ms.script_next_flow(["pending", "pending", "approve"])
    caplog.set_level(logging.INFO)
    assert "Starting" in bot.command(f"create prod --subscription {SUB}")
    bot.wait_state("prod", "done", timeout=30)
    assert ms.flows[-1].outcomes.count("authorization_pending") == 2, ms.flows[-1].outcomes
    httpx_lines = [r for r in caplog.records if r.name == "httpx"]
    assert any("200 OK" in r.getMessage() for r in httpx_lines)  # other requests still log
    assert not [r for r in httpx_lines if "400 Bad Request" in r.getMessage()]


def test_routine_polls_show_when_debug_is_on(
    bot: Bot, ms: MicrosoftDouble, caplog: pytest.LogCaptureFixture
) -> None:
    ms.script_next_flow(["pending", "approve"])
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="httpx")
    assert "Starting" in bot.command(f"create prod --subscription {SUB}")
    bot.wait_state("prod", "done", timeout=30)
    pending = [
        r for r in caplog.records if r.name == "httpx" and "400 Bad Request" in r.getMessage()
    ]
    assert pending and {r.levelname for r in pending} == {"DEBUG"}


@pytest.mark.parametrize(
    "text", ["<!here>", "create <!channel>", "list <!here>", "create x --<!here>"]
)
def test_command_text_quoted_back_cannot_ping(bot: Bot, text: str) -> None:
    """Slack sends `<`, `>` and `&` as entities; a raw one (a client that did not) is escaped
    before any part of the command is quoted back."""
    answer = bot.command(text)
    assert ":warning:" in answer
    assert "<!here>" not in answer and "<!channel>" not in answer
    assert "&lt;!" in answer
    assert bot.db.table("flows").count == 0


def test_code_by_dm_is_closed_when_the_sign_in_fails(
    bot: Bot, slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    slack.channel_members[CHANNEL] = {"U0OTHER"}
    assert "Starting" in bot.command(f"create prod --subscription {SUB}")
    flow = bot.wait_state("prod", "awaiting_sign_in")
    dm = slack.dm_channel(ADMIN)
    ms.decline(ms.flows[-1].user_code)
    bot.wait_state("prod", "failed")
    deadline = time.monotonic() + 5
    shown: list = []  # type: ignore[type-arg]
    while time.monotonic() < deadline and not any("The sign-in failed" in m["text"] for m in shown):
        time.sleep(0.02)
        shown = slack.messages(dm)
    [closed] = shown
    assert "this code no longer works" in json.dumps(closed["blocks"])
    assert all(b["type"] != "actions" for b in closed["blocks"])
    checklist = json.dumps(slack.message(CHANNEL, flow["parent_ts"])["blocks"], ensure_ascii=False)
    assert ":x: failed — Sign in to Microsoft" in checklist
    assert ":heavy_minus_sign: skipped — Check permissions" in checklist
