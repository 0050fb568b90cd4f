"""The Slack double and request helpers behave like Slack for slack_sdk and Bolt."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest
from slack_bolt import App, BoltRequest
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, SlackDouble, unfurls
from tests.fakes.slack_requests import (
    block_action_body,
    block_action_payload,
    multi_select_state,
    post_signed,
    sign,
    slash_command_body,
    slash_command_payload,
)

SECRET = "test-signing-secret"


@pytest.fixture
def dbl() -> Iterator[SlackDouble]:
    with SlackDouble() as double:
        yield double


@pytest.fixture
def client(dbl: SlackDouble) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=dbl.api_url)


# ---------------------------------------------------------------- Web API


def test_post_update_delete_and_threads(dbl: SlackDouble, client: WebClient) -> None:
    parent = client.chat_postMessage(channel="C0OPS", text="creating prod-backup")
    assert parent["ok"] and parent["channel"] == "C0OPS"
    assert parent["message"]["text"] == "creating prod-backup"
    assert parent["message"]["bot_id"] == "B0BOT"

    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*step 1*"}}]
    reply = client.chat_postMessage(
        channel="C0OPS", thread_ts=parent["ts"], text="s1", blocks=blocks
    )
    assert reply["message"]["thread_ts"] == parent["ts"]
    assert reply["message"]["blocks"] == blocks

    updated = client.chat_update(channel="C0OPS", ts=parent["ts"], text="done")
    assert updated["ts"] == parent["ts"] and updated["text"] == "done"

    texts = [(m["ts"], m["text"]) for m in dbl.messages("C0OPS")]
    assert texts == [(parent["ts"], "done"), (reply["ts"], "s1")]
    assert [m["text"] for m in dbl.thread("C0OPS", parent["ts"])] == ["s1"]
    assert dbl.message("C0OPS", parent["ts"])["reply_count"] == 1
    assert dbl.message("C0OPS", parent["ts"])["edited"]

    # slack_sdk sends chat.postMessage as JSON: blocks arrive as a list, not a string.
    call = dbl.calls_to("chat.postMessage", thread_ts=parent["ts"])[0]
    assert call.args["blocks"] == blocks and call.token == BOT_TOKEN

    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0OPS", ts="1600000000.000100", text="x")
    assert err.value.response["error"] == "message_not_found"

    client.chat_delete(channel="C0OPS", ts=reply["ts"])
    assert dbl.thread("C0OPS", parent["ts"]) == []
    with pytest.raises(SlackApiError) as err, pytest.warns(UserWarning):
        client.chat_postMessage(channel="C0OPS")
    assert err.value.response["error"] == "no_text"


def test_ts_unique_and_increasing(client: WebClient) -> None:
    stamps = [
        client.chat_postMessage(channel=ch, text="x")["ts"] for ch in ("C1", "C2", "C1", "C3", "C1")
    ]
    assert len(set(stamps)) == len(stamps)
    assert [float(s) for s in stamps] == sorted(float(s) for s in stamps)
    assert stamps[0] == "1700000000.000100"


def test_ephemeral_dm_and_views(dbl: SlackDouble, client: WebClient) -> None:
    eph = client.chat_postEphemeral(
        channel="C0OPS", user="U0ADMIN", text="code ABCD", thread_ts="1700000000.000100"
    )
    assert eph["ok"] and eph["message_ts"]
    assert dbl.ephemerals(user="U0ADMIN")[0]["text"] == "code ABCD"
    assert dbl.ephemerals(user="U0ADMIN")[0]["thread_ts"] == "1700000000.000100"
    assert dbl.messages() == []  # ephemerals are not channel messages

    dm = client.conversations_open(users="U0ADMIN")["channel"]["id"]
    assert (
        dm.startswith("D") and dm == client.conversations_open(users=["U0ADMIN"])["channel"]["id"]
    )
    client.chat_postMessage(channel=dm, text="hello")
    assert dbl.messages(dm)[0]["text"] == "hello"
    assert client.conversations_info(channel=dm)["channel"]["is_im"] is True

    view = client.views_open(
        trigger_id=dbl.trigger_id(),
        view={"type": "modal", "title": {"type": "plain_text", "text": "t"}, "blocks": []},
    )
    assert view["view"]["id"].startswith("V") and dbl.views[0]["type"] == "modal"


def test_form_get_and_token_param(dbl: SlackDouble, client: WebClient) -> None:
    blocks = [{"type": "divider"}]
    resp = client.api_call(
        "chat.postMessage", data={"channel": "C0OPS", "text": "f", "blocks": json.dumps(blocks)}
    )
    assert resp["message"]["blocks"] == blocks  # form-encoded JSON fields are decoded
    got = httpx.get(
        dbl.api_url + "users.info", params={"token": BOT_TOKEN, "user": "U0ADMIN"}
    ).json()
    assert got["user"]["profile"]["email"] == "ada@contoso.example"
    assert dbl.calls_to("users.info")[0].token == BOT_TOKEN
    assert "token" not in dbl.calls_to("users.info")[0].args


def test_invalid_blocks_are_rejected(client: WebClient) -> None:
    too_long = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0OPS", text="x", blocks=too_long)
    assert err.value.response["error"] == "invalid_blocks"


def test_auth(dbl: SlackDouble) -> None:
    resp = WebClient(token=BOT_TOKEN, base_url=dbl.api_url).auth_test()
    assert (resp["team_id"], resp["user_id"], resp["bot_id"]) == ("T0TEST", "U0BOT", "B0BOT")
    assert "chat:write" in resp.headers["x-oauth-scopes"]

    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=dbl.api_url).auth_test()
    assert err.value.response["error"] == "invalid_auth"

    bot = WebClient(token=BOT_TOKEN, base_url=dbl.api_url)
    with pytest.raises(SlackApiError) as err:
        bot.apps_connections_open(app_token=BOT_TOKEN)
    assert err.value.response["error"] == "not_allowed_token_type"
    assert bot.apps_connections_open(app_token=APP_TOKEN)["url"].startswith("ws://127.0.0.1:")

    with pytest.raises(SlackApiError) as err:
        bot.api_call("no.such.method")
    assert err.value.response["error"] == "unknown_method"


def test_users_and_usergroups(dbl: SlackDouble, client: WebClient) -> None:
    dbl.add_user("U0BOB", name="bob", email="bob@contoso.example", real_name="Bob B")
    dbl.usergroups["S0OPS"] = ["U0ADMIN", "U0BOB"]
    user = client.users_info(user="U0BOB")["user"]
    assert user["profile"]["email"] == "bob@contoso.example" and user["real_name"] == "Bob B"
    assert client.usergroups_users_list(usergroup="S0OPS")["users"] == ["U0ADMIN", "U0BOB"]
    with pytest.raises(SlackApiError) as err:
        client.users_info(user="U0NOBODY")
    assert err.value.response["error"] == "user_not_found"
    with pytest.raises(SlackApiError) as err:
        client.usergroups_users_list(usergroup="S0NONE")
    assert err.value.response["error"] == "no_such_subteam"


def test_fail_on_demand(dbl: SlackDouble, client: WebClient) -> None:
    dbl.fail("chat.postMessage", error="not_in_channel", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel="C0OPS", text="x")
        assert err.value.response["error"] == "not_in_channel"
    assert client.chat_postMessage(channel="C0OPS", text="x")["ok"]
    assert [c.ok for c in dbl.calls_to("chat.postMessage")] == [False, False, True]


def test_rate_limit_and_retry_handler(dbl: SlackDouble) -> None:
    plain = WebClient(token=BOT_TOKEN, base_url=dbl.api_url)
    dbl.rate_limit("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as err:
        plain.chat_postMessage(channel="C0OPS", text="x")
    assert err.value.response.status_code == 429
    assert err.value.response["error"] == "ratelimited"
    assert err.value.response.headers["Retry-After"] == "7"

    # Retry-After 0 keeps the test fast: the handler sleeps int(Retry-After) + random().
    retrying = WebClient(
        token=BOT_TOKEN,
        base_url=dbl.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    dbl.clear()
    dbl.rate_limit("chat.postMessage", retry_after=0)
    assert retrying.chat_postMessage(channel="C0OPS", text="after retry")["ok"]
    assert [c.status for c in dbl.calls_to("chat.postMessage")] == [429, 200]
    assert [m["text"] for m in dbl.messages("C0OPS")] == ["after retry"]


def test_wait_for(dbl: SlackDouble, client: WebClient) -> None:
    start = dbl.mark()
    timer = threading.Timer(0.05, lambda: client.chat_postMessage(channel="C9", text="late"))
    timer.start()
    try:
        call = dbl.wait_for("chat.postMessage", timeout=5, after=start, channel="C9")
    finally:
        timer.join()
    assert call.args["text"] == "late" and call.response["ok"]
    assert dbl.wait_for(lambda c: c.args.get("text") == "late").method == "chat.postMessage"
    with pytest.raises(AssertionError, match="chat.update"):
        dbl.wait_for("chat.update", timeout=0.05)
    dbl.clear()
    assert dbl.calls == []


def test_latency(dbl: SlackDouble, client: WebClient) -> None:
    dbl.latency = 0.2
    began = time.monotonic()
    client.auth_test()
    assert time.monotonic() - began >= 0.2


def test_response_url(dbl: SlackDouble, client: WebClient) -> None:
    parent = client.chat_postMessage(channel="C0OPS", text="Renew?")
    url = dbl.response_url("renew-1", channel="C0OPS", message_ts=parent["ts"], user="U0ADMIN")
    assert url.endswith("/respond/renew-1")
    hook = WebhookClient(url)
    assert hook.send(text="Renewed", replace_original=True).status_code == 200
    assert dbl.message("C0OPS", parent["ts"])["text"] == "Renewed"
    hook.send(text="only you")
    assert dbl.ephemerals(user="U0ADMIN")[0]["text"] == "only you"
    call = dbl.wait_for("response_url", response_url_id="renew-1")
    assert call.args["replace_original"] is True

    assert httpx.post(dbl.response_url(), json={"text": "x"}).json() == {"ok": True}


# ---------------------------------------------------------------- request helpers


def test_sign_matches_slack_sdk_verifier() -> None:
    body = slash_command_body("create prod-backup")
    headers = sign(body, SECRET)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, headers)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert not verifier.is_valid_request(body, sign(body, "other-secret"))
    assert not verifier.is_valid_request(body, sign(body, SECRET, int(time.time()) - 600))
    assert sign(b'{"type": "event_callback"}', SECRET)["Content-Type"] == "application/json"


def test_slash_command_fields() -> None:
    fields = {
        k: v[0]
        for k, v in parse_qs(
            slash_command_body("list", user_id="U0BOB", response_url="http://x/r"),
            keep_blank_values=True,
        ).items()
    }
    assert set(fields) == {
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    }
    assert fields["command"] == "/veeam-sa" and fields["user_id"] == "U0BOB"
    assert fields["response_url"] == "http://x/r"
    assert all(isinstance(v, str) for v in slash_command_payload("help").values())


def test_block_action_payload_shapes() -> None:
    button = block_action_payload(
        "renew", "acct-1", "U0BOB", "C0OPS", "1700000000.000200", thread_ts="1700000000.000100"
    )
    assert button["type"] == "block_actions"
    assert button["actions"][0]["type"] == "button" and button["actions"][0]["value"] == "acct-1"
    assert button["container"]["message_ts"] == "1700000000.000200"
    assert button["message"]["thread_ts"] == "1700000000.000100"

    multi = block_action_payload("subs", user_id="U0BOB", selected_options=["s1", "s2"])
    action = multi["actions"][0]
    assert action["type"] == "multi_static_select" and "value" not in action
    assert [o["value"] for o in action["selected_options"]] == ["s1", "s2"]

    body = block_action_body("renew", "acct-1")
    assert json.loads(parse_qs(body)["payload"][0])["actions"][0]["action_id"] == "renew"


# ---------------------------------------------------------------- Bolt


def _bolt_app(dbl: SlackDouble, seen: list[dict]) -> App:
    app = App(client=WebClient(token=BOT_TOKEN, base_url=dbl.api_url), signing_secret=SECRET)

    @app.command("/veeam-sa")
    def on_command(ack, command, say, client):  # noqa: ANN001
        ack()
        seen.append(command)
        parent = say(f"<@{command['user_id']}> asked: {command['text']}")
        client.chat_postEphemeral(
            channel=command["channel_id"],
            user=command["user_id"],
            thread_ts=parent["ts"],
            text="your code",
        )

    @app.action("create")
    def on_create(ack, body, respond):  # noqa: ANN001
        ack()
        picked = body["state"]["values"]["subs"]["pick"]["selected_options"]
        respond(text="creating " + ",".join(o["value"] for o in picked), replace_original=True)

    return app


def test_bolt_http_mode(dbl: SlackDouble) -> None:
    seen: list[dict] = []
    app = _bolt_app(dbl, seen)
    body = slash_command_body("create prod-backup")
    resp = app.dispatch(BoltRequest(body=body, headers=sign(body, SECRET)))
    assert resp.status == 200
    post = dbl.wait_for("chat.postMessage", channel="C0OPS")
    assert post.args["text"] == "<@U0ADMIN> asked: create prod-backup"
    eph = dbl.wait_for("chat.postEphemeral")
    assert eph.args["thread_ts"] == post.response["ts"]
    assert seen[0]["trigger_id"]

    bad = app.dispatch(BoltRequest(body=body, headers=sign(body, "wrong")))
    assert bad.status == 401

    parent_ts = post.response["ts"]
    url = dbl.response_url(channel="C0OPS", message_ts=parent_ts)
    click = block_action_body(
        "create",
        "go",
        message_ts=parent_ts,
        response_url=url,
        state_values=multi_select_state("subs", "pick", ["s1", "s2"]),
    )
    assert app.dispatch(BoltRequest(body=click, headers=sign(click, SECRET))).status == 200
    dbl.wait_for("response_url")
    assert dbl.message("C0OPS", parent_ts)["text"] == "creating s1,s2"


def test_post_signed_over_http(dbl: SlackDouble) -> None:
    # post_signed speaks real HTTP; the double's 404 proves the request went out.
    resp = post_signed(dbl.base_url + "/slack/events", slash_command_body("help"), SECRET)
    assert resp.status_code == 404


def test_bolt_socket_mode(dbl: SlackDouble) -> None:
    seen: list[dict] = []
    app = _bolt_app(dbl, seen)
    handler = SocketModeHandler(app, APP_TOKEN)
    try:
        handler.connect()
        assert dbl.socket_connected(timeout=5)
        # The handler asked for the URL with the app token, through app.client's base_url.
        assert dbl.calls_to("apps.connections.open")[0].token == APP_TOKEN

        ack = dbl.socket_send("slash_commands", slash_command_payload("list", user_id="U0BOB"))
        assert set(ack) == {"envelope_id"}  # ack() without content: no "payload"
        post = dbl.wait_for("chat.postMessage")
        assert post.args["text"] == "<@U0BOB> asked: list"
        assert seen[0]["user_id"] == "U0BOB"

        parent_ts = post.response["ts"]
        url = dbl.response_url(channel="C0OPS", message_ts=parent_ts)
        payload = block_action_payload(
            "create",
            "go",
            message_ts=parent_ts,
            response_url=url,
            state_values=multi_select_state("subs", "pick", ["s9"]),
        )
        assert dbl.socket_send("interactive", payload)["envelope_id"]
        dbl.wait_for("response_url")
        assert dbl.message("C0OPS", parent_ts)["text"] == "creating s9"
    finally:
        # handler.close() alone works too, but waits ~4 s on the client's socket timeouts.
        dbl.close_socket_mode(handler)


def test_socket_mode_ack_payload_and_reconnect(dbl: SlackDouble) -> None:
    app = App(client=WebClient(token=BOT_TOKEN, base_url=dbl.api_url), signing_secret=SECRET)

    @app.command("/veeam-sa")
    def on_command(ack):  # noqa: ANN001
        ack("Usage: /veeam-sa create NAME")

    with dbl.socket_mode(app):
        ack = dbl.socket_send("slash_commands", slash_command_payload("help"))
        assert ack["payload"] == {"text": "Usage: /veeam-sa create NAME"}

        # Slack's "disconnect" (refresh) message: the client reconnects at once.
        dbl.socket_disconnect_all(mode="disconnect")
        assert dbl.socket_connected(timeout=5, count=2)
        assert len(dbl.calls_to("apps.connections.open")) == 2
        ack = dbl.socket_send("slash_commands", slash_command_payload("help"))
        assert ack["payload"]["text"].startswith("Usage")


def test_threaded_ephemeral_hidden_until_the_thread_is_active(
    dbl: SlackDouble, client: WebClient
) -> None:
    """Slack answers ok to an ephemeral in a thread with no replies, and shows nothing."""
    parent = client.chat_postMessage(channel="C0OPS", text="parent")["ts"]
    hidden = client.chat_postEphemeral(
        channel="C0OPS", user="U0ADMIN", text="code ABCD", thread_ts=parent
    )
    assert hidden["ok"]
    assert dbl.ephemerals(user="U0ADMIN")[0]["shown"] is False
    assert dbl.seen_by("U0ADMIN") == []

    client.chat_postMessage(channel="C0OPS", text="a reply", thread_ts=parent)
    client.chat_postEphemeral(channel="C0OPS", user="U0ADMIN", text="code EFGH", thread_ts=parent)
    client.chat_postEphemeral(channel="C0OPS", user="U0ADMIN", text="in the channel")
    assert [m["text"] for m in dbl.seen_by("U0ADMIN")] == ["code EFGH", "in the channel"]

    # a thread that does not exist is no more active than an empty one
    client.chat_postEphemeral(
        channel="C0OPS", user="U0ADMIN", text="nowhere", thread_ts="1600000000.000100"
    )
    assert "nowhere" not in [m["text"] for m in dbl.seen_by("U0ADMIN")]


def test_threaded_ephemeral_through_response_url_follows_the_same_rule(
    dbl: SlackDouble, client: WebClient
) -> None:
    parent = client.chat_postMessage(channel="C0OPS", text="parent")["ts"]
    url = dbl.response_url(channel="C0OPS", user="U0ADMIN", thread_ts=parent)
    WebhookClient(url).send(text="hidden")
    assert dbl.seen_by("U0ADMIN") == []
    WebhookClient(dbl.response_url(channel="C0OPS", user="U0ADMIN")).send(text="shown")
    assert [m["text"] for m in dbl.seen_by("U0ADMIN")] == ["shown"]


def test_ephemeral_to_a_non_member_is_refused(dbl: SlackDouble, client: WebClient) -> None:
    dbl.channel_members["C0ALERTS"] = {"U0OTHER"}
    with pytest.raises(SlackApiError) as err:
        client.chat_postEphemeral(channel="C0ALERTS", user="U0ADMIN", text="x")
    assert err.value.response["error"] == "user_not_in_channel"
    client.chat_postEphemeral(channel="C0ALERTS", user="U0OTHER", text="y")
    dm = client.conversations_open(users="U0ADMIN")["channel"]["id"]
    client.chat_postMessage(channel=dm, text="by DM")
    assert [m["where"] for m in dbl.seen_by("U0ADMIN")] == ["dm"]


def test_reply_broadcast_needs_a_thread_and_shows_in_the_channel(
    dbl: SlackDouble, client: WebClient
) -> None:
    # "reply_broadcast: Used in conjunction with thread_ts" (chat.postMessage reference)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0OPS", text="loud", reply_broadcast=True)
    assert err.value.response["error"] == "invalid_arguments"
    assert dbl.messages("C0OPS") == []

    parent = client.chat_postMessage(channel="C0OPS", text="warning")["ts"]
    quiet = client.chat_postMessage(channel="C0OPS", text="quiet", thread_ts=parent)["ts"]
    loud = client.chat_postMessage(
        channel="C0OPS", text="loud", thread_ts=parent, reply_broadcast=True
    )["ts"]
    assert dbl.message("C0OPS", loud)["subtype"] == "thread_broadcast"
    assert [m["ts"] for m in dbl.channel_view("C0OPS")] == [parent, loud]
    assert [m["ts"] for m in dbl.thread("C0OPS", parent)] == [quiet, loud]


def test_only_the_bot_edits_its_own_existing_messages(dbl: SlackDouble, client: WebClient) -> None:
    # chat.update errors: message_not_found, cant_update_message (chat.update reference)
    theirs = dbl.post_as_user("C0OPS", "U0ALICE", "a person's message")
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0OPS", ts=theirs, text="edited by the bot")
    assert err.value.response["error"] == "cant_update_message"
    assert dbl.message("C0OPS", theirs)["text"] == "a person's message"

    ours = client.chat_postMessage(channel="C0OPS", text="ours")["ts"]
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0OTHER", ts=ours, text="wrong channel")
    assert err.value.response["error"] == "message_not_found"
    client.chat_delete(channel="C0OPS", ts=ours)
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C0OPS", ts=ours, text="deleted")
    assert err.value.response["error"] == "message_not_found"


def test_unfurl_flags_are_recorded_on_messages_and_ephemerals(dbl: SlackDouble) -> None:
    client = WebClient(token=BOT_TOKEN, base_url=dbl.api_url)
    quiet = client.chat_postMessage(
        channel="C0OPS", text="https://example.com", unfurl_links=False, unfurl_media=False
    )
    loud = client.chat_postMessage(channel="C0OPS", text="https://example.com")
    client.chat_postEphemeral(
        channel="C0OPS", user="U0ADMIN", text="x", unfurl_links=False, unfurl_media=False
    )
    client.chat_postEphemeral(channel="C0OPS", user="U0ADMIN", text="y", unfurl_links=True)
    quiet_msg = dbl.message("C0OPS", quiet["ts"])
    loud_msg = dbl.message("C0OPS", loud["ts"])
    assert (quiet_msg["unfurl_links"], quiet_msg["unfurl_media"]) == (False, False)
    assert (loud_msg["unfurl_links"], loud_msg["unfurl_media"]) == (None, None)
    assert not unfurls(quiet_msg)
    assert unfurls(loud_msg)  # media unfurl unless switched off
    first, second = dbl.ephemerals("C0OPS")
    assert not unfurls(first)
    assert unfurls(second)
    # form-encoded flags are read as Slack reads them
    httpx.post(
        dbl.api_url + "chat.postMessage",
        data={"channel": "C0OPS", "text": "z", "unfurl_links": "false", "unfurl_media": "0"},
        headers={"Authorization": f"Bearer {BOT_TOKEN}"},
    )
    assert not unfurls(dbl.messages("C0OPS")[-1])


def test_calls_since_gives_only_the_calls_after_an_index(dbl: SlackDouble) -> None:
    client = WebClient(token=BOT_TOKEN, base_url=dbl.api_url)
    client.chat_postMessage(channel="C0OPS", text="old")
    seen = len(dbl.calls)
    client.chat_postMessage(channel="C0OPS", text="new")
    assert [c.args["text"] for c in dbl.calls_since(seen)] == ["new"]
    assert dbl.calls_since(len(dbl.calls)) == []
