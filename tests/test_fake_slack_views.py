"""The Slack double's rules for views: trigger ids, Home tabs, text inputs, and the answers
to a view submission. Each rule fires."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from slack_bolt import App, BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from tests.fakes.blockkit import view_ack_errors, view_errors
from tests.fakes.slack import BOT_TOKEN, TRIGGER_TTL_S, SlackDouble
from tests.fakes.slack_requests import (
    app_home_opened_event,
    event_callback_payload,
    sign,
)


@pytest.fixture(scope="module")
def dbl() -> Iterator[SlackDouble]:
    with SlackDouble() as double:
        yield double


@pytest.fixture(scope="module")
def client(dbl: SlackDouble) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=dbl.api_url)


def plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def text_input(**extra: Any) -> dict[str, Any]:
    return {"type": "plain_text_input", "action_id": "name", **extra}


def field(element: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": "name",
        "label": plain("Name"),
        "element": element,
        **extra,
    }


def modal(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": "modal", "title": plain("T"), "submit": plain("Go"), "blocks": list(blocks)}


def error_of(call: Any) -> str:
    with pytest.raises(SlackApiError) as info:
        call()
    return str(info.value.response["error"])


# -- trigger ids ------------------------------------------------------------------------------


def test_a_trigger_id_opens_one_view_within_three_seconds(
    dbl: SlackDouble, client: WebClient
) -> None:
    view = modal(field(text_input()))
    trigger = dbl.trigger_id()
    assert client.views_open(trigger_id=trigger, view=view)["ok"]
    assert error_of(lambda: client.views_open(trigger_id=trigger, view=view)) == (
        "exchanged_trigger_id"
    )
    late = dbl.trigger_id(age=TRIGGER_TTL_S + 0.5)
    assert error_of(lambda: client.views_open(trigger_id=late, view=view)) == "expired_trigger_id"
    assert error_of(lambda: client.views_open(trigger_id="12345.98765.abcd", view=view)) == (
        "invalid_trigger_id"
    )
    pushed = dbl.trigger_id()
    assert client.views_push(trigger_id=pushed, view=view)["ok"]
    assert error_of(lambda: client.views_push(trigger_id=pushed, view=view)) == (
        "exchanged_trigger_id"
    )
    home = {"type": "home", "blocks": []}
    assert error_of(lambda: client.views_open(trigger_id=dbl.trigger_id(), view=home)) == (
        "invalid_arguments"
    )


# -- the Home tab -------------------------------------------------------------------------------


def test_views_publish_keeps_one_home_per_user(dbl: SlackDouble, client: WebClient) -> None:
    first = {"type": "home", "blocks": [{"type": "divider"}]}
    second = {"type": "home", "private_metadata": "p", "blocks": []}
    client.views_publish(user_id="U0HOME", view=first)
    client.views_publish(user_id="U0HOME", view=second)
    home = dbl.home("U0HOME")
    assert home is not None and home["private_metadata"] == "p" and home["blocks"] == []
    assert dbl.home("U0NEVER") is None
    assert error_of(lambda: client.views_publish(user_id="C0OPS", view=first)) == "user_not_found"
    assert error_of(lambda: client.views_publish(user_id="U0HOME", view=modal())) == (
        "invalid_arguments"
    )
    too_many = {"type": "home", "blocks": [{"type": "divider"}] * 101}
    assert error_of(lambda: client.views_publish(user_id="U0HOME", view=too_many)) == (
        "invalid_arguments"
    )
    metadata = {"type": "home", "blocks": [], "private_metadata": "m" * 3001}
    assert error_of(lambda: client.views_publish(user_id="U0HOME", view=metadata)) == (
        "invalid_arguments"
    )
    dbl.home_tab_enabled = False
    try:
        assert error_of(lambda: client.views_publish(user_id="U0HOME", view=first)) == (
            "not_enabled"
        )
    finally:
        dbl.home_tab_enabled = True


def test_app_home_opened_arrives_as_a_signed_event(dbl: SlackDouble) -> None:
    app = App(client=WebClient(token=BOT_TOKEN, base_url=dbl.api_url), signing_secret="s")
    seen: list[dict[str, Any]] = []

    @app.event("app_home_opened")
    def on_open(event: dict[str, Any]) -> None:
        seen.append(event)

    body = json.dumps(event_callback_payload(app_home_opened_event("U0ADMIN")))
    headers = {k.lower(): [v] for k, v in sign(body, "s").items()}
    assert app.dispatch(BoltRequest(body=body, headers=headers)).status == 200
    forged = {k.lower(): [v] for k, v in sign(body, "not-the-secret").items()}
    assert app.dispatch(BoltRequest(body=body, headers=forged)).status == 401
    assert [(e["user"], e["tab"], e["channel"]) for e in seen] == [("U0ADMIN", "home", "D0ADMIN")]


# -- text inputs and input blocks ----------------------------------------------------------------

INPUT_RULES: dict[str, tuple[dict[str, Any], str]] = {
    "text input outside an input block": (
        {"type": "actions", "elements": [text_input()]},
        "only allowed in an input block",
    ),
    "max_length 0": (field(text_input(max_length=0)), "/max_length"),
    "max_length 3001": (field(text_input(max_length=3001)), "/max_length"),
    "min_length 3001": (field(text_input(min_length=3001)), "/min_length"),
    "min above max": (field(text_input(min_length=5, max_length=4)), "/min_length"),
    "placeholder 151": (field(text_input(placeholder=plain("p" * 151))), "/placeholder"),
    "mrkdwn placeholder": (
        field(text_input(placeholder={"type": "mrkdwn", "text": "p"})),
        "/placeholder",
    ),
    "multiline not a boolean": (field(text_input(multiline="yes")), "/multiline"),
    "initial_value not a string": (field(text_input(initial_value=5)), "/initial_value"),
    "hint 2001": (field(text_input(), hint=plain("h" * 2001)), "/hint"),
    "optional not a boolean": (field(text_input(), optional="no"), "/optional"),
}


@pytest.mark.parametrize("rule", sorted(INPUT_RULES))
def test_each_text_input_rule_fires(rule: str) -> None:
    block, fragment = INPUT_RULES[rule]
    assert any(fragment in e for e in view_errors(modal(block))), view_errors(modal(block))


def test_a_good_text_input_passes() -> None:
    good = field(
        text_input(
            max_length=3000,
            min_length=0,
            multiline=True,
            initial_value="x",
            placeholder=plain("p" * 150),
        ),
        hint=plain("h" * 2000),
        optional=True,
    )
    assert view_errors(modal(good)) == []


# -- answers to a view submission ----------------------------------------------------------------

FORM = modal({"type": "section", "block_id": "about", "text": plain("a")}, field(text_input()))
ACKS: dict[str, tuple[Any, str | None]] = {
    "empty closes": (None, None),
    "clear": ({"response_action": "clear"}, None),
    "errors on an input": ({"response_action": "errors", "errors": {"name": "bad"}}, None),
    "errors on a section": (
        {"response_action": "errors", "errors": {"about": "bad"}},
        "not the block_id of an input block",
    ),
    "errors on no block": (
        {"response_action": "errors", "errors": {"nope": "bad"}},
        "not the block_id of an input block",
    ),
    "errors empty": ({"response_action": "errors", "errors": {}}, "non-empty"),
    "error message empty": ({"response_action": "errors", "errors": {"name": ""}}, "at least 1"),
    "update with a good view": ({"response_action": "update", "view": modal()}, None),
    "update with a bad view": (
        {"response_action": "update", "view": {**modal(), "title": plain("t" * 25)}},
        "/view/title",
    ),
    "unknown action": ({"response_action": "close"}, "must be one of"),
}


@pytest.mark.parametrize("case", sorted(ACKS))
def test_view_submission_answers(case: str) -> None:
    ack, fragment = ACKS[case]
    errors = view_ack_errors(FORM, ack)
    if fragment is None:
        assert errors == []
    else:
        assert any(fragment in e for e in errors), errors


def test_the_double_applies_a_submission_answer(dbl: SlackDouble, client: WebClient) -> None:
    opened = client.views_open(trigger_id=dbl.trigger_id(), view=FORM)["view"]
    kept = dbl.check_view_ack(opened["id"], {"response_action": "errors", "errors": {"name": "x"}})
    assert kept == {"closed": False, "errors": {"name": "x"}}
    with pytest.raises(AssertionError, match="would refuse"):
        dbl.check_view_ack(opened["id"], {"response_action": "errors", "errors": {"about": "x"}})
    dbl.check_view_ack(opened["id"], {"response_action": "update", "view": modal()})
    assert dbl.view(opened["id"])["blocks"] == []
    assert dbl.check_view_ack(opened["id"], None) == {"closed": True, "errors": {}}
