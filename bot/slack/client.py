"""The Slack Web API client, built from configuration (never at import time)."""

from __future__ import annotations

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.core.config import Config
from bot.core.metrics import SlackRequestCounter


def make_web_client(config: Config) -> WebClient:
    """A WebClient on `SLACK_API_URL` that waits out 429s (Retry-After) and retries blips.

    The first retry handler only counts requests for `/metrics`: slack_sdk consults the
    handlers in order after every attempt, and it never asks for a retry itself.
    """
    return WebClient(
        token=config.slack_bot_token,
        base_url=config.slack_api_url,
        ssl=config.ssl_context(),
        timeout=15,
        retry_handlers=[
            SlackRequestCounter(),
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=5),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )
