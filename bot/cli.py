"""Entry point: `veeam-sa-bot [run]` (also `python -m bot`).

Start-up problems — a missing variable, an unreadable database, a token Slack rejects —
end with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from slack_sdk.errors import SlackApiError

from bot.core.errors import ConfigError, StorageError, VeeamSAError
from bot.core.logs import configure_logging

log = logging.getLogger("veeam_sa")

EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _fail(message: str, code: int) -> int:
    print(f"veeam-sa-bot: {message}", file=sys.stderr)
    return code


def run(stop: threading.Event | None = None) -> int:
    """Run the bot until SIGTERM/SIGINT (or until `stop` is set), then stop gracefully:
    running steps finish, flows stay resumable, and the process exits 0 within about
    `STOP_TIMEOUT_S` seconds (logging what was still running if it had to give up).
    A second signal exits at once."""
    from bot.core.config import load_config
    from bot.runtime import Runtime

    try:
        config = load_config()
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    configure_logging(config)

    stop = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("received %s again: exiting without waiting", name)
            _exit_now(EXIT_RUNTIME)
        log.info("received %s, shutting down", name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        runtime = Runtime.start(config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except StorageError as exc:
        return _fail(str(exc), EXIT_RUNTIME)
    except SlackApiError as exc:
        return _fail(
            f"Slack rejected SLACK_BOT_TOKEN ({exc.response.get('error')}): "
            "check the token on your Slack app's OAuth & Permissions page",
            EXIT_RUNTIME,
        )
    except VeeamSAError as exc:
        return _fail(str(exc), EXIT_RUNTIME)
    from bot.runtime import STOP_TIMEOUT_S

    try:
        stop.wait()
    finally:
        # Insurance: whatever hangs, the process is gone a little after the bound.
        watchdog = threading.Timer(STOP_TIMEOUT_S + 10, _exit_now, args=(0, "stop hung"))
        watchdog.daemon = True
        watchdog.start()
        left = runtime.stop(STOP_TIMEOUT_S)
        watchdog.cancel()
    if left:
        log.warning(
            "stopped after %.0fs without waiting for: %s (they resume on the next start)",
            STOP_TIMEOUT_S,
            "; ".join(left),
        )
        # Their threads would hold the interpreter open at exit: leave without them.
        _exit_now(0)
    log.info("stopped")
    return 0


def _exit_now(code: int, reason: str | None = None) -> None:
    if reason:
        log.error("exiting: %s", reason)
    logging.shutdown()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="veeam-sa-bot",
        description="Slack bot that creates and renews Veeam Backup for Microsoft Azure "
        "service accounts. Configuration comes from the environment and ./.env.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bot (the default)")
    sub.add_parser(
        "init",
        help="create an empty database beside an existing key file, after the database was "
        "lost and cannot be restored (audited); the bot itself never does that",
    )
    sub.add_parser(
        "doctor",
        help="check the configuration and reach Slack, Microsoft and the appliance "
        "(exit 0: all passed, 1: a check failed, 2: the configuration does not load)",
    )
    scan = sub.add_parser("scan", help="run the expiry scan once and print what it posted")
    scan.add_argument(
        "--dry-run", action="store_true", help="print what would be posted; post nothing"
    )
    check = sub.add_parser(
        "check",
        help="run the health check now: does each account's secret still yield a token, are "
        "its roles and application there, does Veeam call it valid (exit 1 on drift)",
    )
    check.add_argument("name", nargs="?", help="only this account")
    audit = sub.add_parser("audit", help="print the audit trail")
    audit.add_argument("--account", help="only rows about this account")
    audit.add_argument(
        "--since", help="only rows at or after this ISO date/time (UTC unless given)"
    )
    audit.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    sub.add_parser("rotate-key", help="re-encrypt stored secrets and device codes under a new key")
    secret = sub.add_parser("secret", help="host-only access to stored secrets")
    secret_sub = secret.add_subparsers(dest="secret_command", required=True)
    show = secret_sub.add_parser(
        "show",
        help="print an account's current client secret, or write its certificate (audited)",
    )
    show.add_argument("name")
    show.add_argument(
        "--out",
        metavar="PATH",
        help="certificate accounts: write the PKCS#12 (.pfx) here (mode 0600) and print its password",
    )
    show.add_argument("--yes", action="store_true", help="skip the confirmation prompt")
    args = parser.parse_args(argv)
    if args.command in (None, "run"):
        return run()
    if args.command == "doctor":
        from bot.ops import doctor

        return doctor.main()
    from bot.ops import tasks as ops

    if args.command == "init":
        return ops.init_database()
    if args.command == "scan":
        return ops.scan(args.dry_run)
    if args.command == "check":
        return ops.check(args.name)
    if args.command == "audit":
        return ops.audit(args.account, args.since, args.json)
    if args.command == "rotate-key":
        return ops.rotate_key()
    if args.command == "secret":
        return ops.secret_show(args.name, args.yes, out=args.out)
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
