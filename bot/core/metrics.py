"""Prometheus metrics, served on `GET /metrics` in both modes.

Everything lives in one dedicated `CollectorRegistry` (`REGISTRY`), never in
prometheus_client's global one, so importing a library that registers metrics globally
changes nothing here. Two kinds of metrics:

- instruments, updated where things happen:
  `veeam_sa_signin_poll_seconds` (one device-code token poll, `bot.flows.signin`),
  `veeam_sa_microsoft_requests_total{service,status}` (Graph and ARM, `bot.clients.msapi`) and
  `veeam_sa_slack_requests_total{method,status}` (every Slack Web API attempt, counted by
  `SlackRequestCounter`, a slack_sdk retry handler that never retries);
- `bot.flows.stats.DatabaseCollector`, registered here by the process, which reads the
  database at scrape time (through `storage.queries`), so its numbers survive restarts and
  agree with what `/veeam-sa list` shows.

Labels are kinds, states, error codes, service and API-method names and HTTP statuses:
never a name, a user, a token or a secret.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

log = logging.getLogger(__name__)

# `*_created` series add nothing for a single long-running process.
disable_created_metrics()

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

SIGNIN_POLL_SECONDS = Histogram(
    "veeam_sa_signin_poll_seconds",
    "Duration of one device-code token poll to the Microsoft identity platform.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0),
    registry=REGISTRY,
)
MICROSOFT_REQUESTS = Counter(
    "veeam_sa_microsoft_requests",
    "HTTP requests to Microsoft Graph and Azure Resource Manager (each attempt), by service "
    'and HTTP status ("error" when no response arrived).',
    ["service", "status"],
    registry=REGISTRY,
)
SLACK_REQUESTS = Counter(
    "veeam_sa_slack_requests",
    "Slack Web API requests (each attempt), by API method and HTTP status "
    '("error" when no response arrived).',
    ["method", "status"],
    registry=REGISTRY,
)



def exposition() -> tuple[bytes, str]:
    """The body and content type of a `/metrics` answer."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def microsoft_request(service: str, status: int | None) -> None:
    MICROSOFT_REQUESTS.labels(service=service, status=str(status) if status else "error").inc()


class SlackRequestCounter(RetryHandler):
    """Counts every Slack Web API attempt in `veeam_sa_slack_requests_total`; never retries.

    slack_sdk asks its retry handlers, in order, after every attempt (successful or not)
    until one of them retries, so this one goes first in `WebClient(retry_handlers=…)`.
    Bolt copies the app client's handlers into the client it gives each listener, so the
    count covers those calls too.
    """

    def __init__(self) -> None:
        super().__init__(max_retry_count=0)

    def can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        method = request.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "unknown"
        status = str(response.status_code) if response is not None else "error"
        SLACK_REQUESTS.labels(method=method, status=status).inc()
        return False

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return False
