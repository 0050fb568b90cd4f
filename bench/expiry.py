"""The expiry-scan rows, run as its own process by `bench.run` (see bench/README.md,
"Expiry scan"): a large database built with the product's schema, then `decide` and `scan`
from `bot.flows.expiry` timed against it, with the Slack double in this process.

The database is opened and migrated by `storage.db.open_store`, then filled with bulk
inserts (one transaction, `executemany`) into `accounts`, `secrets` and `notices` with the
columns `storage.queries.insert_account` / `insert_secret` / `claim_notice` write.

It reads one JSON job on stdin (``path``, ``accounts``, ``due``, ``announced``,
``channels``, ``reps``, ``scan_timeout``, ``slack_latency``, ``seed``) and prints one JSON
result on stdout. Running it as a child keeps `--source` meaningful: the product code
comes from the child's PYTHONPATH.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet

from bot.core.config import load_config
from bot.core.crypto import Cipher
from bot.flows import expiry
from bot.flows.expiry import crossed
from bot.slack.client import make_web_client
from storage.db import open_store
from tests.fakes.slack import BOT_TOKEN, SlackDouble

TENANT = "7f3c1a52-0d1e-4b8e-9b1a-5e2c3d4f6a7b"
SUBSCRIPTION = "3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
CREATED_AT = "2025-03-01T12:00:00+00:00"
#: Far expiries: beyond the warning horizon, up to two years (Graph's longest secret).
FAR_MAX_DAYS = 730


@dataclass
class BuiltDb:
    path: Path
    accounts: int
    due: int  # crossed a threshold and never announced: what `decide` must return
    announced: int  # inside the horizon, already announced at that threshold: not due
    far: int  # beyond the horizon: not due
    channels: list[str]
    due_per_channel: dict[str, int]
    #: due warnings per channel and threshold: the scan posts one digest (or a few single
    #: warnings) per channel and threshold
    due_per_threshold: dict[str, dict[int, int]]
    seconds: float
    size_bytes: int


def channel_ids(count: int) -> list[str]:
    return [f"C0ALERT{n:02d}" for n in range(1, count + 1)]


def build(
    path: Path,
    *,
    now: datetime,
    warn_days: tuple[int, ...],
    accounts: int,
    due: int,
    announced: int,
    channels: int,
    seed: int,
) -> BuiltDb:
    """A fresh database of `accounts` active accounts with one active secret each.

    `due` secrets have crossed a threshold (from 3 days expired to just inside the
    furthest threshold) and have no notice; `announced` more are inside the horizon with a
    notice already at the threshold they have crossed (not due); the rest expire beyond the
    horizon (not due). Due accounts are dealt round-robin over `channels` alert channels;
    the others over the same channels.
    """
    if due + announced > accounts:
        raise ValueError("--expiry-due + --expiry-announced exceed --expiry-accounts")
    started = time.perf_counter()
    rng = random.Random(seed)
    chans = channel_ids(channels)
    horizon_s = max(warn_days) * 86400
    kinds = ["due"] * due + ["announced"] * announced + ["far"] * (accounts - due - announced)
    rng.shuffle(kinds)
    cipher = Cipher(Fernet.generate_key().decode())
    account_rows: list[tuple[object, ...]] = []
    secret_rows: list[tuple[object, ...]] = []
    notice_rows: list[tuple[object, ...]] = []
    due_per_channel: dict[str, int] = defaultdict(int)
    due_per_threshold: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    dealt = {"due": 0, "announced": 0, "far": 0}
    for i, kind in enumerate(kinds, start=1):
        channel = chans[dealt[kind] % len(chans)]
        dealt[kind] += 1
        if kind == "due":
            left = rng.uniform(-3 * 86400, horizon_s - 60)
            due_per_channel[channel] += 1
            crossed_at = crossed(now + timedelta(seconds=round(left)), now, warn_days)
            due_per_threshold[channel][crossed_at if crossed_at is not None else -1] += 1
        elif kind == "announced":
            left = rng.uniform(60, horizon_s - 60)
        else:
            left = rng.uniform(horizon_s + 3600, FAR_MAX_DAYS * 86400)
        end = now + timedelta(seconds=round(left))
        name = f"sa-{i:06d}"
        account_rows.append(
            (
                i,
                name,
                TENANT,
                "Contoso",
                f"obj-{name}",
                f"app-{name}",
                f"sp-{name}",
                json.dumps([SUBSCRIPTION]),
                json.dumps({SUBSCRIPTION: ["Contributor"]}),
                "U0ADMIN",
                CREATED_AT,
                channel,
                channel,
                "active",
            )
        )
        secret_rows.append(
            (
                i,
                i,
                f"key-{name}",
                name[-3:],
                end.astimezone(UTC).isoformat(timespec="seconds"),
                CREATED_AT,
                cipher.encrypt(f"secret-of-{name}"),
                "active",
            )
        )
        if kind == "announced":
            threshold = crossed(end, now, warn_days)
            assert threshold is not None
            notice_rows.append(
                (i, threshold, (now - timedelta(hours=12)).isoformat(), channel, f"{i}.000100", 1)
            )
    store = open_store(path)
    try:
        conn = store.db.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO accounts (id, name, tenant_id, tenant_name, app_object_id, app_id, "
            "sp_id, subscriptions, roles, created_by, created_at, channel_id, "
            "alert_channel_id, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            account_rows,
        )
        conn.executemany(
            "INSERT INTO secrets (id, account_id, key_id, hint, end_at, created_at, ciphertext, "
            "state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            secret_rows,
        )
        conn.executemany(
            "INSERT INTO notices (secret_id, threshold, posted_at, channel_id, ts, digest) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            notice_rows,
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
    return BuiltDb(
        path=path,
        accounts=accounts,
        due=due,
        announced=announced,
        far=accounts - due - announced,
        channels=chans,
        due_per_channel=dict(due_per_channel),
        due_per_threshold={c: dict(t) for c, t in due_per_threshold.items()},
        seconds=time.perf_counter() - started,
        size_bytes=path.stat().st_size,
    )


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def floor_query(path: Path, horizon: str) -> Callable[[], int]:
    """The least a scan must read: the ids and expiries of the active secrets inside the
    horizon, through the product's own (state, end_at) index, on a plain connection."""
    conn = sqlite3.connect(str(path))

    def run() -> int:
        rows = conn.execute(
            "SELECT id, end_at FROM secrets WHERE state = 'active' AND end_at <= ?", [horizon]
        ).fetchall()
        return len(rows)

    return run


@dataclass
class Pace:
    posts: int = 0
    per_channel: dict[str, int] = field(default_factory=dict)
    min_gap: float = math.inf  # smallest gap between two posts to one channel (s)
    max_in_window: int = 0  # most posts to one channel inside any 1-second window

    @property
    def rate(self) -> float:
        """Posts per second per channel at the fastest: 1 / smallest gap (1 when one post)."""
        if self.min_gap == math.inf:
            return 1.0 if self.posts else 0.0
        return 1.0 / self.min_gap if self.min_gap > 0 else math.inf


def pace(times_by_channel: Mapping[str, Sequence[float]]) -> Pace:
    """From the arrival times of the posts at the Slack double, per channel."""
    out = Pace()
    for channel, times in times_by_channel.items():
        ordered = sorted(times)
        out.posts += len(ordered)
        out.per_channel[channel] = len(ordered)
        for a, b in zip(ordered, ordered[1:], strict=False):
            out.min_gap = min(out.min_gap, b - a)
        for i, start in enumerate(ordered):
            inside = sum(1 for t in ordered[i:] if t < start + 1.0)
            out.max_in_window = max(out.max_in_window, inside)
    return out


def median_max(values: Sequence[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] expiry: {message}", file=sys.stderr, flush=True)


def run(job: dict) -> dict:
    path = Path(job["path"])
    now = datetime.now(UTC).replace(microsecond=0)
    reps = int(job["reps"])
    with SlackDouble(latency=float(job["slack_latency"])) as slack:
        config = load_config(
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": "x",
                "VEEAM_SA_ADMINS": "U0ADMIN",
                "SLACK_API_URL": slack.api_url,
                "VEEAM_SA_DB": str(path),
            },
            dotenv=None,
        )
        log(f"building {job['accounts']} accounts in {path}")
        built = build(
            path,
            now=now,
            warn_days=config.warn_days,
            accounts=int(job["accounts"]),
            due=int(job["due"]),
            announced=int(job["announced"]),
            channels=int(job["channels"]),
            seed=int(job["seed"]),
        )
        log(f"built in {built.seconds:.1f} s ({built.size_bytes / 2**20:.1f} MiB)")
        horizon = (
            (now + timedelta(days=max(config.warn_days)))
            .astimezone(UTC)
            .isoformat(timespec="seconds")
        )
        floor = floor_query(path, horizon)
        floor_rows = floor()
        store = open_store(path)
        try:
            decided: list[int] = []

            def decide() -> None:
                decided.append(len(expiry.decide(store, config, now)))

            # Interleaved, so that anything else on the machine hits both alike.
            decide_times: list[float] = []
            floor_times: list[float] = []
            for _ in range(reps):
                decide_times += timed(decide, 1)
                floor_times += timed(floor, 1)
            log(f"decide: {decided[-1]} due; scanning with real pacing")
            client = make_web_client(config)
            outcome: dict[str, object] = {}

            def scan() -> None:
                started = time.perf_counter()
                try:
                    outcome["result"] = expiry.scan(store, client, config, now)
                except Exception as exc:  # reported in the row
                    outcome["error"] = f"{type(exc).__name__}: {exc}"
                outcome["wall"] = time.perf_counter() - started

            worker = threading.Thread(target=scan, name="expiry-scan", daemon=True)
            worker.start()
            worker.join(float(job["scan_timeout"]))
            times: dict[str, list[float]] = defaultdict(list)
            for call in slack.calls_to("chat.postMessage"):
                channel = str(call.args.get("channel"))
                if channel.startswith("D"):  # the requesters' DMs are not channel posts
                    continue
                times[channel].append(call.at)
            result = outcome.get("result")
            scanned = {
                "finished": not worker.is_alive(),
                "error": outcome.get("error"),
                "wall": outcome.get("wall"),
                "due": len(result.due) if isinstance(result, expiry.ScanResult) else None,
                "posted": result.posted if isinstance(result, expiry.ScanResult) else None,
                "digests": result.digests if isinstance(result, expiry.ScanResult) else None,
                "failed": result.failed if isinstance(result, expiry.ScanResult) else None,
                "decided_in": (
                    result.decided_in if isinstance(result, expiry.ScanResult) else None
                ),
                "pace": {**asdict(paced := pace(times)), "rate": paced.rate},
                "digest_size": expiry.DIGEST_SIZE,
                "digest_after": expiry.DIGEST_AFTER,
                "gap": expiry.CHANNEL_GAP_S,
            }
        finally:
            store.close()
    info = asdict(built)
    info["path"] = str(built.path)
    return {
        "built": info,
        "horizon_days": max(config.warn_days),
        "decide": {"times": decide_times, "due": decided[-1] if decided else None},
        "floor": {"times": floor_times, "rows": floor_rows},
        "scan": scanned,
    }


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))
