"""User-group membership: cached briefly, refreshed beside the request, denying on failure."""

from __future__ import annotations

import time

from slack_sdk import WebClient

from bot.slack.authz import Authorizer
from tests.fakes.slack import BOT_TOKEN, SlackDouble


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_groups_are_cached_and_refreshed_without_waiting(slack: SlackDouble) -> None:
    slack.usergroups["S0OPS"] = ["U0MEMBER"]
    clock = Clock()
    authz = Authorizer(
        ["U0ADMIN", "S0OPS"],
        WebClient(token=BOT_TOKEN, base_url=slack.api_url),
        ttl=60,
        clock=clock,
    )
    assert authz.is_admin("U0ADMIN") and not authz.is_admin("")
    assert authz.is_admin("U0MEMBER")
    assert not authz.is_admin("U0OTHER")
    assert len(slack.calls_to("usergroups.users.list")) == 1  # cached

    slack.usergroups["S0OPS"] = ["U0OTHER"]
    clock.t = 61
    assert authz.is_admin("U0MEMBER")  # stale answer served, refresh started beside it
    deadline = time.monotonic() + 5
    while not authz.is_admin("U0OTHER") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert authz.is_admin("U0OTHER") and not authz.is_admin("U0MEMBER")


def test_an_unreadable_group_denies(slack: SlackDouble) -> None:
    slack.fail("usergroups.users.list", error="missing_scope", times=None)
    authz = Authorizer(["S0OPS"], WebClient(token=BOT_TOKEN, base_url=slack.api_url))
    authz.warm()
    assert not authz.is_admin("U0MEMBER")
