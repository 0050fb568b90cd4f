"""The scheduler: APScheduler 3.11 wiring for the expiry scan, the flow watchdog and the
health check. Jobs themselves are plain functions (`bot.flows.expiry.scan`,
`Endings.watchdog`, `HealthCheck.run`); this module only decides when they run.

One scheduler per database: two bot processes on one database would both post (the
notice rows keep each warning to one post, but run one replica anyway).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from bot.flows import appliance, expiry, health
from bot.flows.root import Services

log = logging.getLogger(__name__)

JOB_ID = "expiry-scan"
WATCHDOG_JOB_ID = "flow-watchdog"
WATCHDOG_MINUTES = 5
HEALTH_JOB_ID = "health-check"
#: The first health check starts this long after start-up (the expiry scan goes first).
HEALTH_FIRST_DELAY = timedelta(minutes=5)


class Scheduler(BackgroundScheduler):
    """APScheduler's background scheduler, with an event that tells a long job (the health
    check spreads over hours) to stop when the scheduler shuts down."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.stopping = threading.Event()

    def shutdown(self, wait: bool = True) -> None:
        self.stopping.set()
        super().shutdown(wait=wait)


def run_health(services: Services, stop: threading.Event | None = None) -> health.RunResult:
    """Check every account once, spread over the configured interval."""
    result = services.health.run(interval_s=services.config.health_hours * 3600, stop=stop)
    services.store.checkpoint()
    log.info(
        "health check: %d checked (%s), %d alert(s), %d cleared, %d request(s) in %.0fs",
        result.checked,
        ", ".join(f"{n} {s}" for s, n in result.states.items()),
        result.alerted,
        result.cleared,
        result.requests,
        result.took_s,
    )
    return result


def run_watchdog(services: Services) -> list[str]:
    """Resume or end flows that stopped moving with nothing running for them."""
    acted = services.endings.watchdog(services.clock())
    for line in acted:
        log.warning("watchdog: %s", line)
    return acted


def run_scan(services: Services) -> expiry.ScanResult:
    if services.appliance is not None:
        try:
            appliance.refresh(services.context, services.clock())
        except Exception:  # noqa: BLE001 - the appliance being down must not stop the warnings
            log.warning("could not read the appliance's accounts", exc_info=True)
        try:
            for line in appliance.follow_groups(services.context, services.clock()):
                log.info("management group followed: %s", line)
        except Exception:  # noqa: BLE001 - as above: the warnings go out regardless
            log.warning("could not follow the management groups' subscriptions", exc_info=True)
    result = expiry.scan(services.store, services.notifier, services.config, services.clock())
    services.store.checkpoint()
    log.info(
        "expiry scan: %d due, %d posted (%d digests), %d failed, decided in %.3fs",
        len(result.due),
        result.posted,
        result.digests,
        result.failed,
        result.decided_in,
    )
    return result


def start_scheduler(services: Services) -> BackgroundScheduler:
    scheduler = Scheduler(timezone=UTC)
    scheduler.add_job(
        run_scan,
        "interval",
        args=[services],
        minutes=services.config.scan_minutes,
        id=JOB_ID,
        replace_existing=True,
        next_run_time=datetime.now(UTC),  # once at start-up, then on the interval
        misfire_grace_time=15 * 60,
        coalesce=True,
        max_instances=1,
    )
    scheduler.add_job(
        run_watchdog,
        "interval",
        args=[services],
        minutes=WATCHDOG_MINUTES,
        id=WATCHDOG_JOB_ID,
        replace_existing=True,
        misfire_grace_time=WATCHDOG_MINUTES * 60,
        coalesce=True,
        max_instances=1,
    )
    hours = services.config.health_hours
    scheduler.add_job(
        run_health,
        "interval",
        args=[services, scheduler.stopping],
        hours=hours,
        id=HEALTH_JOB_ID,
        replace_existing=True,
        next_run_time=datetime.now(UTC) + HEALTH_FIRST_DELAY,
        misfire_grace_time=hours * 3600,
        coalesce=True,
        max_instances=1,
    )
    scheduler.start()
    return scheduler
