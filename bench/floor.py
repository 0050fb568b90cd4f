"""The floor for the ack-latency row: a bare Bolt app whose `/veeam-sa` listener only acks.

It is served the same way as the bot (``bot.server.HttpServer`` with ``Health``), with the
same Bolt options and signing-secret verification, so the difference between the two is
what the bot's own handler does on the ack path. Run as a child process::

    PORT=... SLACK_SIGNING_SECRET=... SLACK_API_URL=... SLACK_BOT_TOKEN=... python -m bench.floor
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

from slack_bolt import Ack, App
from slack_sdk import WebClient

from bot.server import Health, HttpServer


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    client = WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"])
    app = App(
        client=client,
        signing_secret=os.environ["SLACK_SIGNING_SECRET"],
        token_verification_enabled=False,
        request_verification_enabled=True,
        logger=logging.getLogger("slack_bolt"),
    )

    @app.command("/veeam-sa")
    def on_command(ack: Ack) -> None:
        ack()

    server = HttpServer(
        int(os.environ.get("PORT", "3000")),
        app,
        Health(lambda: True, lambda: True, "http"),
        host="127.0.0.1",
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
