"""The Slack double refuses Block Kit payloads as Slack does.

Every rule in ``tests/fakes/blockkit.py`` is exercised twice: a payload right at the limit
(or otherwise valid) is accepted, and one that breaks the rule by the smallest step is
answered ``invalid_blocks`` (``invalid_arguments`` for views) naming the offending place.
Then every way the bot sends blocks (chat.postMessage, chat.postEphemeral, chat.update,
response_url, views.*) is shown to apply the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from tests.fakes.blockkit import block_errors, view_errors
from tests.fakes.slack import BOT_TOKEN, SlackDouble

Blocks = list[dict[str, Any]]


@pytest.fixture(scope="module")
def dbl() -> Iterator[SlackDouble]:
    with SlackDouble() as double:
        yield double


@pytest.fixture(scope="module")
def client(dbl: SlackDouble) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=dbl.api_url)


def plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def section(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"type": "section", "text": mrkdwn(text), **extra}


def button(action_id: str = "go", label: str = "Go", **extra: Any) -> dict[str, Any]:
    return {"type": "button", "action_id": action_id, "text": plain(label), **extra}


def actions(*elements: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "actions", "elements": list(elements), **extra}


def option(label: str = "One", value: str = "1", **extra: Any) -> dict[str, Any]:
    return {"text": plain(label), "value": value, **extra}


def select(options: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "type": "static_select",
        "action_id": "pick",
        "placeholder": plain("Pick"),
        "options": options,
        **extra,
    }


def confirm(**overrides: Any) -> dict[str, Any]:
    dialog = {
        "title": plain("Sure?"),
        "text": mrkdwn("Really renew?"),
        "confirm": plain("Yes"),
        "deny": plain("No"),
    }
    dialog.update(overrides)
    return dialog


def modal(blocks: Blocks, **extra: Any) -> dict[str, Any]:
    return {"type": "modal", "title": plain("Renew"), "blocks": blocks, **extra}


# -- length and count limits: at the limit accepted, one past it refused ----------------------

LIMITS: dict[str, tuple[int, Callable[[int], Blocks], str]] = {
    # name: (limit, payload of size n, JSON pointer of the error)
    "blocks per message": (50, lambda n: [{"type": "divider"}] * n, "/blocks"),
    "block_id length": (255, lambda n: [section(block_id="b" * n)], "/blocks/0/block_id"),
    "action_id length": (
        255,
        lambda n: [actions(button("a" * n))],
        "/blocks/0/elements/0/action_id",
    ),
    "elements per actions block": (
        25,
        lambda n: [actions(*(button(f"a{i}") for i in range(n)))],
        "/blocks/0/elements",
    ),
    "elements per context block": (
        10,
        lambda n: [{"type": "context", "elements": [mrkdwn("x")] * n}],
        "/blocks/0/elements",
    ),
    "context text": (
        3000,
        lambda n: [{"type": "context", "elements": [mrkdwn("x" * n)]}],
        "/blocks/0/elements/0/text",
    ),
    "section text": (3000, lambda n: [section("x" * n)], "/blocks/0/text/text"),
    "section fields": (
        10,
        lambda n: [{"type": "section", "fields": [mrkdwn("f")] * n}],
        "/blocks/0/fields",
    ),
    "section field text": (
        2000,
        lambda n: [{"type": "section", "fields": [mrkdwn("f" * n)]}],
        "/blocks/0/fields/0/text",
    ),
    "header text": (
        150,
        lambda n: [{"type": "header", "text": plain("h" * n)}],
        "/blocks/0/text/text",
    ),
    "button text": (75, lambda n: [actions(button(label="b" * n))], "/blocks/0/elements/0/text"),
    "button value": (
        2000,
        lambda n: [actions(button(value="v" * n))],
        "/blocks/0/elements/0/value",
    ),
    "button url": (
        3000,
        lambda n: [actions(button(url="https://example.com/" + "u" * (n - 20)))],
        "/blocks/0/elements/0/url",
    ),
    "button accessibility_label": (
        75,
        lambda n: [actions(button(accessibility_label="l" * n))],
        "/blocks/0/elements/0/accessibility_label",
    ),
    "accessory button text": (
        75,
        lambda n: [section(accessory=button(label="b" * n))],
        "/blocks/0/accessory/text",
    ),
    "select options": (
        100,
        lambda n: [actions(select([option(value=str(i)) for i in range(n)]))],
        "/blocks/0/elements/0/options",
    ),
    "option text": (
        75,
        lambda n: [actions(select([option(label="o" * n)]))],
        "/blocks/0/elements/0/options/0/text",
    ),
    "option value": (
        150,
        lambda n: [actions(select([option(value="v" * n)]))],
        "/blocks/0/elements/0/options/0/value",
    ),
    "option description": (
        75,
        lambda n: [actions(select([option(description=plain("d" * n))]))],
        "/blocks/0/elements/0/options/0/description",
    ),
    "select placeholder": (
        150,
        lambda n: [actions(select([option()], placeholder=plain("p" * n)))],
        "/blocks/0/elements/0/placeholder",
    ),
    "multi-select options": (
        100,
        lambda n: [
            actions(select([option(value=str(i)) for i in range(n)], type="multi_static_select"))
        ],
        "/blocks/0/elements/0/options",
    ),
    "confirm title": (
        100,
        lambda n: [actions(button(confirm=confirm(title=plain("t" * n))))],
        "/blocks/0/elements/0/confirm/title",
    ),
    "confirm text": (
        300,
        lambda n: [actions(button(confirm=confirm(text=mrkdwn("t" * n))))],
        "/blocks/0/elements/0/confirm/text",
    ),
    "confirm button": (
        30,
        lambda n: [actions(button(confirm=confirm(confirm=plain("c" * n))))],
        "/blocks/0/elements/0/confirm/confirm",
    ),
    "deny button": (
        30,
        lambda n: [actions(button(confirm=confirm(deny=plain("d" * n))))],
        "/blocks/0/elements/0/confirm/deny",
    ),
}


@pytest.mark.parametrize("rule", sorted(LIMITS))
def test_each_limit_fires_one_past_it(client: WebClient, rule: str) -> None:
    limit, payload, pointer = LIMITS[rule]
    assert client.chat_postMessage(channel="C0OPS", text="t", blocks=payload(limit))["ok"]
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel="C0OPS", text="t", blocks=payload(limit + 1))
    answer = refused.value.response
    assert answer["error"] == "invalid_blocks"
    assert any(f"[json-pointer:{pointer}" in e for e in answer["errors"]), answer["errors"]
    assert answer["response_metadata"]["messages"][0].startswith("[ERROR] ")


def test_top_level_text_limit(client: WebClient) -> None:
    assert client.chat_postMessage(channel="C0OPS", text="x" * 40000)["ok"]
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel="C0OPS", text="x" * 40001)
    assert refused.value.response["error"] == "msg_too_long"


# -- structural rules: the valid form accepted, the broken one refused ------------------------

RULES: dict[str, tuple[Blocks, Blocks, str]] = {
    # name: (accepted, refused, JSON pointer of the error)
    "block_id unique in a message": (
        [section(block_id="a"), section(block_id="b")],
        [section(block_id="a"), section(block_id="a")],
        "/blocks/1/block_id",
    ),
    "action_id unique in its block": (
        # the same action_id in two blocks is fine; twice in one block is not
        [actions(button("renew")), actions(button("renew"))],
        [actions(button("renew"), button("renew"))],
        "/blocks/0/elements/1/action_id",
    ),
    "action_id unique across select and button": (
        [actions(select([option()]), button("go"))],
        [actions(select([option()]), button("pick"))],
        "/blocks/0/elements/1/action_id",
    ),
    "button text is plain_text": (
        [actions(button())],
        [actions({"type": "button", "action_id": "go", "text": mrkdwn("*Go*")})],
        "/blocks/0/elements/0/text/type",
    ),
    "header text is plain_text": (
        [{"type": "header", "text": plain("Head")}],
        [{"type": "header", "text": mrkdwn("Head")}],
        "/blocks/0/text/type",
    ),
    "option text is plain_text in a select": (
        [actions(select([option()]))],
        [actions(select([{"text": mrkdwn("One"), "value": "1"}]))],
        "/blocks/0/elements/0/options/0/text/type",
    ),
    "placeholder is plain_text": (
        [actions(select([option()]))],
        [actions(select([option()], placeholder=mrkdwn("Pick")))],
        "/blocks/0/elements/0/placeholder/type",
    ),
    "confirm title is plain_text": (
        [actions(button(confirm=confirm()))],
        [actions(button(confirm=confirm(title=mrkdwn("Sure?"))))],
        "/blocks/0/elements/0/confirm/title/type",
    ),
    "emoji only on plain_text": (
        [actions(button(text={"type": "plain_text", "text": "Go", "emoji": True}))],
        [{"type": "section", "text": {"type": "mrkdwn", "text": "x", "emoji": True}}],
        "/blocks/0/text/emoji",
    ),
    "verbatim only on mrkdwn": (
        [{"type": "section", "text": {"type": "mrkdwn", "text": "x", "verbatim": True}}],
        [{"type": "section", "text": {"type": "plain_text", "text": "x", "verbatim": True}}],
        "/blocks/0/text/verbatim",
    ),
    "text is not empty": ([section("x")], [section("")], "/blocks/0/text/text"),
    "text object type is known": (
        [section("x")],
        [{"type": "section", "text": {"type": "markdown", "text": "x"}}],
        "/blocks/0/text/type",
    ),
    "section has text or fields": (
        [{"type": "section", "fields": [mrkdwn("f")]}],
        [{"type": "section"}],
        "/blocks/0",
    ),
    "actions block has elements": ([actions(button())], [actions()], "/blocks/0/elements"),
    "block type is known": ([{"type": "divider"}], [{"type": "table"}], "/blocks/0/type"),
    "input blocks are not for messages": (
        [section("x")],
        [
            {
                "type": "input",
                "label": plain("Name"),
                "element": {"type": "plain_text_input", "action_id": "n"},
            }
        ],
        "/blocks/0/type",
    ),
    "element type is known": (
        [actions(button())],
        [actions({"type": "rocket", "action_id": "r"})],
        "/blocks/0/elements/0/type",
    ),
    "button style is primary or danger": (
        [actions(button(style="danger"))],
        [actions(button(style="warning"))],
        "/blocks/0/elements/0/style",
    ),
    "select has options or option_groups, not both": (
        [
            actions(
                {
                    "type": "static_select",
                    "action_id": "pick",
                    "option_groups": [{"label": plain("G"), "options": [option()]}],
                }
            )
        ],
        [actions(select([option()], option_groups=[{"label": plain("G"), "options": [option()]}]))],
        "/blocks/0/elements/0",
    ),
    "initial option is one of the options": (
        [actions(select([option()], initial_option=option()))],
        [actions(select([option()], initial_option=option("Two", "2")))],
        "/blocks/0/elements/0/initial_option",
    ),
    "option url only in overflow menus": (
        [actions(select([option()]))],
        [actions(select([option(url="https://example.com")]))],
        "/blocks/0/elements/0/options/0/url",
    ),
    "multi-select max_selected_items at least 1": (
        [actions(select([option()], type="multi_static_select", max_selected_items=1))],
        [actions(select([option()], type="multi_static_select", max_selected_items=0))],
        "/blocks/0/elements/0/max_selected_items",
    ),
    "context elements are text or images": (
        [
            {
                "type": "context",
                "elements": [
                    mrkdwn("x"),
                    {"type": "image", "image_url": "https://example.com/i.png", "alt_text": "i"},
                ],
            }
        ],
        [{"type": "context", "elements": [button()]}],
        "/blocks/0/elements/0/type",
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_fires(client: WebClient, rule: str) -> None:
    accepted, refused, pointer = RULES[rule]
    assert block_errors(accepted) == []
    assert client.chat_postMessage(channel="C0OPS", text="t", blocks=accepted)["ok"]
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0OPS", text="t", blocks=refused)
    answer = err.value.response
    assert answer["error"] == "invalid_blocks"
    assert any(f"[json-pointer:{pointer}]" in e for e in answer["errors"]), answer["errors"]


def test_blocks_must_be_an_array(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        client.api_call(
            "chat.postMessage", json={"channel": "C0OPS", "text": "t", "blocks": {"a": 1}}
        )
    assert err.value.response["error"] == "invalid_blocks_format"


# -- views: 100 blocks, view fields -----------------------------------------------------------

VIEW_LIMITS: dict[str, tuple[int, Callable[[int], dict[str, Any]], str]] = {
    "blocks per modal": (100, lambda n: modal([{"type": "divider"}] * n), "/view/blocks"),
    "modal title": (24, lambda n: {**modal([]), "title": plain("t" * n)}, "/view/title/text"),
    "modal submit": (24, lambda n: modal([], submit=plain("s" * n)), "/view/submit/text"),
    "modal close": (24, lambda n: modal([], close=plain("c" * n)), "/view/close/text"),
    "private_metadata": (3000, lambda n: modal([], private_metadata="m" * n), "/view/private"),
    "callback_id": (255, lambda n: modal([], callback_id="c" * n), "/view/callback_id"),
}


@pytest.mark.parametrize("rule", sorted(VIEW_LIMITS))
def test_each_view_limit_fires(dbl: SlackDouble, client: WebClient, rule: str) -> None:
    limit, view, pointer = VIEW_LIMITS[rule]
    assert client.views_open(trigger_id=dbl.trigger_id(), view=view(limit))["ok"]
    with pytest.raises(SlackApiError) as err:
        client.views_open(trigger_id=dbl.trigger_id(), view=view(limit + 1))
    answer = err.value.response
    assert answer["error"] == "invalid_arguments"
    assert any(f"[json-pointer:{pointer}" in e for e in answer["errors"]), answer["errors"]


def test_views_take_input_blocks_with_a_submit_button() -> None:
    field = {
        "type": "input",
        "label": plain("Name"),
        "element": {"type": "static_select", "action_id": "n", "options": [option()]},
    }
    assert view_errors(modal([field], submit=plain("Save"))) == []
    assert any("/view/submit" in e for e in view_errors(modal([field])))
    assert view_errors({"type": "home", "blocks": [{"type": "divider"}] * 100}) == []
    assert view_errors({"type": "home", "blocks": [{"type": "divider"}] * 101})


# -- every transport applies the rules --------------------------------------------------------

VALID: Blocks = [section("ok"), actions(button("renew:1"), button("renew:2"))]
INVALID: Blocks = [section("ok"), actions(button("renew"), button("renew"))]


def _post(client: WebClient, dbl: SlackDouble, blocks: Blocks) -> tuple[bool, str]:
    try:
        client.chat_postMessage(channel="C0OPS", text="t", blocks=blocks)
    except SlackApiError as exc:
        return False, exc.response["error"]
    return True, ""


def _ephemeral(client: WebClient, dbl: SlackDouble, blocks: Blocks) -> tuple[bool, str]:
    try:
        client.chat_postEphemeral(channel="C0OPS", user="U0ADMIN", text="t", blocks=blocks)
    except SlackApiError as exc:
        return False, exc.response["error"]
    return True, ""


def _update(client: WebClient, dbl: SlackDouble, blocks: Blocks) -> tuple[bool, str]:
    ts = client.chat_postMessage(channel="C0OPS", text="before")["ts"]
    try:
        client.chat_update(channel="C0OPS", ts=ts, text="after", blocks=blocks)
    except SlackApiError as exc:
        assert dbl.message("C0OPS", ts)["text"] == "before"  # a refused edit changes nothing
        return False, exc.response["error"]
    return True, ""


def _response_url(client: WebClient, dbl: SlackDouble, blocks: Blocks) -> tuple[bool, str]:
    ts = client.chat_postMessage(channel="C0OPS", text="before")["ts"]
    url = dbl.response_url(channel="C0OPS", message_ts=ts, user="U0ADMIN")
    answer = httpx.post(url, json={"replace_original": True, "text": "after", "blocks": blocks})
    body = answer.json()
    if answer.status_code != 200:
        assert answer.status_code == 400 and body["ok"] is False
        assert dbl.message("C0OPS", ts)["text"] == "before"
        return False, body["error"]
    return body["ok"], ""


def _ephemeral_response_url(
    client: WebClient, dbl: SlackDouble, blocks: Blocks
) -> tuple[bool, str]:
    before = len(dbl.ephemerals(user="U0EPH"))
    url = dbl.response_url(channel="C0OPS", user="U0EPH")
    answer = httpx.post(url, json={"text": "private", "blocks": blocks})
    shown = len(dbl.ephemerals(user="U0EPH")) - before
    if answer.status_code != 200:
        assert shown == 0
        return False, answer.json()["error"]
    assert shown == 1
    return True, ""


def _view(method: str) -> Callable[[WebClient, SlackDouble, Blocks], tuple[bool, str]]:
    def call(client: WebClient, dbl: SlackDouble, blocks: Blocks) -> tuple[bool, str]:
        opened = client.views_open(trigger_id=dbl.trigger_id(), view=modal([section("first")]))[
            "view"
        ]
        args: dict[str, Any] = {"view": modal(blocks)}
        if method in ("views.open", "views.push"):
            args["trigger_id"] = dbl.trigger_id()
        elif method == "views.update":
            args["view_id"] = opened["id"]
        elif method == "views.publish":
            args = {"user_id": "U0ADMIN", "view": {"type": "home", "blocks": blocks}}
        try:
            client.api_call(method, json=args)
        except SlackApiError as exc:
            return False, exc.response["error"]
        return True, ""

    return call


TRANSPORTS = {
    "chat.postMessage": _post,
    "chat.postEphemeral": _ephemeral,
    "chat.update": _update,
    "response_url replace": _response_url,
    "response_url ephemeral": _ephemeral_response_url,
    "views.open": _view("views.open"),
    "views.push": _view("views.push"),
    "views.update": _view("views.update"),
    "views.publish": _view("views.publish"),
}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_every_transport_checks_blocks(client: WebClient, dbl: SlackDouble, transport: str) -> None:
    send = TRANSPORTS[transport]
    assert send(client, dbl, VALID) == (True, "")
    ok, error = send(client, dbl, INVALID)
    assert not ok
    expected = "invalid_arguments" if transport.startswith("views.") else "invalid_blocks"
    assert error == expected


def test_socket_mode_ack_payloads_are_checked() -> None:
    from slack_bolt import App

    from tests.fakes.slack_requests import slash_command_payload

    with SlackDouble() as double:
        app = App(client=WebClient(token=BOT_TOKEN, base_url=double.api_url), signing_secret="s")

        @app.command("/veeam-sa")
        def on_command(ack, command):  # noqa: ANN001
            ack(text="t", blocks=VALID if command["text"] == "good" else INVALID)

        with double.socket_mode(app):
            ack = double.socket_send("slash_commands", slash_command_payload("good"))
            assert ack["payload"]["blocks"] == VALID
            with pytest.raises(AssertionError, match="invalid_blocks"):
                double.socket_send("slash_commands", slash_command_payload("bad"))
