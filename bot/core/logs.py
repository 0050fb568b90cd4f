"""Logging: readable text or JSON lines, and a redaction filter on every record.

The filter sits on the handler, so it sees records from every library (MSAL, httpx,
slack_sdk, Bolt) as well as the bot's own. It masks:

- values the bot knows are secret (tokens, signing secret, encryption key, passwords),
  registered with `register_secret`, and every client secret the bot handles;
- anything shaped like a bearer token, a Slack token, a JWT, an Entra client secret
  (`…Q~…`), a Fernet token, or a long opaque string such as a device code;
- the value of any `key=value` / `"key": "value"` pair whose key names a secret.

Exception text is scrubbed the same way before it is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

MASK = "[redacted]"

_PATTERNS = [
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]+"),  # Slack bot/user tokens
    re.compile(r"\bxapp-[A-Za-z0-9-]+"),  # Slack app-level tokens
    re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"),  # JWTs (access/id tokens)
    re.compile(r"\bgAAAAA[A-Za-z0-9_=-]{40,}"),  # Fernet tokens (encrypted values)
    re.compile(r"[A-Za-z0-9_.-]{3}\dQ~[A-Za-z0-9_.~-]{30,}"),  # Entra client secrets
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b[A-Za-z0-9_-]{48,}\b"),  # long opaque strings: device codes, refresh tokens
]
#: Any of `_PATTERNS`: one scan tells whether a line needs them at all (most lines don't).
_ANY_PATTERN = re.compile(
    "|".join(
        f"(?i:{p.pattern[4:]})" if p.pattern.startswith("(?i)") else f"(?:{p.pattern})"
        for p in _PATTERNS
    )
)
_KEYED = re.compile(
    r"""(?ix)
    (["']?(?:client_secret|secret(?:text)?|password|passwd|refresh_token|access_token|id_token
         |device_code|user_code|token|assertion|authorization|signing_secret|encryption_key)["']?
     \s*[:=]\s*["']?)
    ([^"'\s,&}]+)
    """
)
#: A word every key name `_KEYED` matches contains (lower case).
_KEYED_WORDS = ("secret", "passw", "token", "code", "assertion", "authorization", "encryption")

# Exact values to mask: credentials for the life of the process, and each flow's device and
# user codes (and client secrets) for the life of that flow (`forget` drops them).
#
# The cost of a line must not grow with the number of flows in progress. A value made of
# "code" characters only (letters and digits, or those plus `-` and `_`: user codes and
# device codes) is found by cutting the line into maximal runs of those characters — one
# regex scan per alphabet — and looking each run up in a set. The few other values
# (credentials from the configuration, client secrets during provisioning) are found by a
# substring test each.
_ALPHABETS = (re.compile(r"[A-Za-z0-9]+"), re.compile(r"[A-Za-z0-9_-]+"))
_known: dict[str, set[str | None]] = {}
_owned: dict[str, set[str]] = {}
_by_alphabet: tuple[set[str], ...] = tuple(set() for _ in _ALPHABETS)
_other_known: set[str] = set()
_known_lock = threading.Lock()


def _bucket(value: str) -> set[str]:
    for alphabet, bucket in zip(_ALPHABETS, _by_alphabet, strict=True):
        if alphabet.fullmatch(value):
            return bucket
    return _other_known


def register_secret(value: str | None, owner: str | None = None) -> None:
    """Mask this exact value wherever it appears in a log record, until `forget(owner)`
    (values without an owner are kept for good)."""
    if not value or len(value) < 6:
        return
    with _known_lock:
        _known.setdefault(value, set()).add(owner)
        # Credentials without an owner are few: keep them to the substring test, which also
        # finds them inside a longer run of code characters.
        (_bucket(value) if owner is not None else _other_known).add(value)
        if owner is not None:
            _owned.setdefault(owner, set()).add(value)


def forget(owner: str) -> None:
    """Stop masking the values registered for `owner` (its flow has ended)."""
    with _known_lock:
        for value in _owned.pop(owner, set()):
            owners = _known.get(value)
            if owners is None:
                continue
            owners.discard(owner)
            if not owners:
                del _known[value]
                _other_known.discard(value)
                for bucket in _by_alphabet:
                    bucket.discard(value)


def register_secret_value(value: str, owner: str | None = None) -> str:
    """`register_secret`, returning the value: `encrypt(register(secret_text, flow_id))`."""
    register_secret(value, owner)
    return value


def known_count() -> int:
    """How many exact values are masked now (for tests and benchmarks)."""
    with _known_lock:
        return len(_known)


def redact(text: str) -> str:
    runs = [alphabet.findall(text) for alphabet in _ALPHABETS]
    hits: set[str] = set()
    with _known_lock:
        for found, bucket in zip(runs, _by_alphabet, strict=True):
            if bucket:
                hits.update(run for run in found if run in bucket)
        hits.update(v for v in _other_known if v in text)
    for value in sorted(hits, key=len, reverse=True):
        text = text.replace(value, MASK)
    lowered = text.lower()
    if any(word in lowered for word in _KEYED_WORDS):  # most lines name no secret key
        text = _KEYED.sub(lambda m: m.group(1) + MASK, text)
    if _ANY_PATTERN.search(text):
        for pattern in _PATTERNS:
            text = pattern.sub(MASK, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not lose the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key in ("flow", "user", "account", "correlation_id"):
            value = getattr(record, key, None)
            if isinstance(value, str):
                setattr(record, key, redact(value))
        return True


_EXTRA = ("flow", "user", "account", "correlation_id", "step")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _EXTRA:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [
            f"{k}={getattr(record, k)}" for k in _EXTRA if getattr(record, k, None) is not None
        ]
        return f"{text} [{' '.join(extras)}]" if extras else text


def setup_logging(
    level: str = "INFO", fmt: str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Replace the root handlers with one redacting handler; returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
    return handler


def configure_logging(config: Any, stream: TextIO | None = None) -> logging.Handler:
    """Logging for a running bot: level and format from the configuration, and every
    configured credential registered for masking."""
    handler = setup_logging(config.log_level, config.log_format, stream)
    for value in (
        config.slack_bot_token,
        config.slack_app_token,
        config.slack_signing_secret,
        config.encryption_key,
        config.veeam_password,
    ):
        register_secret(value)
    return handler


# -- routine device-code polls ---------------------------------------------------------------

#: Set while a device-code poll is on the wire: the token endpoint answers every poll of a
#: sign-in nobody has finished yet with HTTP 400 `authorization_pending` (RFC 8628 §3.5),
#: and httpx logs each response at INFO ("HTTP Request: POST … "HTTP/1.1 400 Bad Request"").
_polling: contextvars.ContextVar[bool] = contextvars.ContextVar("veeam_sa_polling", default=False)


@contextlib.contextmanager
def routine_poll() -> Iterator[None]:
    """Within this block, httpx's line for a 400 answer is routine: logged at DEBUG."""
    token = _polling.set(True)
    try:
        yield
    finally:
        _polling.reset(token)


class RoutinePollFilter(logging.Filter):
    """On the `httpx` logger: a 400 answer to a device-code poll is demoted to DEBUG (and
    dropped unless DEBUG is on); every other request line is left as it is. What a poll
    really ended with (declined, expired, …) is reported by the sign-in itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _polling.get() or record.levelno != logging.INFO:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) < 4 or args[3] != 400 or not str(record.msg).startswith("HTTP Request"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_routine_polls() -> None:
    """Install `RoutinePollFilter` on httpx's logger (once)."""
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, RoutinePollFilter) for f in httpx_log.filters):
        httpx_log.addFilter(RoutinePollFilter())
