"""Reading the appliance's answers: JSON bodies, problem documents, OAuth refusals,
`Retry-After`, TLS failures — and scrubbing every secret a call knew about from the text."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpx

_REDACTED = "[redacted]"
_MAX_TEXT = 300
_MAX_FIELDS = 10



def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:_MAX_TEXT] if text else None


def _problem_text(response: httpx.Response) -> tuple[str | None, str | None]:
    """``title`` and ``detail`` of an RFC 7807 problem document (nothing else of the body)."""
    body = _json(response)
    title, detail, _, _ = _problem_fields(body)
    if title is None and detail is None and isinstance(body, dict) and body.get("error"):
        return _text(body.get("error")), _text(body.get("error_description"))
    return title, detail


def _problem_fields(
    body: Any,
) -> tuple[str | None, str | None, dict[str, list[str]], str | None]:
    """``title``, ``detail``, per-field ``errors`` and ``traceId`` of a problem document
    (v8.1 ``ProblemDetails400`` and its kin); nothing else of the body is read."""
    if not isinstance(body, dict):
        return None, None, {}, None
    errors: dict[str, list[str]] = {}
    raw = body.get("errors")
    if isinstance(raw, dict):
        for field, messages in list(raw.items())[:_MAX_FIELDS]:
            texts = messages if isinstance(messages, list) else [messages]
            kept = [t for t in (_text(m) for m in texts[:3]) if t]
            if kept:
                errors[str(_text(field) or "request")] = kept
    return _text(body.get("title")), _text(body.get("detail")), errors, _text(body.get("traceId"))


def _errors_text(errors: dict[str, list[str]]) -> str:
    """Per-field problems as one line: ``field: message; other: message``."""
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())


def _oauth_reason(response: httpx.Response) -> str:
    body = _json(response)
    if isinstance(body, dict):
        code = _text(body.get("error") or body.get("title"))
        text = _text(body.get("error_description") or body.get("detail"))
        if code and text:
            return f"{code}: {text}"
        if code or text:
            return str(code or text)
    return f"HTTP {response.status_code}"


def _scrub(text: str | None, hidden: Iterable[str | None]) -> str | None:
    if text is None:
        return None
    for value in hidden:
        if value and len(value) >= 4 and value in text:
            text = text.replace(value, _REDACTED)
    return text


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _tls_reason(exc: BaseException) -> str:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or "certificate verify failed"
        current = current.__cause__ or current.__context__
    return "certificate verify failed"
