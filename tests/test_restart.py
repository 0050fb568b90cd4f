"""Kill the real bot process mid-flow (SIGKILL), start a new one, and check it finishes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import post_signed, slash_command_body
from tests.harness import SIGNING_SECRET
from tests.process import SUB, BotProcess, create, flow_row, launch, thread_has, wait_until


def test_pending_sign_in_survives_sigkill(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs)
    create(first, slack, f"create prod --subscription {SUB}")
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "awaiting_sign_in", what="sign-in to start"
    )
    first.kill()

    second = launch(env, tmp_path, procs)
    wait_until(lambda: thread_has(slack, "still waiting for the sign-in"), what="resume note")
    ms.approve(ms.flows[0].user_code)
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "done", timeout=30, what="creation to finish"
    )
    assert len(ms.flows) == 1  # the same device code was resumed, not a new one
    assert len(ms.applications) == 1
    assert second.terminate() == 0


def test_sign_in_that_expired_while_down_is_closed(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    ms.device_expires_in = 2
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs)
    create(first, slack, "create prod")
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "awaiting_sign_in", what="sign-in to start"
    )
    first.kill()
    time.sleep(2.5)
    launch(env, tmp_path, procs)
    wait_until(lambda: flow_row(db, "prod").get("state") == "expired", what="expiry")
    assert wait_until(
        lambda: thread_has(slack, "expired while the bot was offline"), what="expiry note"
    )
    assert ms.applications == []


@pytest.mark.parametrize("step", ["after_application", "after_secret", "after_roles"])
def test_crash_mid_provisioning_resumes_without_duplicates(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
    step: str,
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs, VEEAM_SA_CRASH_AT=step)
    create(first, slack, f"create prod --subscription {SUB}")
    wait_until(lambda: len(ms.flows) == 1, what="device flow")
    ms.approve(ms.flows[0].user_code)
    assert first.proc is not None
    assert first.proc.wait(30) == -9  # killed at the crash point
    assert len(ms.applications) == 1

    launch(env, tmp_path, procs)
    wait_until(lambda: thread_has(slack, "sign in again"), what="re-sign-in request")
    wait_until(lambda: len(ms.flows) == 2, what="second device flow")
    ms.approve(ms.flows[1].user_code)
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "done", timeout=40, what="creation to finish"
    )

    apps = ms.applications
    assert len(apps) == 1, "a resumed creation must not create a second application"
    assert len(apps[0].passwords) == 1
    sp = ms.service_principal(apps[0].app_id)
    assert sp is not None and len(ms.assignments_for(sp.id)) == 3
    conn = sqlite3.connect(db)
    try:
        live = conn.execute("SELECT key_id FROM secrets WHERE state = 'active'").fetchall()
        accounts = conn.execute("SELECT state FROM accounts").fetchall()
    finally:
        conn.close()
    assert live == [(apps[0].passwords[0].key_id,)]
    assert accounts == [("active",)]


def test_crash_after_graph_issued_an_unstored_secret(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, tmp_path: Path, procs: list[BotProcess]
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs, VEEAM_SA_CRASH_AT="after_add_password")
    create(first, slack, f"create prod --subscription {SUB}")
    wait_until(lambda: len(ms.flows) == 1, what="device flow")
    ms.approve(ms.flows[0].user_code)
    assert first.proc is not None and first.proc.wait(30) == -9
    assert len(ms.applications[0].passwords) == 1  # issued, but the bot never stored it

    launch(env, tmp_path, procs)
    wait_until(lambda: len(ms.flows) == 2, what="second device flow")
    ms.approve(ms.flows[1].user_code)
    wait_until(lambda: flow_row(db, "prod").get("state") == "done", timeout=40, what="creation to finish")
    app = ms.applications[0]
    assert len(ms.applications) == 1 and len(app.passwords) == 1
    conn = sqlite3.connect(db)
    try:
        live = conn.execute("SELECT key_id FROM secrets WHERE state = 'active'").fetchall()
    finally:
        conn.close()
    assert live == [(app.passwords[0].key_id,)]  # the unknowable one was replaced, not kept


@pytest.mark.parametrize("step", ["renew_after_add_password", "after_new_secret"])
def test_crash_mid_renewal_ends_with_one_live_secret(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
    step: str,
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs)
    create(first, slack, f"create prod --subscription {SUB}")
    wait_until(lambda: len(ms.flows) == 1, what="device flow")
    ms.approve(ms.flows[0].user_code)
    wait_until(lambda: flow_row(db, "prod").get("state") == "done", timeout=30, what="creation")
    old_key = ms.applications[0].passwords[0].key_id
    assert first.terminate() == 0

    second = launch(env, tmp_path, procs, VEEAM_SA_CRASH_AT=step)
    body = slash_command_body("renew prod", response_url=slack.response_url())
    assert "Renewing" in post_signed(f"{second.url}/slack/events", body, SIGNING_SECRET).text
    wait_until(lambda: len(ms.flows) == 2, what="renewal sign-in")
    ms.approve(ms.flows[1].user_code)
    assert second.proc is not None and second.proc.wait(30) == -9

    launch(env, tmp_path, procs)
    wait_until(lambda: len(ms.flows) == 3, what="sign-in after the crash")
    ms.approve(ms.flows[2].user_code)

    def renewed() -> bool:
        conn = sqlite3.connect(db)
        try:
            row = conn.execute("SELECT state FROM flows WHERE kind = 'renew'").fetchone()
        finally:
            conn.close()
        return bool(row and row[0] == "done")

    wait_until(renewed, timeout=40, what="renewal to finish")
    app = ms.applications[0]
    assert len(ms.applications) == 1
    # no appliance: the old secret stays live until Veeam has the new one; the crash left
    # no second new secret behind
    keys = [p.key_id for p in app.passwords]
    assert old_key in keys and len(keys) == 2
    [new_key] = [k for k in keys if k != old_key]
    conn = sqlite3.connect(db)
    try:
        states = dict(conn.execute("SELECT key_id, state FROM secrets").fetchall())
    finally:
        conn.close()
    assert states[old_key] == "retiring"
    assert [k for k, s in states.items() if s == "active"] == [new_key]


@pytest.mark.parametrize("step", ["after_add_key", "after_secret"])
def test_crash_mid_certificate_creation_ends_with_one_known_certificate(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
    step: str,
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs, VEEAM_SA_CRASH_AT=step, VEEAM_SA_CREDENTIAL="certificate")
    create(first, slack, f"create prod --subscription {SUB}")
    wait_until(lambda: len(ms.flows) == 1, what="device flow")
    ms.approve(ms.flows[0].user_code)
    assert first.proc is not None and first.proc.wait(30) == -9
    assert len(ms.applications[0].keys) == 1  # on the application (stored or not)

    launch(env, tmp_path, procs, VEEAM_SA_CREDENTIAL="certificate")
    wait_until(lambda: len(ms.flows) == 2, what="second device flow")
    ms.approve(ms.flows[1].user_code)
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "done", timeout=40, what="creation to finish"
    )
    [app] = ms.applications
    [key] = app.keys  # an unknowable certificate was replaced, not kept beside
    assert app.passwords == []
    conn = sqlite3.connect(db)
    try:
        live = conn.execute("SELECT key_id, kind FROM secrets WHERE state = 'active'").fetchall()
    finally:
        conn.close()
    assert live == [(key.key_id, "certificate")]
    assert ms.client_logins and ms.client_logins[-1].key_id == key.key_id


@pytest.mark.parametrize("step", ["renew_after_add_key", "after_new_secret"])
def test_crash_mid_certificate_renewal_ends_with_one_new_certificate(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
    step: str,
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs)
    create(first, slack, f"create prod --subscription {SUB} --credential certificate")
    wait_until(lambda: len(ms.flows) == 1, what="device flow")
    ms.approve(ms.flows[0].user_code)
    wait_until(lambda: flow_row(db, "prod").get("state") == "done", timeout=30, what="creation")
    [old] = ms.applications[0].keys
    assert first.terminate() == 0

    second = launch(env, tmp_path, procs, VEEAM_SA_CRASH_AT=step)
    body = slash_command_body("renew prod", response_url=slack.response_url())
    assert "Renewing" in post_signed(f"{second.url}/slack/events", body, SIGNING_SECRET).text
    wait_until(lambda: len(ms.flows) == 2, what="renewal sign-in")
    ms.approve(ms.flows[1].user_code)
    assert second.proc is not None and second.proc.wait(30) == -9
    assert len(ms.applications[0].keys) == 2

    launch(env, tmp_path, procs)
    wait_until(lambda: len(ms.flows) == 3, what="sign-in after the crash")
    ms.approve(ms.flows[2].user_code)

    def renewed() -> bool:
        conn = sqlite3.connect(db)
        try:
            row = conn.execute("SELECT state FROM flows WHERE kind = 'renew'").fetchone()
        finally:
            conn.close()
        return bool(row and row[0] == "done")

    wait_until(renewed, timeout=40, what="renewal to finish")
    # no appliance: the old certificate stays until Veeam has the new one; the crash left
    # no second new certificate behind
    keys = [k.key_id for k in ms.applications[0].keys]
    assert old.key_id in keys and len(keys) == 2
    [new_key] = [k for k in keys if k != old.key_id]
    conn = sqlite3.connect(db)
    try:
        states = dict(conn.execute("SELECT key_id, state FROM secrets").fetchall())
    finally:
        conn.close()
    assert states[old.key_id] == "retiring"
    assert [k for k, s in states.items() if s == "active"] == [new_key]
    assert ms.refused_proofs == []
