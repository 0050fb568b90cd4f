"""Arbitrary command text and action payloads: no crash, an answer every time, and nothing
written to the database but the audit of a refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core.errors import CommandError
from bot.slack import ids
from bot.slack.grammar import parse
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, OTHER, Bot

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

WORDS = st.sampled_from(
    [
        "create",
        "list",
        "show",
        "renew",
        "cancel",
        "help",
        "--subscription",
        "--description",
        "'",
        '"',
        "\u201c",
    ]
)
TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(WORDS, st.text(max_size=20)), max_size=8).map(" ".join),
    st.text(min_size=4001, max_size=4100),
)
ACTION_IDS = st.one_of(
    st.sampled_from(
        [
            ids.ACTION_CANCEL_FLOW,
            ids.ACTION_RECHECK,
            ids.ACTION_CREATE,
            ids.ACTION_CHOOSE_SUBSCRIPTIONS,
            ids.ACTION_RENEW,
            ids.ACTION_OPEN_DEVICE_LOGIN,
        ]
    ),
    st.text(min_size=1, max_size=40),
)


@pytest.fixture
def fbot(env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble) -> Iterator[Bot]:
    instance = Bot(env, slack, ms)
    yield instance
    instance.close()


def counts(bot: Bot) -> dict[str, int]:
    return {t: bot.db.table(t).count for t in ("flows", "accounts", "secrets", "notices", "audit")}


def unparsable(text: str) -> bool:
    try:
        parse(text)
    except CommandError:
        return True
    return False


@FUZZ
@given(text=TEXT)
def test_bad_command_text_from_an_admin_changes_nothing(fbot: Bot, text: str) -> None:
    if not unparsable(text):
        return
    before = counts(fbot)
    answer = fbot.command(text, user=ADMIN)
    assert answer.startswith(":warning:")
    assert counts(fbot) == before


@FUZZ
@given(text=TEXT)
def test_any_command_text_from_a_non_admin_is_answered(fbot: Bot, text: str) -> None:
    before = counts(fbot)
    answer = fbot.command(text, user=OTHER)
    assert answer.strip()
    after = counts(fbot)
    assert {k: v for k, v in after.items() if k != "audit"} == {
        k: v for k, v in before.items() if k != "audit"
    }
    assert after["audit"] - before["audit"] in (0, 1)  # at most the refusal


@FUZZ
@given(action_id=ACTION_IDS, value=st.one_of(st.none(), st.text(max_size=80)), admin=st.booleans())
def test_any_action_payload_is_acknowledged_and_changes_nothing(
    fbot: Bot, action_id: str, value: str | None, admin: bool
) -> None:
    before = counts(fbot)
    status, _ = fbot.click(action_id, value, user=ADMIN if admin else OTHER)
    assert status == 200
    fbot.services.workers.submit(lambda: None).result(timeout=5)  # let any queued job settle
    after = counts(fbot)
    assert {k: v for k, v in after.items() if k != "audit"} == {
        k: v for k, v in before.items() if k != "audit"
    }
    refused = after["audit"] - before["audit"]
    assert refused in (0, 1)
    if refused:
        row = list(fbot.db.table("audit").rows_where(order_by="id desc", limit=1))[0]
        assert row["outcome"] == "refused" and json.loads(row["detail"])["rule"]
