"""The database's view for `GET /metrics`, read at scrape time: flows by kind and outcome,
failures by error code, flows still in progress, secrets by days to expiry, and the time
of the last expiry scan — so the numbers survive restarts and agree with `/veeam-sa list`.

The process registers a `DatabaseCollector` in `bot.core.metrics.REGISTRY`; the counters
updated where things happen live in `bot.core.metrics`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bot.core.clock import parse_time
from storage import queries
from storage.db import Store

log = logging.getLogger(__name__)

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
        return [*_families(), _certificate_family(), _health_family()]

    def collect(self) -> Iterable[Metric]:
        try:
            return self._collect()
        except (sqlite3.Error, ValueError) as exc:
            # A scrape must not fail because of the database: /healthz reports that.
            log.warning("metrics: cannot read the database (%s)", exc)
            return []

    def _collect(self) -> list[Metric]:
        db = self._store.db
        flows, failures, pending, secrets, last_scan = _families()
        certificates = _certificate_family()

        ended: dict[tuple[str, str], int] = {
            (kind, state): 0 for kind in KINDS for state in ("started", *TERMINAL_STATES)
        }
        open_: dict[tuple[str, str], int] = {}
        for kind, state, count in queries.flow_counts(db):
            ended[(kind, "started")] = ended.get((kind, "started"), 0) + count
            if state in queries.TERMINAL_FLOW_STATES:
                ended[(kind, state)] = ended.get((kind, state), 0) + count
            else:
                open_[(kind, state)] = count
        for (kind, state), count in sorted(ended.items()):
            flows.add_metric([kind, state], count)
        for (kind, state), count in sorted(open_.items()):
            pending.add_metric([kind, state], count)

        failed: dict[tuple[str, str], int] = {}
        for kind, error, count in queries.failure_counts(db, FAILED_STATES):
            key = (kind, (str(error or "") or "unknown")[:MAX_ERROR_LABEL])
            failed[key] = failed.get(key, 0) + count
        for (kind, error), count in sorted(failed.items()):
            failures.add_metric([kind, error], count)

        now = self._clock()
        buckets = dict.fromkeys(SECRET_BUCKET_LABELS, 0)
        cert_buckets = dict.fromkeys(SECRET_BUCKET_LABELS, 0)
        for end_at, kind in queries.active_credential_ends(db):
            into = cert_buckets if kind == "certificate" else buckets
            into[secret_bucket(parse_time(end_at), now)] += 1
        for label, count in buckets.items():
            secrets.add_metric([label], count)
        for label, count in cert_buckets.items():
            certificates.add_metric([label], count)

        health = _health_family()
        for state, count in queries.health_counts(db).items():
            health.add_metric([state], count)
        metrics: list[Metric] = [flows, failures, pending, secrets, certificates, health]
        scanned = queries.get_meta(db, "last_scan_at")
        if scanned:
            last_scan.add_metric([], parse_time(scanned).timestamp())
            metrics.append(last_scan)
        return metrics


def _health_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "veeam_sa_accounts_by_health",
        "Active accounts by the health check's last word: healthy, drift (something was "
        "changed behind the bot's back), unknown (the check could not tell), unchecked.",
        labels=["state"],
    )


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


def _certificate_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "veeam_sa_certificates",
        "Active certificates of active accounts, by days to expiry.",
        labels=["bucket"],
    )
