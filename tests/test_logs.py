from __future__ import annotations

import io
import json
import logging

import pytest

from bot.core.logs import MASK, redact, register_secret, setup_logging

SECRET = "abc8Q~Zx1yW2vU3tS4rQ5pO6nM7lK8jI9hG0fE1d"
JWT = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxMjMifQ."
DEVICE = "DAQABIQEAAABVrSpeuWamRam2jAF1XRQEw" + "x" * 80


@pytest.mark.parametrize(
    "text",
    [
        f"secret is {SECRET}",
        f"Authorization: Bearer {JWT}",
        f"token {JWT} end",
        "slack xoxb-1111-2222-abcdefABCDEF and xapp-1-A0-123-abc",
        f"device {DEVICE}",
        '{"client_secret": "plain-value-1234"}',
        "grant_type=refresh_token&refresh_token=0.AAAA-shortish&scope=x",
        "password=hunter2hunter2",
        "stored gAAAAABpQ" + "A" * 60,
        "sent with BEARER Zm9vYmFyYmF6cXV4MTIz",  # the bearer shape alone, in capitals
    ],
)
def test_secret_shapes_are_masked(text: str) -> None:
    out = redact(text)
    assert MASK in out
    for fragment in (
        SECRET,
        JWT,
        DEVICE,
        "plain-value-1234",
        "0.AAAA-shortish",
        "hunter2hunter2",
        "xoxb-1111",
    ):
        assert fragment not in out


def test_ordinary_text_is_left_alone() -> None:
    text = "flow 0123456789abcdef0123456789abcdef: PUT /subscriptions/3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f 201"
    assert redact(text) == text


def test_registered_values_are_masked_anywhere() -> None:
    register_secret("short-but-known-value")
    assert redact("x=short-but-known-value;") == f"x={MASK};"


def test_handler_scrubs_messages_args_and_exceptions_as_json() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", "json", stream)
    log = logging.getLogger("veeam_sa.test")
    log.info("got %s", SECRET, extra={"flow": "f1", "user": "U1"})
    try:
        raise ValueError(f"body was {{'secretText': '{SECRET}'}}")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert SECRET not in stream.getvalue()
    assert lines[0]["flow"] == "f1" and lines[0]["user"] == "U1"
    assert "ValueError" in lines[1]["exception"]
    logging.getLogger().handlers.clear()


def test_audited_steps_are_log_events_with_their_fields(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from storage import queries
    from storage.db import open_store

    stream = io.StringIO()
    setup_logging("INFO", "json", stream)
    store = open_store(tmp_path / "veeam-sa.db")
    queries.add_audit(
        store.db,
        actor="U0ADMIN",
        action="sign_in.failed",
        target="prod",
        outcome="mfa",
        detail={"flow": "f-1", "correlation_id": "c-1"},
    )
    store.close()
    logging.getLogger().handlers.clear()
    [event] = [
        json.loads(line) for line in stream.getvalue().splitlines() if "sign_in.failed" in line
    ]
    assert (event["flow"], event["user"], event["account"], event["correlation_id"]) == (
        "f-1",
        "U0ADMIN",
        "prod",
        "c-1",
    )


def test_flow_values_are_forgotten_with_their_flow() -> None:
    from bot.core import logs

    for n in range(1000):
        register_secret(f"user-code-{n:05d}", owner=f"flow-{n}")
    assert redact("code user-code-00042 here") == f"code {MASK} here"
    for n in range(1000):
        logs.forget(f"flow-{n}")
    assert not any(v.startswith("user-code-") for v in logs._known)
    assert redact("code user-code-00042 here") == "code user-code-00042 here"
