"""Who may do what: every command and button for an admin, a group member, a non-admin,
and the requester versus another admin. Refusals are ephemeral, name the rule, and are
audited."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bot.slack import ids
from tests.fakes.microsoft import ALICE_UPN, DEFAULT_SUBSCRIPTIONS, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import multi_select_state
from tests.harness import ADMIN, OTHER, Bot
from tests.test_provision import sign_in
from tests.test_renew import wait_renew

SUB = DEFAULT_SUBSCRIPTIONS[0][0]
MEMBER = "U0MEMBER"
ADMIN2 = "U0ADMIN2"


@pytest.fixture
def abot(env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble) -> Iterator[Bot]:
    slack.usergroups["S0OPS"] = [MEMBER]
    slack.add_user(MEMBER, name="group-member")
    slack.add_user(ADMIN2, name="second-admin")
    instance = Bot({**env, "VEEAM_SA_ADMINS": f"{ADMIN},{ADMIN2},S0OPS"}, slack, ms)
    yield instance
    instance.close()


def refusals(bot: Bot) -> list[tuple[str, str]]:
    return [
        (r["actor"], r["action"]) for r in bot.db.table("audit").rows_where("outcome = 'refused'")
    ]


@pytest.mark.parametrize("text", ["list", "show prod", "create prod", "renew prod", "cancel"])
def test_non_admin_is_refused_every_command_and_it_is_audited(abot: Bot, text: str) -> None:
    answer = abot.command(text, user=OTHER)
    # who may do it, by name (people and the admin group), instead of a setting's name
    assert "only the bot's admins may" in answer
    assert "Ask <!subteam^S0OPS>, <@U0ADMIN> or <@U0ADMIN2>" in answer
    assert "VEEAM_SA_ADMINS" not in answer
    if text == "list":  # and who could open `list` to everyone
        assert "whoever runs the bot can also let everyone" in answer
    verb = text.split()[0]
    assert refusals(abot) == [(OTHER, f"{verb}.refused")]
    assert abot.db.table("flows").count == 0


def test_everyone_may_ask_for_help(abot: Bot) -> None:
    assert "/veeam-sa create NAME" in abot.command("help", user=OTHER)
    assert refusals(abot) == []


@pytest.mark.parametrize("user", [ADMIN, MEMBER])
def test_admins_and_group_members_may_create_list_and_cancel(abot: Bot, user: str) -> None:
    assert "Starting" in abot.command("create prod", user=user)
    abot.wait_state("prod", "awaiting_sign_in")
    assert "No managed service accounts yet" in abot.command("list", user=user)
    assert "Cancelling" in abot.command("cancel", user=user)
    abot.slack.wait_for("response_url", text="Cancelled: `prod`.")


def test_list_may_be_opened_to_everyone(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    bot = Bot({**env, "VEEAM_SA_LIST_FOR_EVERYONE": "true"}, slack, ms)
    try:
        assert "No managed service accounts" in bot.command("list", user=OTHER)
        assert "only the bot's admins" in bot.command("create x", user=OTHER)
    finally:
        bot.close()


def test_cancel_button_requester_other_admin_and_non_admin(abot: Bot, slack: SlackDouble) -> None:
    abot.command("create prod", user=MEMBER)
    flow = abot.wait_state("prod", "awaiting_sign_in")

    abot.click(ids.ACTION_CANCEL_FLOW, flow["id"], user=OTHER)
    refused = json.dumps(slack.wait_for("response_url").args)
    assert f"only <@{MEMBER}>, who started this, or an admin may do this" in refused
    assert refusals(abot) == [(OTHER, "cancel.refused")]
    assert abot.flow("prod")["state"] == "awaiting_sign_in"

    abot.click(ids.ACTION_CANCEL_FLOW, flow["id"], user=ADMIN2)  # another admin may stop it
    abot.wait_state("prod", "cancelled")


def test_choose_and_recheck_buttons(abot: Bot, slack: SlackDouble, ms: MicrosoftDouble) -> None:
    flow = sign_in(abot, "create prod")
    abot.wait_state("prod", "choosing", timeout=20)
    state = multi_select_state("choose", ids.ACTION_CHOOSE_SUBSCRIPTIONS, [SUB])
    for intruder in (ADMIN2, OTHER):  # requester only, even for another admin
        mark = slack.mark()
        abot.click(ids.ACTION_CREATE, flow["id"], user=intruder, state_values=state)
        assert "only <@U0ADMIN>, who started this creation, may choose" in json.dumps(
            slack.wait_for("response_url", after=mark).args
        )
    assert abot.flow("prod")["state"] == "choosing"
    assert {a for _, a in refusals(abot)} == {"choose.refused"}

    mark = slack.mark()
    abot.click(ids.ACTION_RECHECK, flow["id"], user=OTHER)
    assert "only <@U0ADMIN>, who started this, or an admin may do this" in json.dumps(
        slack.wait_for("response_url", after=mark).args
    )

    abot.click(ids.ACTION_CREATE, flow["id"], user=ADMIN, state_values=state)
    abot.wait_state("prod", "done", timeout=30)


def test_renew_button_for_a_group_member(
    abot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    sign_in(abot, f"create prod --subscription {SUB}")
    abot.wait_state("prod", "done", timeout=30)
    account = next(abot.db.table("accounts").rows)
    abot.click(ids.ACTION_RENEW, str(account["id"]), user=MEMBER)
    flow = wait_renew(abot, "awaiting_sign_in")  # the click is handled after its ack
    assert flow["requester"] == MEMBER


def test_email_match_blocks_someone_elses_account(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    bot = Bot({**env, "VEEAM_SA_REQUIRE_EMAIL_MATCH": "true"}, slack, ms)
    try:
        sign_in(
            bot, f"create prod --subscription {SUB}"
        )  # Slack says ada@contoso.example; Alice signs in
        bot.wait_state("prod", "failed", timeout=20)
        text = bot.wait_thread("prod", "is not yours")
        assert ALICE_UPN in text and "ada@contoso.example" in text
        assert ms.applications == []

        slack.add_user(ADMIN, name="alice", email=ALICE_UPN.upper())
        sign_in(bot, f"create prod2 --subscription {SUB}")
        bot.wait_state("prod2", "done", timeout=30)
    finally:
        bot.close()
