"""Values from outside the bot that look almost right: a name with a final newline, row ids
written with other digits, and many pending codes in the log redaction."""

from __future__ import annotations

import json
import secrets

import pytest

from bot.core import logs
from bot.core.errors import CommandError
from bot.core.logs import MASK, redact, register_secret
from bot.slack import ids
from bot.slack.grammar import parse
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, Bot
from tests.test_renew import alert, managed


@pytest.mark.parametrize(
    "text",
    ["create 'dupname\n'", "create 'dup\nname'", "renew 'prod\n'", "show 'prod\n'"],
)
def test_a_final_newline_is_not_part_of_a_valid_value(text: str) -> None:
    with pytest.raises(CommandError):
        parse(text)


def test_create_with_a_trailing_newline_is_refused_beside_the_existing_name(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    flows_before = bot.db.table("flows").count
    answer = bot.command("create 'dupname\n'")
    assert "is not a valid name" in answer and "'\\\\n'" in answer, answer
    assert bot.db.table("flows").count == flows_before
    assert bot.db.table("accounts").count == 0
    assert ms.flows == []


def test_renew_values_are_ascii_row_ids_only(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    account = managed(bot)
    assert account["id"] == 1  # so that a value read as "1" would renew it
    ts = alert(bot, account)
    flows_before = bot.db.table("flows").count
    for value in ("\u00b2", "\u0661", "1\n", " 1", "9" * 19, "9" * 5000, "-1", "+1"):
        mark = slack.mark()
        status, _ = bot.click(ids.ACTION_RENEW, value, user=ADMIN, message_ts=ts)
        assert status == 200
        answer = slack.wait_for("response_url", after=mark)
        assert "not managed by this bot" in json.dumps(answer.args), value
    assert bot.db.table("flows").count == flows_before
    assert len(ms.flows) == 1  # the creation's sign-in only


def test_two_thousand_pending_codes_are_each_masked_in_every_shape() -> None:
    known_before = logs.known_count()
    codes = []
    for n in range(2000):
        device = "DAQABIQEAAA" + secrets.token_urlsafe(40)
        user = secrets.token_hex(4).upper()
        register_secret(device, owner=f"pending-{n}")
        register_secret(user, owner=f"pending-{n}")
        codes.append((device, user))
    try:
        for device, user in (codes[0], codes[977], codes[-1]):
            for line in (
                f"device_code={device}&client_id=x",
                json.dumps({"flow": {"code": device, "message": f"enter {user} at the page"}}),
                f"code {user}. then {device}",
                f"({user})",
            ):
                masked = redact(line)
                assert device not in masked and user not in masked, masked
                assert MASK in masked
        assert redact("nothing secret here: 12345678 ABCDEF12") == (
            "nothing secret here: 12345678 ABCDEF12"
        )
    finally:
        for n in range(2000):
            logs.forget(f"pending-{n}")
    assert logs.known_count() == known_before
