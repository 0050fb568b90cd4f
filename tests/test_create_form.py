"""The create form: bare `/veeam-sa` (or `create` without a NAME) opens a modal; its
submission starts the same flow as the command; bad input is answered inside the modal and
starts nothing; the subscription chooser is replaced by the choice once made."""

from __future__ import annotations

import json
import time

from bot.slack import ids
from tests.fakes.blockkit import view_errors
from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import multi_select_state, text_inputs
from tests.harness import ADMIN, CHANNEL, OTHER, Bot

SUB1 = DEFAULT_SUBSCRIPTIONS[0][0]
SUB2 = DEFAULT_SUBSCRIPTIONS[1][0]


def opened_form(bot: Bot, text: str = "", user: str = ADMIN) -> dict:
    mark = bot.slack.mark()
    answer = bot.command(text, user=user)
    assert answer == "", answer  # the form is the answer: nothing printed
    call = bot.slack.wait_for("views.open", after=mark)
    assert call.ok, call.response
    view = call.response["view"]
    assert view_errors({k: view[k] for k in ("type", "title", "submit", "close", "blocks")}) == []
    return view


def flows(bot: Bot) -> int:
    return bot.db.execute("SELECT COUNT(*) FROM flows").fetchone()[0]


def test_bare_command_opens_the_form_and_its_submission_starts_the_flow(
    bot: Bot, slack: SlackDouble
) -> None:
    view = opened_form(bot)
    assert view["callback_id"] == ids.VIEW_CREATE
    fields = {b["block_id"]: b for b in view["blocks"] if b["type"] == "input"}
    assert list(fields) == [
        ids.FORM_NAME,
        ids.FORM_DESCRIPTION,
        ids.FORM_SUBSCRIPTIONS,
        ids.FORM_TENANT,
    ]
    assert fields[ids.FORM_NAME]["element"]["max_length"] == 255  # Slack holds it as you type
    assert fields[ids.FORM_NAME]["optional"] is False

    result = bot.submit_view(
        view["id"],
        text_inputs(name="prod-backup", description="<!here> R&D", subscriptions=f"{SUB1}\n"),
    )
    assert result == {"closed": True, "errors": {}}
    flow = bot.wait_state("prod-backup", "awaiting_sign_in")
    assert flow["requester"] == ADMIN and flow["channel_id"] == CHANNEL
    data = json.loads(flow["data"])
    assert data["subscriptions"] == [SUB1] and data["description"] == "<!here> R&D"
    # The same flow as the command: the code goes to the requester only, and it runs on.
    bot.ms.approve(bot.ms.flows[-1].user_code)
    bot.wait_state("prod-backup", "done", timeout=30)


def test_bad_input_is_answered_inside_the_form_and_starts_nothing(
    bot: Bot, slack: SlackDouble
) -> None:
    view = opened_form(bot)
    before = flows(bot)
    result = bot.submit_view(
        view["id"], text_inputs(name="prod backup!", description="", subscriptions="nope")
    )
    assert result["closed"] is False
    assert set(result["errors"]) == {ids.FORM_NAME, ids.FORM_SUBSCRIPTIONS}
    assert "not a valid name" in result["errors"][ids.FORM_NAME]
    assert "nope is not a subscription id" in result["errors"][ids.FORM_SUBSCRIPTIONS]
    assert flows(bot) == before and bot.ms.flows == []

    # A name already being created: said under the name, nothing started.
    assert "Starting" in bot.command(f"create taken --subscription {SUB1}")
    before = flows(bot)
    result = bot.submit_view(view["id"], text_inputs(name="taken"))
    assert "already in progress" in result["errors"][ids.FORM_NAME]
    assert flows(bot) == before

    # Someone who is no admin (any more) gets the form replaced by the refusal.
    result = bot.submit_view(view["id"], text_inputs(name="fresh"), user=OTHER)
    assert result["closed"] is False
    assert "only the bot's admins" in json.dumps(slack.view(view["id"])["blocks"])
    assert flows(bot) == before


def test_create_without_a_name_fills_the_form_in(bot: Bot) -> None:
    view = opened_form(bot, f'create --subscription {SUB2} --description "DR copies"')
    fields = {b["block_id"]: b["element"] for b in view["blocks"] if b["type"] == "input"}
    assert fields[ids.FORM_SUBSCRIPTIONS]["initial_value"] == SUB2
    assert fields[ids.FORM_DESCRIPTION]["initial_value"] == "DR copies"
    assert "initial_value" not in fields[ids.FORM_NAME]


def test_help_stays_and_others_get_it_for_a_bare_command(bot: Bot, slack: SlackDouble) -> None:
    assert "/veeam-sa create NAME" in bot.command("help")
    assert "/veeam-sa create NAME" in bot.command("", user=OTHER)
    assert "only the bot's admins" in bot.command("create", user=OTHER)
    assert slack.calls_to("views.open") == []


def test_an_expired_trigger_is_said_not_swallowed(bot: Bot, slack: SlackDouble) -> None:
    # Slack refuses a trigger_id used after 3 s: the person is told and offered the command.
    slack.fail("views.open", "expired_trigger_id")
    answer = bot.command("")
    assert "could not open the create form" in answer and "expired_trigger_id" in answer
    assert flows(bot) == 0


def test_the_chooser_is_replaced_by_the_choice(bot: Bot, slack: SlackDouble) -> None:
    view = opened_form(bot)
    bot.submit_view(view["id"], text_inputs(name="prod"))
    bot.wait_state("prod", "awaiting_sign_in")
    bot.ms.approve(bot.ms.flows[-1].user_code)
    flow = bot.wait_state("prod", "choosing", timeout=20)
    chooser_ts = json.loads(flow["data"])["chooser_ts"]
    chooser = slack.message(CHANNEL, chooser_ts)
    assert "can assign roles" in json.dumps(chooser["blocks"])  # names and permission state

    state = multi_select_state("choose", ids.ACTION_CHOOSE_SUBSCRIPTIONS, [SUB2])
    bot.click(ids.ACTION_CREATE, flow["id"], user=ADMIN, message_ts=chooser_ts, state_values=state)
    bot.wait_state("prod", "done", timeout=30)
    deadline = time.monotonic() + 5
    while "chose" not in slack.message(CHANNEL, chooser_ts)["text"] and time.monotonic() < deadline:
        time.sleep(0.02)
    used = slack.message(CHANNEL, chooser_ts)
    assert used["text"] == f"<@{ADMIN}> chose 1 subscription for `prod`"
    assert [b["type"] for b in used["blocks"]] == ["section", "context"]  # no controls left
    said = used["blocks"][0]["text"]["text"]
    assert SUB2 in said and "Contoso Dev/Test" in said and SUB1 not in said
