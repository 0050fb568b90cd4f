"""Posting to Slack on behalf of the services: messages, updates, requester-only notes.

A thin layer over the `WebClient`: it takes payloads from `bot.blocks` and returns the
`ts` Slack gave, so services never build Web API calls themselves.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, client: WebClient) -> None:
        self._client = client

    def post(self, channel: str, payload: dict[str, Any], thread_ts: str | None = None) -> str:
        response = self._client.chat_postMessage(
            channel=channel, thread_ts=thread_ts, unfurl_links=False, unfurl_media=False, **payload
        )
        return str(response["ts"])

    def update(self, channel: str, ts: str, payload: dict[str, Any]) -> None:
        try:
            self._client.chat_update(channel=channel, ts=ts, **payload)
        except SlackApiError as exc:
            # A lost edit of a status message is not worth failing a flow for.
            log.warning(
                "could not update message %s in %s: %s", ts, channel, exc.response.get("error")
            )

    def thread(self, channel: str, thread_ts: str | None, payload: dict[str, Any]) -> None:
        """A note in a flow's thread; failures are logged, not raised."""
        try:
            self.post(channel, payload, thread_ts=thread_ts)
        except SlackApiError as exc:
            log.warning(
                "could not post to thread %s in %s: %s",
                thread_ts,
                channel,
                exc.response.get("error"),
            )

    def to_user(
        self, channel: str, user: str, payload: dict[str, Any], thread_ts: str | None
    ) -> str:
        """Show `payload` to `user` only: ephemeral in the thread, else a DM. Returns where."""
        try:
            self._client.chat_postEphemeral(
                channel=channel, user=user, thread_ts=thread_ts, **payload
            )
            return "ephemeral"
        except SlackApiError as exc:
            log.info(
                "ephemeral to %s in %s failed (%s); sending a DM",
                user,
                channel,
                exc.response.get("error"),
            )
        opened = self._client.conversations_open(users=user)
        self._client.chat_postMessage(channel=opened["channel"]["id"], **payload)
        return "dm"
