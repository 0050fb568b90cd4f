"""A database another process holds locked: a clear answer within Slack's 3 seconds, and
nothing changed."""

from __future__ import annotations

import json
import sqlite3
import time

from bot.slack import ids
from tests.fakes.slack import SlackDouble
from tests.harness import ADMIN, Bot


def test_locked_database_gets_a_clear_answer_in_time(bot: Bot, slack: SlackDouble) -> None:
    holder = sqlite3.connect(bot.store.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        answer = bot.command("create prod")
        elapsed = time.monotonic() - started
        assert "cannot write its database" in answer and "Nothing was changed" in answer
        assert elapsed < 3.0

        bot.click(ids.ACTION_RENEW, "1", user=ADMIN)
        reply = slack.wait_for("response_url", timeout=10)
        assert "cannot write its database" in json.dumps(reply.args)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert bot.db.table("flows").count == 0
    assert slack.calls_to("chat.postMessage") == []
    assert "Starting" in bot.command("create prod")  # and it works again once the lock is gone
