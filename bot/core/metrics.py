"""Prometheus metrics, served on `GET /metrics` in both modes.

Everything lives in one dedicated `CollectorRegistry` (`REGISTRY`), never in
prometheus_client's global one, so importing a library that registers metrics globally
changes nothing here. Two kinds of metrics:

- instruments, updated where things happen:
  `veeam_sa_signin_poll_seconds` (one device-code token poll, `bot.flows.create`),
  `veeam_sa_microsoft_requests_total{service,status}` (Graph and ARM, `bot.clients.msapi`) and
  `veeam_sa_slack_requests_total{method,status}` (every Slack Web API attempt, counted by
  `SlackRequestCounter`, a slack_sdk retry handler that never retries);
- `DatabaseCollector`, which reads the database at scrape time, so its numbers survive
  restarts and agree with what `/veeam-sa list` shows: flows by kind and outcome, failures
  by error code, flows still in progress, secrets by days to expiry, and the time of the
  last expiry scan.

Labels are kinds, states, error codes, service and API-method names and HTTP statuses:
never a name, a user, a token or a secret.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from storage import queries
from storage.db import Store

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

#: Flow kinds always reported, with zeros, so that rates and alerts have series to use.
KINDS = ("create", "renew")
TERMINAL_STATES = tuple(sorted(queries.TERMINAL_FLOW_STATES))
#: Flows that ended in one of these states count as failures.
FAILED_STATES = ("failed", "rolled_back")
#: Days-to-expiry buckets of `veeam_sa_secrets`: (label, upper bound in days), in order;
#: a secret goes into the first bucket whose bound it is within, else into "gt_30".
SECRET_BUCKETS: tuple[tuple[str, int], ...] = (
    ("expired", 0),
    ("le_1", 1),
    ("le_7", 7),
    ("le_14", 14),
    ("le_30", 30),
)
SECRET_BUCKET_LABELS = (*(label for label, _ in SECRET_BUCKETS), "gt_30")
MAX_ERROR_LABEL = 100


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


def secret_bucket(end_at: datetime, now: datetime) -> str:
    left = end_at - now
    for label, days in SECRET_BUCKETS:
        if left <= timedelta(days=days):
            return label
    return "gt_30"


class DatabaseCollector(Collector):
    """Reads the database at scrape time (one short read per family)."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return list(_families())

    def collect(self) -> Iterable[Metric]:
        try:
            return self._collect()
        except (sqlite3.Error, ValueError) as exc:
            # A scrape must not fail because of the database: /healthz reports that.
            log.warning("metrics: cannot read the database (%s)", exc)
            return []

    def _collect(self) -> list[Metric]:
        from bot.flows.expiry import parse_time

        db = self._store.db
        flows, failures, pending, secrets, last_scan = _families()

        ended: dict[tuple[str, str], int] = {
            (kind, state): 0 for kind in KINDS for state in ("started", *TERMINAL_STATES)
        }
        open_: dict[tuple[str, str], int] = {}
        for kind, state, count in db.execute(
            "SELECT kind, state, COUNT(*) FROM flows GROUP BY kind, state"
        ).fetchall():
            kind, state = str(kind), str(state)
            ended[(kind, "started")] = ended.get((kind, "started"), 0) + count
            if state in queries.TERMINAL_FLOW_STATES:
                ended[(kind, state)] = ended.get((kind, state), 0) + count
            else:
                open_[(kind, state)] = count
        for (kind, state), count in sorted(ended.items()):
            flows.add_metric([kind, state], count)
        for (kind, state), count in sorted(open_.items()):
            pending.add_metric([kind, state], count)

        placeholders = ",".join("?" for _ in FAILED_STATES)
        failed: dict[tuple[str, str], int] = {}
        for kind, error, count in db.execute(
            f"SELECT kind, error, COUNT(*) FROM flows WHERE state IN ({placeholders}) "  # noqa: S608 - constants
            "GROUP BY kind, error",
            list(FAILED_STATES),
        ).fetchall():
            key = (str(kind), (str(error or "") or "unknown")[:MAX_ERROR_LABEL])
            failed[key] = failed.get(key, 0) + count
        for (kind, error), count in sorted(failed.items()):
            failures.add_metric([kind, error], count)

        now = self._clock()
        buckets = dict.fromkeys(SECRET_BUCKET_LABELS, 0)
        for (end_at,) in db.execute(
            "SELECT s.end_at FROM secrets s JOIN accounts a ON a.id = s.account_id "
            "WHERE s.state = 'active' AND a.state = 'active'"
        ).fetchall():
            buckets[secret_bucket(parse_time(str(end_at)), now)] += 1
        for label, count in buckets.items():
            secrets.add_metric([label], count)

        metrics: list[Metric] = [flows, failures, pending, secrets]
        scanned = queries.get_meta(db, "last_scan_at")
        if scanned:
            last_scan.add_metric([], parse_time(scanned).timestamp())
            metrics.append(last_scan)
        return metrics


def _families() -> tuple[
    CounterMetricFamily,
    CounterMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
]:
    return (
        CounterMetricFamily(
            "veeam_sa_flows",
            'Flows by kind: state="started" counts every flow begun; the terminal states '
            "count the flows that ended in them.",
            labels=["kind", "state"],
        ),
        CounterMetricFamily(
            "veeam_sa_flow_failures",
            "Flows that failed (or were rolled back), by kind and error code.",
            labels=["kind", "error"],
        ),
        GaugeMetricFamily(
            "veeam_sa_flows_pending",
            "Flows in progress (not yet in a terminal state), by kind and state.",
            labels=["kind", "state"],
        ),
        GaugeMetricFamily(
            "veeam_sa_secrets",
            "Active client secrets of active accounts, by days to expiry.",
            labels=["bucket"],
        ),
        GaugeMetricFamily(
            "veeam_sa_last_scan_timestamp_seconds",
            "Unix time of the last completed expiry scan.",
        ),
    )
