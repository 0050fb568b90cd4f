"""`GET /metrics`: the real process after real flows, the database collector over a seeded
database, and the Slack and Microsoft request counters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bot.clients.msapi import MicrosoftApi
from bot.core import metrics
from bot.core.config import load_config
from bot.core.errors import Unreachable
from bot.flows.stats import DatabaseCollector, secret_bucket
from bot.slack.client import make_web_client
from storage import queries
from storage.db import open_store
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.process import SUB, BotProcess, create, flow_row, free_port, launch, wait_until

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels` (None: no such sample)."""
    found = [v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


# -- the real process --------------------------------------------------------------------


def test_metrics_of_the_running_bot_after_a_finished_and_a_declined_create(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    bot = launch(env, tmp_path, procs)

    create(bot, slack, f"create good --subscription {SUB}")
    wait_until(lambda: len(ms.flows) == 1, what="first device flow")
    ms.approve(ms.flows[0].user_code)
    wait_until(lambda: flow_row(db, "good").get("state") == "done", timeout=30, what="creation")

    create(bot, slack, "create bad")
    wait_until(lambda: len(ms.flows) == 2, what="second device flow")
    ms.decline(ms.flows[1].user_code)
    wait_until(lambda: flow_row(db, "bad").get("state") == "failed", what="declined sign-in")

    create(bot, slack, "create waiting")
    wait_until(
        lambda: flow_row(db, "waiting").get("state") == "awaiting_sign_in", what="third sign-in"
    )

    response = httpx.get(f"{bot.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    text = response.text

    # Flows, from the database
    assert value(text, "veeam_sa_flows_total", kind="create", state="started") == 3
    assert value(text, "veeam_sa_flows_total", kind="create", state="done") == 1
    assert value(text, "veeam_sa_flows_total", kind="create", state="failed") == 1
    assert value(text, "veeam_sa_flows_total", kind="renew", state="started") == 0
    failures = [(ls, v) for n, ls, v in samples(text) if n == "veeam_sa_flow_failures_total"]
    assert len(failures) == 1
    assert failures[0][0]["kind"] == "create"
    assert failures[0][0]["error"].startswith("declined")
    assert failures[0][1] == 1
    assert value(text, "veeam_sa_flows_pending", kind="create", state="awaiting_sign_in") == 1

    # Secrets and the expiry scan (it runs at start-up)
    assert value(text, "veeam_sa_secrets", bucket="gt_30") == 1
    for bucket in ("expired", "le_1", "le_7", "le_14", "le_30"):
        assert value(text, "veeam_sa_secrets", bucket=bucket) == 0
    last_scan = value(text, "veeam_sa_last_scan_timestamp_seconds")
    assert last_scan is not None
    assert abs(last_scan - datetime.now(UTC).timestamp()) < 300

    # Instruments
    polls = value(text, "veeam_sa_signin_poll_seconds_count")
    assert polls is not None and polls >= 2
    graph = value(text, "veeam_sa_microsoft_requests_total", service="graph", status="201")
    arm = value(text, "veeam_sa_microsoft_requests_total", service="arm", status="200")
    assert graph is not None and graph >= 2  # application, service principal
    assert arm is not None and arm >= 1
    signed_in = value(text, "veeam_sa_slack_requests_total", method="auth.test", status="200")
    assert signed_in is not None and signed_in >= 1
    posted = value(text, "veeam_sa_slack_requests_total", method="chat.postMessage", status="200")
    assert posted is not None and posted >= 3
    assert (value(text, "process_resident_memory_bytes") or 0) > 0

    # Nothing secret in the exposition
    secret = ms.applications[0].passwords[0].secret_text
    assert secret not in text
    assert ms.flows[2].user_code not in text and ms.flows[2].device_code not in text


# -- the database collector --------------------------------------------------------------


def _seed(tmp_path: Path) -> DatabaseCollector:
    store = open_store(tmp_path / "seeded.db")
    db = store.db

    def flow(n: int, kind: str, state: str, error: str | None = None) -> None:
        queries.insert_flow(
            db,
            {
                "id": f"f{n}",
                "kind": kind,
                "state": state,
                "name": f"acct{n}",
                "requester": "U0ADMIN",
                "created_at": queries.utcnow_iso(NOW),
                "error": error,
            },
        )

    flow(1, "create", "done")
    flow(2, "create", "done")
    flow(3, "create", "failed", "declined:70000")
    flow(4, "create", "failed", "declined:70000")
    flow(5, "create", "rolled_back", "MicrosoftError:Authorization_RequestDenied")
    flow(6, "create", "awaiting_sign_in")
    flow(7, "renew", "renewing")
    flow(8, "renew", "failed", None)
    flow(9, "renew", "expired")

    def account(name: str, state: str = "active") -> int:
        return queries.insert_account(
            db, {"name": name, "state": state, "created_at": queries.utcnow_iso(NOW)}
        )

    live = account("live")
    gone = account("gone", state="deleted")
    ends = {
        "a": NOW - timedelta(days=3),  # expired
        "b": NOW + timedelta(hours=5),  # le_1
        "c": NOW + timedelta(days=1),  # le_1 (exactly one day)
        "d": NOW + timedelta(days=6),  # le_7
        "e": NOW + timedelta(days=20),  # le_30
        "f": NOW + timedelta(days=300),  # gt_30
    }
    for key, end in ends.items():
        queries.insert_secret(
            db,
            {
                "account_id": live,
                "key_id": key,
                "end_at": end.isoformat().replace("+00:00", "Z"),
                "state": "active",
            },
        )
    queries.insert_secret(  # retired: not counted
        db, {"account_id": live, "key_id": "r", "end_at": NOW.isoformat(), "state": "retired"}
    )
    queries.insert_secret(  # its account is deleted: not counted
        db, {"account_id": gone, "key_id": "g", "end_at": NOW.isoformat(), "state": "active"}
    )
    queries.set_meta(db, "last_scan_at", "2030-06-01T11:00:00+00:00")
    return DatabaseCollector(store, lambda: NOW)


def test_collector_reads_flows_secrets_and_the_last_scan(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(_seed(tmp_path))
    get = registry.get_sample_value

    assert get("veeam_sa_flows_total", {"kind": "create", "state": "started"}) == 6
    assert get("veeam_sa_flows_total", {"kind": "create", "state": "done"}) == 2
    assert get("veeam_sa_flows_total", {"kind": "create", "state": "failed"}) == 2
    assert get("veeam_sa_flows_total", {"kind": "create", "state": "rolled_back"}) == 1
    assert get("veeam_sa_flows_total", {"kind": "create", "state": "cancelled"}) == 0
    assert get("veeam_sa_flows_total", {"kind": "renew", "state": "started"}) == 3
    assert get("veeam_sa_flows_total", {"kind": "renew", "state": "expired"}) == 1
    # Only terminal states (and "started") in the counter; the rest are pending.
    assert get("veeam_sa_flows_total", {"kind": "create", "state": "awaiting_sign_in"}) is None

    assert get("veeam_sa_flow_failures_total", {"kind": "create", "error": "declined:70000"}) == 2
    assert (
        get(
            "veeam_sa_flow_failures_total",
            {"kind": "create", "error": "MicrosoftError:Authorization_RequestDenied"},
        )
        == 1
    )
    assert get("veeam_sa_flow_failures_total", {"kind": "renew", "error": "unknown"}) == 1

    assert get("veeam_sa_flows_pending", {"kind": "create", "state": "awaiting_sign_in"}) == 1
    assert get("veeam_sa_flows_pending", {"kind": "renew", "state": "renewing"}) == 1
    assert get("veeam_sa_flows_pending", {"kind": "create", "state": "done"}) is None

    buckets = {
        b: get("veeam_sa_secrets", {"bucket": b})
        for b in ("expired", "le_1", "le_7", "le_14", "le_30", "gt_30")
    }
    assert buckets == {"expired": 1, "le_1": 2, "le_7": 1, "le_14": 0, "le_30": 1, "gt_30": 1}
    assert (
        get("veeam_sa_last_scan_timestamp_seconds")
        == datetime(2030, 6, 1, 11, tzinfo=UTC).timestamp()
    )


def test_collector_without_a_scan_yet_and_with_a_broken_database(tmp_path: Path) -> None:
    store = open_store(tmp_path / "empty.db")
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(store, lambda: NOW))
    assert registry.get_sample_value("veeam_sa_last_scan_timestamp_seconds") is None
    assert (
        registry.get_sample_value("veeam_sa_flows_total", {"kind": "create", "state": "done"}) == 0
    )
    store.db.execute("DROP TABLE notices")
    store.db.execute("DROP TABLE secrets")
    # A scrape does not fail because the database does: /healthz reports that.
    assert registry.get_sample_value("veeam_sa_secrets", {"bucket": "expired"}) is None


def test_secret_buckets_edges() -> None:
    assert secret_bucket(NOW, NOW) == "expired"
    assert secret_bucket(NOW + timedelta(seconds=1), NOW) == "le_1"
    assert secret_bucket(NOW + timedelta(days=7), NOW) == "le_7"
    assert secret_bucket(NOW + timedelta(days=7, seconds=1), NOW) == "le_14"
    assert secret_bucket(NOW + timedelta(days=30), NOW) == "le_30"
    assert secret_bucket(NOW + timedelta(days=30, seconds=1), NOW) == "gt_30"


# -- the request counters ----------------------------------------------------------------


def _count(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_slack_counter_sees_every_attempt_including_retried_ones(
    env: dict[str, str], slack: SlackDouble
) -> None:
    client = make_web_client(load_config(env, dotenv=None))
    ok = _count("veeam_sa_slack_requests_total", method="chat.postMessage", status="200")
    limited = _count("veeam_sa_slack_requests_total", method="chat.postMessage", status="429")
    slack.rate_limit("chat.postMessage", retry_after=0, times=1)
    client.chat_postMessage(channel="C0OPS", text="hello")
    assert _count("veeam_sa_slack_requests_total", method="chat.postMessage", status="429") == (
        limited + 1
    )
    assert _count("veeam_sa_slack_requests_total", method="chat.postMessage", status="200") == (
        ok + 1
    )


def test_slack_counter_counts_unreachable_as_error(env: dict[str, str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api/"
    client = make_web_client(load_config({**env, "SLACK_API_URL": dead}, dotenv=None))
    client.retry_handlers = client.retry_handlers[:1]  # the counter only: no retries
    before = _count("veeam_sa_slack_requests_total", method="auth.test", status="error")
    with pytest.raises(OSError):
        client.auth_test()
    assert _count("veeam_sa_slack_requests_total", method="auth.test", status="error") == (
        before + 1
    )


def test_microsoft_counter_by_service_and_status() -> None:
    answers = iter([503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(next(answers), json={"value": []})

    class Probe(MicrosoftApi):
        metric_label = "probe"

    api = Probe(
        "https://probe.invalid",
        httpx.Client(transport=httpx.MockTransport(handler)),
        lambda: "token",
        attempts=2,
        sleep=lambda _: None,
    )
    assert api.get_json("/things") == {"value": []}
    with pytest.raises(Unreachable):
        api.get_json("/down")
    assert _count("veeam_sa_microsoft_requests_total", service="probe", status="503") == 1
    assert _count("veeam_sa_microsoft_requests_total", service="probe", status="200") == 1
    assert _count("veeam_sa_microsoft_requests_total", service="probe", status="error") == 2


def test_metrics_endpoint_is_not_json_and_healthz_still_is(
    env: dict[str, str], tmp_path: Path, procs: list[BotProcess]
) -> None:
    bot = launch(env, tmp_path, procs)
    text = httpx.get(f"{bot.url}/metrics").text
    assert text.startswith("# HELP")
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "veeam_sa_flows",
        "veeam_sa_flow_failures",
        "veeam_sa_flows_pending",
        "veeam_sa_secrets",
        "veeam_sa_signin_poll_seconds",
        "veeam_sa_slack_requests",
    } <= families
    assert json.loads(httpx.get(f"{bot.url}/healthz").text)["status"] == "ok"
