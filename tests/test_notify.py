"""Thread notes: posted in order per thread, in the background or waited for."""

from __future__ import annotations

from slack_sdk import WebClient

from bot.slack import blocks
from bot.slack.notify import Notifier
from tests.fakes.slack import BOT_TOKEN, SlackDouble


def test_background_notes_keep_their_order_and_a_waited_note_comes_after_them(
    slack: SlackDouble,
) -> None:
    notifier = Notifier(WebClient(token=BOT_TOKEN, base_url=slack.api_url))
    parent = notifier.post("C0OPS", blocks.note("parent"))
    for n in range(15):
        notifier.thread("C0OPS", parent, blocks.note(f"note {n}"), wait=False)
    notifier.thread("C0OPS", parent, blocks.note("last"))  # returns once everything is posted
    texts = [m.get("text") for m in slack.thread("C0OPS", parent)]
    assert texts == [f"note {n}" for n in range(15)] + ["last"]
    notifier.close()


def test_a_refused_note_is_logged_not_raised_and_the_rest_still_go(slack: SlackDouble) -> None:
    notifier = Notifier(WebClient(token=BOT_TOKEN, base_url=slack.api_url))
    parent = notifier.post("C0OPS", blocks.note("parent"))
    slack.fail("chat.postMessage", "channel_not_found", times=2)
    notifier.thread("C0OPS", parent, blocks.note("lost"), wait=False)
    notifier.thread("C0OPS", parent, blocks.note("lost too"))  # no exception
    notifier.thread("C0OPS", parent, blocks.note("kept"))
    assert [m.get("text") for m in slack.thread("C0OPS", parent)] == ["kept"]
    notifier.close()


def test_quick_status_edits_make_one_edit_and_a_waited_one_goes_at_once(
    slack: SlackDouble,
) -> None:
    """A flow passing three steps in a moment edits its parent message once, with the
    newest checklist; an edit the flow waits for (its last) is not held back."""
    notifier = Notifier(WebClient(token=BOT_TOKEN, base_url=slack.api_url))
    parent = notifier.post("C0OPS", blocks.note("parent"))
    mark = slack.mark()
    for step in ("application", "principal", "secret"):
        notifier.update_latest("C0OPS", parent, blocks.note(f"{step} running"))
    slack.wait_for("chat.update", after=mark)
    edits = [c for c in slack.calls[mark:] if c.method == "chat.update"]
    assert [c.args["text"] for c in edits] == ["secret running"]

    mark = slack.mark()
    notifier.update_latest("C0OPS", parent, blocks.note("roles running"))
    notifier.update_latest("C0OPS", parent, blocks.note("created"), wait=True)
    # back already: the waited edit did not sit out the gathering time behind the other one
    edits = [c for c in slack.calls[mark:] if c.method == "chat.update"]
    assert [c.args["text"] for c in edits] == ["created"]
    notifier.close()


def test_a_post_into_a_thread_comes_after_the_notes_queued_for_it(slack: SlackDouble) -> None:
    notifier = Notifier(WebClient(token=BOT_TOKEN, base_url=slack.api_url))
    parent = notifier.post("C0OPS", blocks.note("parent"))
    notifier.thread("C0OPS", parent, blocks.note("signed in"), wait=False)
    notifier.post("C0OPS", blocks.note("renewed, with a button"), thread_ts=parent)
    texts = [m.get("text") for m in slack.thread("C0OPS", parent)]
    assert texts == ["signed in", "renewed, with a button"]
    notifier.close()
