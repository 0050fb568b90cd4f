"""Posting to Slack on behalf of the services: messages, updates, requester-only notes.

A thin layer over the `WebClient`: it takes payloads from `bot.slack.blocks` and returns the
`ts` Slack gave, so services never build Web API calls themselves.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)


@dataclass
class _Note:
    payload: dict[str, Any]
    done: threading.Event | None
    error: Exception | None = None


#: A background edit of a status message waits this long for further edits to the same
#: message, so the steps a flow passes in quick succession make one edit; background thread
#: notes wait as long. Either then goes out while the flow waits on Microsoft rather than
#: while it works. Anything waited for (an edit, a note, a post into the same thread) ends
#: the wait at once.
GATHER_SECONDS = 0.02


class Notifier:
    def __init__(self, client: WebClient) -> None:
        self._client = client
        # Status edits of a flow's parent message: sent in the background, newest wins, one
        # sender per message so an older edit never lands after a newer one.
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}
        self._busy: set[tuple[str, str]] = set()
        self._urgent: set[tuple[str, str]] = set()
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="veeam-sa-slack")
        # Thread notes: posted in order per thread, in the background unless waited for.
        self._notes: dict[tuple[str, str], deque[_Note]] = {}
        self._notes_busy: set[tuple[str, str]] = set()
        self._notes_urgent: set[tuple[str, str]] = set()

    def update_latest(
        self, channel: str, ts: str, payload: dict[str, Any], wait: bool = False
    ) -> None:
        """Edit a status message without holding up the flow; with `wait`, return once this
        edit (or a newer one) has been sent."""
        key = (channel, ts)
        with self._cond:
            self._latest[key] = payload
            if wait:
                self._urgent.add(key)
                self._cond.notify_all()
            if key in self._busy:
                if wait:
                    self._cond.wait_for(lambda: key not in self._busy, timeout=10)
                return
            self._busy.add(key)
        if wait:
            self._drain(key)
        else:
            self._pool.submit(self._drain, key, GATHER_SECONDS)

    def _gather(self, urgent: set[tuple[str, str]], key: tuple[str, str], seconds: float) -> None:
        """Wait `seconds` for more of the same (or less, once `key` is in `urgent`)."""
        if seconds:
            with self._cond:
                self._cond.wait_for(lambda: key in urgent, timeout=seconds)

    def _drain(self, key: tuple[str, str], gather: float = 0.0) -> None:
        self._gather(self._urgent, key, gather)
        while True:
            with self._cond:
                payload = self._latest.pop(key, None)
                if payload is None:
                    self._busy.discard(key)
                    self._urgent.discard(key)
                    self._cond.notify_all()
                    return
            self.update(key[0], key[1], payload)

    def close(self) -> None:
        """Send the edits still queued, then stop."""
        self._pool.shutdown(wait=True)

    def post(
        self,
        channel: str,
        payload: dict[str, Any],
        thread_ts: str | None = None,
        *,
        broadcast: bool = False,
    ) -> str:
        """Post; a thread reply with `broadcast` is also shown in the channel
        (`reply_broadcast`, which Slack only takes with a `thread_ts`). A thread reply comes
        after the notes queued for that thread (`thread`)."""
        if thread_ts:
            self._flush_notes((channel, thread_ts))
        return self._post(channel, payload, thread_ts, broadcast=broadcast)

    def _post(
        self,
        channel: str,
        payload: dict[str, Any],
        thread_ts: str | None = None,
        *,
        broadcast: bool = False,
    ) -> str:
        extra: dict[str, Any] = {"reply_broadcast": True} if broadcast and thread_ts else {}
        response = self._client.chat_postMessage(
            channel=channel,
            thread_ts=thread_ts,
            unfurl_links=False,
            unfurl_media=False,
            **extra,
            **payload,
        )
        return str(response["ts"])

    def dm(self, user: str, payload: dict[str, Any]) -> bool:
        """A direct message to `user`; False (logged) when Slack refuses it."""
        try:
            opened = self._client.conversations_open(users=user)
            self._client.chat_postMessage(
                channel=opened["channel"]["id"], unfurl_links=False, unfurl_media=False, **payload
            )
        except SlackApiError as exc:
            log.warning("could not send a DM to %s: %s", user, exc.response.get("error"))
            return False
        return True

    def update(self, channel: str, ts: str, payload: dict[str, Any]) -> None:
        try:
            self._client.chat_update(channel=channel, ts=ts, **payload)
        except SlackApiError as exc:
            # A lost edit of a status message is not worth failing a flow for.
            log.warning(
                "could not update message %s in %s: %s", ts, channel, exc.response.get("error")
            )

    def thread(
        self, channel: str, thread_ts: str | None, payload: dict[str, Any], wait: bool = True
    ) -> None:
        """A note in a flow's thread; Slack's refusals are logged, not raised.

        Notes to one thread are posted in the order they were given. Without `wait` the note
        is posted in the background and the flow goes on at once; with it (the default), this
        returns once the note — and every note queued before it — has been posted.
        """
        key = (channel, thread_ts or "")
        note = _Note(payload, threading.Event() if wait else None)
        with self._cond:
            self._notes.setdefault(key, deque()).append(note)
            start = key not in self._notes_busy
            self._notes_busy.add(key)
            if wait:
                self._notes_urgent.add(key)
                self._cond.notify_all()
        if start and wait:
            self._drain_notes(key)
        elif start:
            self._pool.submit(self._drain_notes, key, GATHER_SECONDS)
        if note.done is not None:
            note.done.wait(timeout=60)
            if note.error is not None:
                raise note.error

    def _flush_notes(self, key: tuple[str, str]) -> None:
        """Return once the notes queued for this thread are posted (they go at once)."""
        with self._cond:
            if key not in self._notes_busy:
                return
            self._notes_urgent.add(key)
            self._cond.notify_all()
            self._cond.wait_for(lambda: key not in self._notes_busy, timeout=60)

    def _drain_notes(self, key: tuple[str, str], gather: float = 0.0) -> None:
        channel, thread_ts = key
        self._gather(self._notes_urgent, key, gather)
        while True:
            with self._cond:
                queue = self._notes.get(key)
                if not queue:
                    self._notes.pop(key, None)
                    self._notes_busy.discard(key)
                    self._notes_urgent.discard(key)
                    self._cond.notify_all()
                    return
                note = queue.popleft()
            try:
                self._post(channel, note.payload, thread_ts=thread_ts or None)
            except SlackApiError as exc:
                log.warning(
                    "could not post to thread %s in %s: %s",
                    thread_ts,
                    channel,
                    exc.response.get("error"),
                )
            except Exception as exc:  # noqa: BLE001 - a waiting caller gets it; else logged
                if note.done is None:
                    log.warning("could not post to thread %s in %s: %s", thread_ts, channel, exc)
                note.error = exc
            if note.done is not None:
                note.done.set()

    def to_user(self, channel: str, user: str, payload: dict[str, Any]) -> str:
        """Show `payload` to `user` only, somewhere Slack displays it: an ephemeral message in
        the channel itself, else a DM. Returns where ("ephemeral" or "dm").

        Never in a thread: Slack answers ok to an ephemeral in a thread without replies and
        shows nothing ("Ephemeral messages in threads are only shown if there is already an
        active thread", chat.postEphemeral reference).
        """
        return self.to_user_at(channel, user, payload)[0]

    def to_user_at(
        self, channel: str, user: str, payload: dict[str, Any]
    ) -> tuple[str, str | None, str | None]:
        """`to_user`, and where a DM went (its channel and ts, so it can be edited later;
        an ephemeral message cannot be edited through the Web API)."""
        try:
            self._client.chat_postEphemeral(
                channel=channel, user=user, unfurl_links=False, unfurl_media=False, **payload
            )
            return "ephemeral", None, None
        except SlackApiError as exc:
            log.info(
                "ephemeral to %s in %s failed (%s); sending a DM",
                user,
                channel,
                exc.response.get("error"),
            )
        opened = self._client.conversations_open(users=user)
        posted = self._client.chat_postMessage(
            channel=opened["channel"]["id"], unfurl_links=False, unfurl_media=False, **payload
        )
        return "dm", str(posted["channel"]), str(posted["ts"])

    def email_of(self, user: str) -> str | None:
        """The email on a Slack user's profile; None when the bot cannot see it."""
        try:
            profile = self._client.users_info(user=user)["user"].get("profile") or {}
        except SlackApiError as exc:
            log.warning(
                "could not read the Slack profile of %s: %s", user, exc.response.get("error")
            )
            return None
        email = profile.get("email")
        return str(email) if email else None

    def publish_home(self, user: str, view: dict[str, Any]) -> None:
        """Show `view` as `user`'s Home tab (views.publish); raises `SlackApiError`."""
        self._client.views_publish(user_id=user, view=view)

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        """Open the modal `view` for the person whose click or command gave `trigger_id`
        (views.open: single-use, and only for 3 seconds); raises `SlackApiError`."""
        self._client.views_open(trigger_id=trigger_id, view=view)
