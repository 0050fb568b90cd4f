"""Client-secret expiry: which warnings are due, and posting them.

`scan()` is the scheduled job: a plain function of the database, the Slack client, the
configuration and a clock. For every live secret it finds the most urgent threshold the
secret has crossed (30, 14, 7, 1 days, or 0 = expired) and posts a warning only when that
threshold is more urgent than any already announced for the secret. The notice row is
written before the post (and removed if Slack refuses it), so a warning is announced at
most once — across repeated scans, restarts and a second process — and a secret that
crossed several thresholds while the bot was down gets one message, for the most urgent.

Per channel, up to `DIGEST_AFTER` warnings are posted one by one; more become digests
(one message listing many accounts, each with its Renew button). Posts to one channel are
paced to Slack's one message per second.

Only current secrets are warned about. An old secret kept live after a renewal without an
appliance (`retiring`, until someone confirms Veeam has the new one) is not: its account's
new secret is what the scan follows. If the old one is still there when it comes within the
smallest threshold of its own end, the renewal's thread is told so once (`remind_retiring`).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.core.clock import days_left, parse_time
from bot.core.config import Config
from bot.slack import blocks
from bot.slack.notify import Notifier
from storage import queries
from storage.db import Store

log = logging.getLogger(__name__)

DIGEST_AFTER = 5
DIGEST_SIZE = 250  # at most this many accounts per digest; fewer when long lines need more blocks
CHANNEL_GAP_S = 1.0


@dataclass
class Due:
    """A warning to post: one secret, the threshold it crossed, and what to say."""

    secret_id: int
    threshold: int
    days_left: int
    end_at: datetime
    account: dict[str, Any]
    hint: str
    channel: str
    first_notice: dict[str, Any] | None = None


@dataclass
class ScanResult:
    due: list[Due] = field(default_factory=list)
    posted: int = 0
    digests: int = 0
    failed: int = 0
    decided_in: float = 0.0


def crossed(end_at: datetime, now: datetime, warn_days: tuple[int, ...]) -> int | None:
    """The most urgent threshold crossed: 0 when expired, else the smallest `d` with
    `end_at - now <= d days`; None when no threshold is crossed yet."""
    left = end_at - now
    if left <= timedelta(0):
        return 0
    hits = [d for d in warn_days if left <= timedelta(days=d)]
    return min(hits) if hits else None


def decide(store: Store, config: Config, now: datetime) -> list[Due]:
    """Every warning that is due now (pure reading; posts nothing)."""
    db = store.db
    horizon = (
        (now + timedelta(days=max(config.warn_days))).astimezone(UTC).isoformat(timespec="seconds")
    )
    due: list[Due] = []
    for row in queries.secrets_due_by(db, horizon):
        end_at = parse_time(row["end_at"])
        threshold = crossed(end_at, now, config.warn_days)
        if threshold is None:
            continue
        announced = row.pop("announced")
        if announced is not None and threshold >= announced:
            continue
        secret_id = row.pop("secret_id")
        hint = row.pop("hint") or ""
        row.pop("end_at")
        due.append(
            Due(
                secret_id=secret_id,
                threshold=threshold,
                days_left=days_left(end_at, now),
                end_at=end_at,
                account=row,
                hint=hint,
                channel=config.alert_channel
                or row.get("alert_channel_id")
                or row.get("channel_id")
                or "",
            )
        )
    return due


def as_notifier(slack: WebClient | Notifier) -> Notifier:
    """Every post goes through a `Notifier`; a bare client (a test, `veeam-sa-bot scan`) gets one."""
    return slack if isinstance(slack, Notifier) else Notifier(slack)


class Pacer:
    """At most one post per channel per `gap` seconds."""

    def __init__(
        self, gap: float, sleep: Callable[[float], None], clock: Callable[[], float]
    ) -> None:
        self._gap = gap
        self._sleep = sleep
        self._clock = clock
        self._last: dict[str, float] = {}

    def wait(self, channel: str) -> None:
        """Sleep until the channel may take the next post."""
        last = self._last.get(channel)
        if last is not None:
            pause = self._gap - (self._clock() - last)
            if pause > 0:
                self._sleep(pause)

    def posted(self, channel: str) -> None:
        """Slack has the post: the gap counts from now (building and sending took time)."""
        self._last[channel] = self._clock()

    def ready_at(self, channel: str) -> float:
        """When the channel may take its next post (on the pacer's clock)."""
        last = self._last.get(channel)
        return float("-inf") if last is None else last + self._gap

    def side_by_side(self, queues: dict[str, list[Callable[[], None]]]) -> None:
        """Run each channel's posts in order, channels interleaved: the next post always
        goes to the channel that may take one soonest, so N channels with k posts each take
        about k seconds, not N × k (Slack's limit is per channel)."""
        pending = {channel: deque(posts) for channel, posts in queues.items() if posts}
        while pending:
            channel = min(pending, key=self.ready_at)
            post = pending[channel].popleft()
            if not pending[channel]:
                del pending[channel]
            post()


def scan(
    store: Store,
    slack: WebClient | Notifier,
    config: Config,
    now: datetime,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    dry_run: bool = False,
) -> ScanResult:
    """The expiry job: decide what is due and post it (unless `dry_run`)."""
    notifier = as_notifier(slack)
    started = monotonic()
    due = decide(store, config, now)
    result = ScanResult(due=due, decided_in=monotonic() - started)
    if dry_run:
        return result
    result.posted += remind_retiring(store, notifier, config, now, sleep=sleep, monotonic=monotonic)
    if not due:
        queries.set_meta(store.db, "last_scan_at", queries.utcnow_iso(now))
        return result
    db = store.db
    for item in due:
        item.first_notice = queries.first_notice(db, item.secret_id)
    pacer = Pacer(CHANNEL_GAP_S, sleep, monotonic)
    by_channel: dict[str, list[Due]] = defaultdict(list)
    for item in due:
        by_channel[item.channel].append(item)
    queues: dict[str, list[Callable[[], None]]] = {}
    for channel, items in by_channel.items():
        fresh = [i for i in items if i.first_notice is None]
        follow_ups = [i for i in items if i.first_notice is not None]
        posts: list[Callable[[], None]] = []
        if len(fresh) > DIGEST_AFTER:
            for page in blocks.digest_pages(fresh, DIGEST_SIZE):
                posts.append(partial(_post_digest, store, notifier, channel, page, now, pacer, result))
        else:
            for item in fresh:
                posts.append(partial(_post_single, store, notifier, item, now, pacer, result))
        for item in follow_ups:
            posts.append(partial(_post_follow_up, store, notifier, item, now, pacer, result))
        queues[channel] = posts
    pacer.side_by_side(queues)
    queries.set_meta(db, "last_scan_at", queries.utcnow_iso(now))
    return result


def _claim(store: Store, items: list[Due], channel: str, now: datetime) -> list[int]:
    """Write the notice rows first; another scan that raced us finds them and stays quiet."""
    db = store.db
    claimed: list[int] = []
    with db.atomic():
        for item in items:
            if queries.claim_notice(db, item.secret_id, item.threshold, channel, now):
                claimed.append(item.secret_id)
    return claimed


def _release(store: Store, items: list[Due]) -> None:
    db = store.db
    with db.atomic():
        for item in items:
            queries.drop_notice(db, item.secret_id, item.threshold)


def _post_single(
    store: Store, notifier: Notifier, item: Due, now: datetime, pacer: Pacer, result: ScanResult
) -> None:
    if not _claim(store, [item], item.channel, now):
        return
    pacer.wait(item.channel)
    try:
        ts = notifier.post(item.channel, blocks.expiry_warning(item, now))
        pacer.posted(item.channel)
    except SlackApiError as exc:
        log.warning(
            "could not post the expiry warning for %s: %s",
            item.account["name"],
            exc.response.get("error"),
        )
        _release(store, [item])
        result.failed += 1
        return
    queries.set_notice_ts(store.db, item.secret_id, item.threshold, ts)
    result.posted += 1


def _post_follow_up(
    store: Store, notifier: Notifier, item: Due, now: datetime, pacer: Pacer, result: ScanResult
) -> None:
    first = item.first_notice or {}
    if not _claim(store, [item], first.get("channel_id") or item.channel, now):
        return
    channel = first.get("channel_id") or item.channel
    pacer.wait(channel)
    try:
        ts = notifier.post(
            channel, blocks.expiry_warning(item, now, follow_up=True), thread_ts=first.get("ts")
        )
        pacer.posted(channel)
    except SlackApiError as exc:
        log.warning(
            "could not post the expiry follow-up for %s: %s",
            item.account["name"],
            exc.response.get("error"),
        )
        _release(store, [item])
        result.failed += 1
        return
    queries.set_notice_ts(store.db, item.secret_id, item.threshold, ts)
    result.posted += 1
    if first.get("ts") and not first.get("digest"):
        notifier.update(channel, first["ts"], blocks.expiry_warning(item, now))


def _post_digest(
    store: Store,
    notifier: Notifier,
    channel: str,
    items: list[Due],
    now: datetime,
    pacer: Pacer,
    result: ScanResult,
) -> None:
    claimed = set(_claim(store, items, channel, now))
    items = [i for i in items if i.secret_id in claimed]
    if not items:
        return
    pacer.wait(channel)
    try:
        ts = notifier.post(channel, blocks.expiry_digest(items, now))
        pacer.posted(channel)
    except SlackApiError as exc:
        log.warning("could not post an expiry digest to %s: %s", channel, exc.response.get("error"))
        _release(store, items)
        result.failed += len(items)
        return
    with store.db.atomic():
        for item in items:
            queries.set_notice_ts(
                store.db, item.secret_id, item.threshold, ts, digest=True
            )
    result.posted += 1
    result.digests += 1


def remind_retiring(
    store: Store,
    slack: WebClient | Notifier,
    config: Config,
    now: datetime,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Say once, in the renewal's thread, that an old secret still kept live for Veeam is
    about to reach its own end (within the smallest warning threshold). Returns the posts."""
    notifier = as_notifier(slack)
    db = store.db
    horizon = (now + timedelta(days=min(config.warn_days))).astimezone(UTC)
    pacer = Pacer(CHANNEL_GAP_S, sleep, monotonic)
    posted = 0
    for row in queries.retiring_due(db, horizon.isoformat(timespec="seconds")):
        channel = (
            row.get("retire_channel_id")
            or config.alert_channel
            or row.get("alert_channel_id")
            or row.get("channel_id")
        )
        if not channel:
            continue
        if not queries.claim_notice(db, row["secret_id"], queries.RETIRING_REMINDER, channel, now):
            continue
        end = parse_time(row["end_at"])
        pacer.wait(channel)
        try:
            ts = notifier.post(
                channel,
                blocks.retiring_reminder(
                    name=row["name"],
                    hint=row.get("hint") or "",
                    end_ts=end.timestamp(),
                    end_date=end.date().isoformat(),
                    expired=end <= now,
                ),
                thread_ts=row.get("retire_thread_ts"),
            )
            pacer.posted(channel)
        except SlackApiError as exc:
            log.warning(
                "could not remind about the old secret of %s: %s",
                row["name"],
                exc.response.get("error"),
            )
            queries.drop_notice(db, row["secret_id"], queries.RETIRING_REMINDER)
            continue
        queries.set_notice_ts(db, row["secret_id"], queries.RETIRING_REMINDER, ts)
        posted += 1
    return posted
