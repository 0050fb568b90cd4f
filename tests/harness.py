"""An in-process bot wired to the Slack and Microsoft doubles.

`Bot` builds the real configuration (from an environment dict), the real services and the
real Bolt app, and drives it through its real entry point: signed HTTP requests dispatched
by Bolt (request verification on). Background work runs on the real worker pool.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from slack_bolt import App, BoltRequest

from bot.app import build_app
from bot.core.config import load_config
from bot.core.crypto import Cipher
from bot.flows.root import Services, build_services, utcnow
from bot.slack.client import make_web_client
from storage.db import open_store
from tests.fakes.blockkit import block_errors
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import BOT_TOKEN, SlackDouble
from tests.fakes.slack_requests import (
    app_home_opened_event,
    block_action_body,
    event_callback_payload,
    interaction_body,
    sign,
    slash_command_body,
    view_action_payload,
    view_submission_payload,
)

SIGNING_SECRET = "harness-signing-secret"
ADMIN = "U0ADMIN"
OTHER = "U0OTHER"
CHANNEL = "C0OPS"


def bot_env(
    slack: SlackDouble, ms: MicrosoftDouble, tmp_path: Path, ca_pem: str, **extra: str
) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "VEEAM_SA_ADMINS": ADMIN,
        "VEEAM_SA_DB": str(tmp_path / "veeam-sa.db"),
        "VEEAM_SA_ENCRYPTION_KEY": extra.pop(
            "VEEAM_SA_ENCRYPTION_KEY", Fernet.generate_key().decode()
        ),
        "VEEAM_SA_AUTHORITY_HOST": ms.authority_host,
        "VEEAM_SA_GRAPH_URL": ms.graph_url,
        "VEEAM_SA_ARM_URL": ms.arm_url,
        "SSL_CERT_FILE": ca_pem,
        **extra,
    }


class Bot:
    def __init__(
        self,
        env: dict[str, str],
        slack: SlackDouble,
        ms: MicrosoftDouble,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.env = env
        self.slack = slack
        self.ms = ms
        self.config = load_config(env, dotenv=None)
        self.store = open_store(self.config.db_path)
        assert self.config.encryption_key is not None
        self.cipher = Cipher(self.config.encryption_key)
        self.services: Services = build_services(
            self.config,
            store=self.store,
            cipher=self.cipher,
            slack=make_web_client(self.config),
            clock=clock,
        )
        self.app: App = build_app(self.services)

    # -- driving -----------------------------------------------------------------------------

    def _dispatch(self, body: str) -> tuple[int, str]:
        headers = {k.lower(): [v] for k, v in sign(body, SIGNING_SECRET).items()}
        response = self.app.dispatch(BoltRequest(body=body, headers=headers))
        return response.status, response.body

    def command(self, text: str, user: str = ADMIN, channel: str = CHANNEL) -> str:
        """Send `/veeam-sa TEXT`; returns the text of the immediate (ephemeral) answer."""
        status, body = self._dispatch(
            slash_command_body(
                text,
                user_id=user,
                channel_id=channel,
                response_url=self.slack.response_url(),
                trigger_id=self.slack.trigger_id(),
            )
        )
        assert status == 200, body
        if not body:
            return ""
        payload = json.loads(body)
        # The answer goes back to Slack in the HTTP response; Slack applies Block Kit's rules
        # to it as to any message.
        refused = block_errors(payload["blocks"]) if "blocks" in payload else []
        assert not refused, f"Slack would refuse this answer (invalid_blocks): {refused}"
        return str(payload.get("text", "")) + "\n" + json.dumps(payload.get("blocks", []))

    def click(
        self,
        action_id: str,
        value: str | None,
        user: str = ADMIN,
        channel: str = CHANNEL,
        message_ts: str = "1700000000.000100",
        **kwargs: Any,
    ) -> tuple[int, str]:
        response_url = kwargs.pop("response_url", None) or self.slack.response_url(
            channel=channel, message_ts=message_ts, user=user
        )
        body = block_action_body(
            action_id,
            value,
            user_id=user,
            channel_id=channel,
            message_ts=message_ts,
            response_url=response_url,
            **kwargs,
        )
        return self._dispatch(body)

    def open_home(self, user: str = ADMIN) -> None:
        """The user opens the bot's Home tab: Slack's signed `app_home_opened` event."""
        event = app_home_opened_event(user, view=self.slack.home(user))
        status, body = self._dispatch(json.dumps(event_callback_payload(event)))
        assert status == 200, body

    def click_home(self, action_id: str, value: str | None, user: str = ADMIN) -> tuple[int, str]:
        """A click on a button of the Home tab `user` sees now."""
        view = self.slack.home(user)
        assert view is not None, f"{user} has no Home tab"
        payload = view_action_payload(
            action_id, value, view, user_id=user, trigger_id=self.slack.trigger_id()
        )
        return self._dispatch(interaction_body(payload))

    def submit_view(
        self, view_id: str, values: dict[str, dict[str, dict[str, Any]]], user: str = ADMIN
    ) -> dict[str, Any]:
        """Submit the modal `view_id` with `values`; Slack applies the bot's answer (a refused
        answer fails the test). Returns `{"closed", "errors"}`."""
        payload = view_submission_payload(
            self.slack.view(view_id), values, user_id=user, trigger_id=self.slack.trigger_id()
        )
        status, body = self._dispatch(interaction_body(payload))
        assert status == 200, body
        return self.slack.check_view_ack(view_id, json.loads(body) if body else None)

    # -- looking -----------------------------------------------------------------------------

    @property
    def db(self) -> Any:
        return self.store.db

    def flow(self, name: str) -> dict[str, Any]:
        rows = list(
            self.db.table("flows").rows_where(
                "name = ?", [name], order_by="created_at desc", limit=1
            )
        )
        assert rows, f"no flow for {name}"
        return dict(rows[0])

    def wait_state(self, name: str, *states: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        flow: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                flow = self.flow(name)
            except AssertionError:
                flow = {}
            if flow.get("state") in states:
                return flow
            time.sleep(0.02)
        raise AssertionError(
            f"flow {name} did not reach {states}; it is {flow.get('state')!r}: {flow}"
        )

    def thread_texts(self, name: str) -> list[str]:
        flow = self.flow(name)
        return [m.get("text", "") for m in self.slack.thread(flow["channel_id"], flow["parent_ts"])]

    def wait_thread(self, name: str, fragment: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                for text in self.thread_texts(name):
                    if fragment in text:
                        return text
            except (AssertionError, KeyError, TypeError):
                pass
            time.sleep(0.02)
        raise AssertionError(
            f"no thread message containing {fragment!r} for {name}: {self.thread_texts(name)}"
        )

    def close(self) -> None:
        self.services.workers.shutdown(wait=True)
        self.services.notifier.close()
        self.services.http.close()
        self.store.close()
