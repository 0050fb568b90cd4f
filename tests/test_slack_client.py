"""The bot's Slack Web API client: slack_sdk's WebClient over kept-alive connections.

Everything above the transport is slack_sdk's (request building, retry handlers, parsing);
these tests drive the real client against the Slack double's sockets and check what the
transport adds or must keep: one connection for many calls, connections the server closed,
errors raised as `urlopen` raises them (so the retry handlers still apply), the configured
CA, and the environment's proxy.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.core.config import load_config
from bot.slack.client import KeepAliveWebClient, make_web_client
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import BOT_TOKEN, SlackDouble


@pytest.fixture
def client(env: dict[str, str]) -> Iterator[KeepAliveWebClient]:
    made = make_web_client(load_config(env, dotenv=None))
    yield made
    made.close()


def test_the_double_counts_connections_and_urllib_opens_one_per_call(
    slack: SlackDouble,
) -> None:
    plain = WebClient(token=BOT_TOKEN, base_url=slack.api_url)
    before = slack.connections
    for _ in range(3):
        plain.auth_test()
    assert slack.connections == before + 3


def test_calls_share_one_kept_alive_connection(
    client: KeepAliveWebClient, slack: SlackDouble
) -> None:
    before = slack.connections
    for n in range(5):
        client.chat_postMessage(channel="C0OPS", text=f"note {n}")
    assert slack.connections == before + 1
    assert [c.args["text"] for c in slack.calls_to("chat.postMessage")] == [
        f"note {n}" for n in range(5)
    ]


def test_a_connection_the_server_closed_is_replaced_and_nothing_is_sent_twice(
    client: KeepAliveWebClient, slack: SlackDouble
) -> None:
    client.chat_postMessage(channel="C0OPS", text="first")
    assert slack.drop_connections() == 1
    client.chat_postMessage(channel="C0OPS", text="second")
    assert [c.args["text"] for c in slack.calls_to("chat.postMessage")] == ["first", "second"]


def test_rate_limit_is_waited_out_through_the_retry_handlers(
    client: KeepAliveWebClient, slack: SlackDouble
) -> None:
    slack.rate_limit("chat.postMessage", retry_after=0, times=2)
    assert client.chat_postMessage(channel="C0OPS", text="hello")["ok"]
    statuses = [c.status for c in slack.calls_to("chat.postMessage")]
    assert statuses == [429, 429, 200]


def test_server_error_is_retried_then_slack_error_is_raised_with_its_code(
    client: KeepAliveWebClient, slack: SlackDouble
) -> None:
    slack.fail("chat.postMessage", error="internal_error", times=1, status=500)
    assert client.chat_postMessage(channel="C0OPS", text="after a blip")["ok"]
    slack.fail("chat.postMessage", error="channel_not_found", times=1)
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="C0GONE", text="nowhere")
    assert raised.value.response["error"] == "channel_not_found"


def test_tls_is_verified_against_the_configured_ca(
    env: dict[str, str], ms: MicrosoftDouble
) -> None:
    """The Microsoft double serves HTTPS with the test CA's certificate: a handshake with
    the configured CA gets an HTTP answer (Graph refuses Slack's token); without it, none."""
    https = f"{ms.graph_url}/api/"
    trusted = make_web_client(load_config({**env, "SLACK_API_URL": https}, dotenv=None))
    with pytest.raises(SlackApiError) as answered:
        trusted.auth_test()
    assert answered.value.response.status_code == 401

    untrusted = KeepAliveWebClient(token=BOT_TOKEN, base_url=https)
    untrusted.retry_handlers = []
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusted.auth_test()


def test_the_environments_proxy_is_used_unless_no_proxy_names_the_host(
    slack: SlackDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`http_proxy` points at the double, which answers a forward-proxy request (absolute
    URL) like any other; the API host itself does not resolve."""
    monkeypatch.setenv("http_proxy", slack.base_url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    via_proxy = KeepAliveWebClient(token=BOT_TOKEN, base_url="http://slack.invalid/api/")
    assert via_proxy.auth_test()["ok"]

    monkeypatch.setenv("no_proxy", "slack.invalid")
    direct = KeepAliveWebClient(token=BOT_TOKEN, base_url="http://slack.invalid/api/")
    direct.retry_handlers = []
    with pytest.raises(OSError):
        direct.auth_test()


def test_a_redirect_is_an_error_not_followed(
    client: KeepAliveWebClient, slack: SlackDouble
) -> None:
    slack.fail("auth.test", error="moved", status=302)
    with pytest.raises(SlackApiError) as raised:
        client.auth_test()
    assert raised.value.response.status_code == 302
    assert len(slack.calls_to("auth.test")) == 1
