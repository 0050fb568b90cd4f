"""Client-secret expiry: which warnings are due, and posting them.

`scan()` is the scheduled job: a plain function of the database, the Slack client, the
configuration and a clock. For every live secret it finds the most urgent threshold the
secret has crossed (30, 14, 7, 1 days, or 0 = expired) and posts a warning only when that
threshold is more urgent than any already announced for the secret. The notice row is
written before the post (and removed if Slack refuses it), so a warning is announced at
most once — across repeated scans, restarts and a second process — and a secret that
crossed several thresholds while the bot was down gets one message, for the most urgent.

Per channel and threshold, up to `DIGEST_AFTER` warnings are posted one by one; more become
a digest (one message listing many accounts, each with its Renew button) — at every
threshold, so 50 accounts make one message at 7 days and one more at 1 day, not 50 thread
replies. Posts to one channel are paced to Slack's one message per second.

Warnings get louder as they get more urgent. From `LOUD_DAYS` (7) on — the 7-day, 1-day and
expired warnings — a warning mentions the account's requester and the admins' user groups
(the `S…` ids of `VEEAM_SA_ADMINS`), a follow-up in an earlier warning's thread is also
broadcast to the channel (`reply_broadcast`), and the requester gets a DM the first time.

An admin can snooze a warning (`snooze`): the secret's next warnings are held until the
snooze ends, then sent (as one, for the most urgent threshold crossed). When an account is
renewed, every warning message that offered its Renew button is edited (`mark_renewed`):
a digest shows "renewed by @x" in place of the button.

Only current secrets are warned about. An old secret kept live after a renewal without an
appliance (`retiring`, until someone confirms Veeam has the new one) is not: its account's
new secret is what the scan follows. If the old one is still there when it comes within the
smallest threshold of its own end, the renewal's thread is told so once (`remind_retiring`).
"""

from __future__ import annotations

import logging
import re
import threading
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
from bot.core.errors import CommandError
from bot.flows.context import Context
from bot.slack import blocks
from bot.slack.notify import Notifier
from storage import queries
from storage.db import Store

log = logging.getLogger(__name__)

DIGEST_AFTER = 5
DIGEST_SIZE = 250  # at most this many accounts per digest; fewer when long lines need more blocks
CHANNEL_GAP_S = 1.0
#: Warnings at this many days or fewer (and "expired") are loud: mentions, broadcast, DM.
LOUD_DAYS = 7
SNOOZE_DAY = "1d"
SNOOZE_NEXT = "next"
_USER_ID = re.compile(r"\A[UW][A-Z0-9]{2,20}\Z")


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
    #: the most urgent threshold announced before this one (None: never warned)
    previous: int | None = None
    #: who renewed the account since the warning (a digest drawn again shows it)
    renewed_by: str | None = None


@dataclass
class ScanResult:
    due: list[Due] = field(default_factory=list)
    posted: int = 0
    digests: int = 0
    failed: int = 0
    decided_in: float = 0.0
    held: int = 0  # due, but snoozed by an admin
    dms: int = 0
    announced: list[Due] = field(default_factory=list)


def loud(threshold: int) -> bool:
    return threshold <= LOUD_DAYS


def admin_calls(config: Config) -> list[str]:
    """The admins' user groups a loud warning mentions."""
    return sorted(config.admin_groups)


def requester(item: Due) -> str | None:
    who = str(item.account.get("created_by") or "")
    return who if _USER_ID.match(who) else None


def calls_for(item: Due, config: Config) -> str:
    """Mentions for a single warning: the requester and the admins' groups when loud."""
    if not loud(item.threshold):
        return ""
    who = requester(item)
    return blocks.mentions([who] if who else [], admin_calls(config))


def crossed(end_at: datetime, now: datetime, warn_days: tuple[int, ...]) -> int | None:
    """The most urgent threshold crossed: 0 when expired, else the smallest `d` with
    `end_at - now <= d days`; None when no threshold is crossed yet."""
    left = end_at - now
    if left <= timedelta(0):
        return 0
    hits = [d for d in warn_days if left <= timedelta(days=d)]
    return min(hits) if hits else None


def decide(store: Store, config: Config, now: datetime, held: list[Due] | None = None) -> list[Due]:
    """Every warning that is due now (pure reading; posts nothing). Warnings of snoozed
    secrets are left out (and listed in `held` when given)."""
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
        snoozed_until = row.pop("snoozed_until")
        item = Due(
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
            previous=announced,
        )
        if snoozed_until and parse_time(snoozed_until) > now:
            if held is not None:
                held.append(item)
            continue
        due.append(item)
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
    held: list[Due] = []
    due = decide(store, config, now, held)
    result = ScanResult(due=due, decided_in=monotonic() - started, held=len(held))
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
    by_channel: dict[str, dict[int, list[Due]]] = defaultdict(lambda: defaultdict(list))
    for item in due:
        by_channel[item.channel][item.threshold].append(item)
    queues: dict[str, list[Callable[[], None]]] = {}
    for channel, by_threshold in by_channel.items():
        posts: list[Callable[[], None]] = []
        for threshold in sorted(by_threshold):  # the most urgent first
            items = by_threshold[threshold]
            if len(items) > DIGEST_AFTER:  # one digest per threshold, however many are due
                for page in blocks.digest_pages(items, DIGEST_SIZE):
                    posts.append(
                        partial(
                            _post_digest, store, notifier, config, channel, page, now, pacer, result
                        )
                    )
                continue
            for item in items:
                post = _post_single if item.first_notice is None else _post_follow_up
                posts.append(partial(post, store, notifier, config, item, now, pacer, result))
        queues[channel] = posts
    pacer.side_by_side(queues)
    _dm_requesters(notifier, result)
    queries.set_meta(db, "last_scan_at", queries.utcnow_iso(now))
    return result


def _dm_requesters(notifier: Notifier, result: ScanResult) -> None:
    """One DM per requester for the warnings that just became loud."""
    turned_loud: dict[str, list[Due]] = defaultdict(list)
    for item in result.announced:
        who = requester(item)
        if who and loud(item.threshold) and (item.previous is None or not loud(item.previous)):
            turned_loud[who].append(item)
    for who, items in turned_loud.items():
        if notifier.dm(who, blocks.requester_dm(sorted(items, key=lambda i: i.end_at))):
            result.dms += 1


def snooze_options(
    end_at: datetime, threshold: int | None, warn_days: tuple[int, ...]
) -> list[tuple[str, str]]:
    """The Snooze choices for a warning at `threshold`: a day, and — when a warning after
    the next one exists — until that one (the next warning is held until then)."""
    if threshold is None or threshold == 0:
        return []  # expired: no further warning to hold
    options = [(SNOOZE_DAY, "Snooze 1 day")]
    target = _after_next(threshold, warn_days)
    if target is not None:
        options.append((SNOOZE_NEXT, f"Snooze until {_threshold_label(target)}"))
    return options


def _after_next(threshold: int, warn_days: tuple[int, ...]) -> int | None:
    """The threshold after the next more urgent one (0 = expiry), if any."""
    later = sorted({d for d in warn_days if d < threshold} | {0}, reverse=True)
    return later[1] if len(later) > 1 else None


def _threshold_label(days: int) -> str:
    return "it expires" if days == 0 else f"{days} day{'s' if days != 1 else ''} left"


def snooze_until(
    option: str, end_at: datetime, threshold: int | None, now: datetime, warn_days: tuple[int, ...]
) -> datetime | None:
    if threshold == 0 or threshold is None:
        return None
    if option == SNOOZE_DAY:
        return now + timedelta(days=1)
    target = _after_next(threshold, warn_days)
    if option != SNOOZE_NEXT or target is None:
        return None
    until = end_at - timedelta(days=target)
    return until if until > now else None


_SNOOZE_VALUE = re.compile(r"\A([0-9]{1,18}):(1d|next)\Z")


def snooze(
    ctx: Context, user: str, value: str, channel: str | None, message_ts: str | None
) -> None:
    """An admin's Snooze on a warning: hold the secret's next warnings until the snooze ends
    (then the most urgent one due is sent), audit it and say so in the warning's thread.
    Raises `NotAuthorised` / `CommandError` with what to tell the clicker."""
    match = _SNOOZE_VALUE.fullmatch(value)
    ctx.authz.require_admin(user, "snooze", value[:40] or None)
    if match is None:
        raise CommandError("That warning is not one this bot can snooze; nothing was changed.")
    secret_id, option = int(match.group(1)), match.group(2)
    db = ctx.store.db
    row = queries.warned_secret(db, secret_id)
    if row is None or row["account_state"] != "active":
        raise CommandError("That account is not managed by this bot (any more).")
    if row["state"] != "active":
        raise CommandError(
            f"`{row['name']}` was renewed since this warning; there is nothing to snooze."
        )
    now = ctx.clock()
    end_at = parse_time(row["end_at"])
    until = snooze_until(option, end_at, row["announced"], now, ctx.config.warn_days)
    if until is None:
        raise CommandError(
            f"There is no later warning for `{row['name']}` to hold; nothing was changed."
        )
    until_iso = until.astimezone(UTC).isoformat(timespec="seconds")
    with db.atomic():
        queries.snooze_secret(db, secret_id, until_iso, user)
        queries.add_audit(
            db,
            actor=user,
            action="expiry.snoozed",
            target=row["name"],
            outcome="ok",
            detail={"secret_id": secret_id, "option": option, "until": until_iso},
        )
    if channel:
        when = blocks.slack_date(until.timestamp(), until_iso[:16].replace("T", " ") + " UTC")
        ctx.notifier.thread(
            channel,
            message_ts,
            blocks.note(
                f":zzz: <@{user}> snoozed the warnings for `{row['name']}` until {when}: the "
                "next one is held until then, then sent."
            ),
        )


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
    store: Store,
    notifier: Notifier,
    config: Config,
    item: Due,
    now: datetime,
    pacer: Pacer,
    result: ScanResult,
) -> None:
    if not _claim(store, [item], item.channel, now):
        return
    pacer.wait(item.channel)
    payload = blocks.expiry_warning(
        item,
        now,
        calls=calls_for(item, config),
        snooze=snooze_options(item.end_at, item.threshold, config.warn_days),
    )
    try:
        ts = notifier.post(item.channel, payload)
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
    result.announced.append(item)


def _post_follow_up(
    store: Store,
    notifier: Notifier,
    config: Config,
    item: Due,
    now: datetime,
    pacer: Pacer,
    result: ScanResult,
) -> None:
    first = item.first_notice or {}
    if not _claim(store, [item], first.get("channel_id") or item.channel, now):
        return
    channel = first.get("channel_id") or item.channel
    pacer.wait(channel)
    try:
        ts = notifier.post(
            channel,
            blocks.expiry_warning(item, now, follow_up=True, calls=calls_for(item, config)),
            thread_ts=first.get("ts"),
            broadcast=loud(item.threshold),  # the louder warnings are shown in the channel too
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
    result.announced.append(item)
    if first.get("ts") and not first.get("digest"):
        notifier.update(
            channel,
            first["ts"],
            blocks.expiry_warning(
                item, now, snooze=snooze_options(item.end_at, item.threshold, config.warn_days)
            ),
        )


def _post_digest(
    store: Store,
    notifier: Notifier,
    config: Config,
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
        ts = notifier.post(
            channel, blocks.expiry_digest(items, now, calls=_digest_calls(items, config))
        )
        pacer.posted(channel)
    except SlackApiError as exc:
        log.warning("could not post an expiry digest to %s: %s", channel, exc.response.get("error"))
        _release(store, items)
        result.failed += len(items)
        return
    with store.db.atomic():
        for item in items:
            queries.set_notice_ts(store.db, item.secret_id, item.threshold, ts, digest=True)
    result.posted += 1
    result.digests += 1
    result.announced.extend(items)


def _digest_calls(items: list[Due], config: Config) -> str:
    """A loud digest mentions the admins' groups (each line already names its requester)."""
    return blocks.mentions([], admin_calls(config)) if any(loud(i.threshold) for i in items) else ""


#: Edits of warning messages after renewals are drawn and queued one at a time, so the
#: newest state of a digest is the one Slack keeps.
_EDITS = threading.Lock()


def mark_renewed(
    ctx: Context,
    secret_ids: list[int],
    by: str,
    single: dict[str, Any] | None = None,
    skip: tuple[str, str | None] | None = None,
) -> int:
    """The secrets `secret_ids` were replaced by `by`'s renewal: edit every warning message
    that offered their Renew button — a digest is drawn again with "renewed by" in place of
    the button; a single warning becomes `single` (unless it is `skip`, the renewal's own
    message, which the renewal edits itself). Returns the messages edited."""
    db = ctx.store.db
    edited = 0
    with _EDITS:
        queries.mark_notices_renewed(db, secret_ids, by)
        for message in queries.warning_messages(db, secret_ids):
            channel, ts = message["channel_id"], message["ts"]
            if not channel or not ts:
                continue
            if message["digest"]:
                items = _digest_items(db, channel, ts)
                if not items:
                    continue
                payload = blocks.expiry_digest(items, None, calls=_digest_calls(items, ctx.config))
            elif single is None or (skip is not None and (channel, ts) == skip):
                continue
            else:
                payload = single
            ctx.notifier.update_latest(channel, ts, payload, wait=True)
            edited += 1
    return edited


def _digest_items(db: Any, channel: str, ts: str) -> list[Due]:
    """A posted digest's items, as they were when it was posted (plus who renewed since)."""
    items = []
    for row in queries.digest_rows(db, channel, ts):
        end_at = parse_time(row.pop("end_at"))
        posted_at = parse_time(row.pop("posted_at"))
        items.append(
            Due(
                secret_id=row.pop("secret_id"),
                threshold=row.pop("threshold"),
                days_left=days_left(end_at, posted_at),
                end_at=end_at,
                hint=row.pop("hint") or "",
                renewed_by=row.pop("renewed_by"),
                account=row,
                channel=channel,
            )
        )
    return items


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
