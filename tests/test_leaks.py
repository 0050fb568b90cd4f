"""Nothing secret leaks: create and renew end to end at DEBUG, then scan everything the bot
emitted — every Slack call, every log line, stderr, the database file bytes."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bot.core.certs import Certificate
from bot.core.logs import configure_logging
from bot.flows import expiry
from bot.slack import ids
from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.tls import TestCA
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble
from tests.harness import ADMIN, Bot
from tests.test_provision import sign_in
from tests.test_renew import approve_next, retire_offer, wait_renew, wait_retire

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


def database_bytes(path: Path) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            data += part.read_bytes()
    return data


def test_create_and_renew_leak_nothing(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, capfd: pytest.CaptureFixture[str]
) -> None:
    logs = io.StringIO()
    bot = Bot({**env, "VEEAM_SA_LOG_LEVEL": "DEBUG"}, slack, ms)
    configure_logging(bot.config, logs)
    try:
        sign_in(bot, f"create prod --subscription {SUB}")
        bot.wait_state("prod", "done", timeout=30)
        bot.wait_thread("prod", "is ready")
        account = next(bot.db.table("accounts").rows)
        secret = next(bot.db.table("secrets").rows)
        end = datetime.fromisoformat(secret["end_at"])
        expiry.scan(
            bot.store, bot.services.slack, bot.config, end - timedelta(days=3), sleep=lambda s: None
        )
        ts = str(
            slack.calls_to("chat.postMessage", channel=account["channel_id"])[-1].response["ts"]
        )
        bot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
        approve_next(bot, 2)
        flow = wait_renew(bot, "done")
        offer = retire_offer(bot, flow["channel_id"], flow["parent_ts"])
        [old_id] = [
            e["value"] for b in offer["blocks"] if b["type"] == "actions" for e in b["elements"]
        ]
        bot.click(ids.ACTION_RETIRE_OLD_SECRET, old_id, user=ADMIN, message_ts=offer["ts"])
        approve_next(bot, 3)
        wait_retire(bot, "done")
    finally:
        bot.close()
        logging.getLogger().handlers.clear()

    passwords = [
        p.secret_text for a in ms.applications + ms.deleted_applications for p in a.passwords
    ]
    secrets = {
        "client secret": passwords,
        "device code": [f.device_code for f in ms.flows],
        "access token": list(ms.access_tokens),
        "refresh token": list(ms.refresh_tokens),
        "Slack token": [bot.config.slack_bot_token, bot.config.slack_signing_secret],
    }
    # the renewed secret is in use; the first one was removed once Veeam had the new one —
    # both must be nowhere
    assert len(secrets["client secret"]) == 1
    old = bot.cipher.decrypt(
        next(bot.store.db.table("secrets").rows_where("state = 'retired'"))["ciphertext"]
    )
    secrets["client secret"].append(old)
    assert len(secrets["device code"]) == 3 and secrets["access token"] and secrets["refresh token"]

    slack_calls = [json.dumps({"method": c.method, "args": c.args}) for c in slack.calls]
    log_text = logs.getvalue()
    captured = capfd.readouterr()
    assert "DEBUG" in log_text  # the scan covers a real DEBUG log
    db = database_bytes(bot.store.path)
    for kind, values in secrets.items():
        for value in values:
            assert value, kind
            assert all(value not in call for call in slack_calls), f"{kind} reached Slack"
            assert value not in log_text, f"{kind} reached the log"
            assert value not in captured.out + captured.err, f"{kind} reached stdout/stderr"
            assert value.encode() not in db, f"{kind} is in the database file in plain text"

    # the user code went only to the person who signed in
    for flow in ms.flows:
        for call in slack.calls:
            if flow.user_code in json.dumps(call.args):
                addressed = call.args.get("user") == ADMIN or call.args.get(
                    "channel"
                ) == slack.dm_channel(ADMIN)
                assert call.method in ("chat.postEphemeral", "chat.postMessage") and addressed, call
        assert flow.user_code not in log_text


def test_certificate_create_and_renew_leak_nothing(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    ca: TestCA,
    capfd: pytest.CaptureFixture[str],
) -> None:
    logs = io.StringIO()
    with VBAzureDouble(ca) as vb:
        bot = Bot(
            {
                **env,
                "VEEAM_SA_LOG_LEVEL": "DEBUG",
                "VEEAM_SA_CREDENTIAL": "certificate",
                "VEEAM_URL": vb.url,
                "VEEAM_USERNAME": DEFAULT_USERNAME,
                "VEEAM_PASSWORD": DEFAULT_PASSWORD,
            },
            slack,
            ms,
        )
        configure_logging(bot.config, logs)
        try:
            assert bot.services.appliance is not None
            bot.services.appliance.poll_interval = 0.01
            sign_in(bot, f"create prod --subscription {SUB}")
            bot.wait_state("prod", "done", timeout=30)
            bot.wait_thread("prod", "is ready")
            account = next(bot.db.table("accounts").rows)
            row = next(bot.db.table("secrets").rows)
            end = datetime.fromisoformat(row["end_at"])
            expiry.scan(
                bot.store,
                bot.services.slack,
                bot.config,
                end - timedelta(days=3),
                sleep=lambda s: None,
            )
            ts = str(slack.calls_to("chat.postMessage")[-1].response["ts"])
            bot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
            approve_next(bot, 2)
            wait_renew(bot, "done")
        finally:
            bot.close()
            logging.getLogger().handlers.clear()
        sent = [e for e in vb.events if "ByApp" in e.path]
        pkcs12_passwords = [str(e.client_secret) for e in sent]
        pkcs12_files = [str(a["applicationCertificateBase64"]) for a in vb.accounts.values()]

    keys = [
        Certificate.load(bot.cipher.decrypt(r["ciphertext"]))
        for r in bot.store.db.table("secrets").rows
    ]
    assert len(keys) == 2 and len(pkcs12_passwords) == 2
    key_lines = [line for c in keys for line in c.key_pem.splitlines() if len(line) >= 40]
    assertions = [
        str(r.body["client_assertion"])
        for r in ms.requests
        if isinstance(r.body, dict) and r.body.get("client_assertion")
    ]
    proofs = [
        str(r.body["proof"])
        for r in ms.requests
        if isinstance(r.body, dict) and r.body.get("proof")
    ]
    assert assertions and proofs
    secrets = {
        "private key": key_lines,
        "PKCS#12 password": pkcs12_passwords,
        "PKCS#12 file": pkcs12_files,
        "client assertion": assertions,
        "key-rolling proof": proofs,
    }
    slack_calls = [json.dumps({"method": c.method, "args": c.args}) for c in slack.calls]
    log_text = logs.getvalue()
    captured = capfd.readouterr()
    assert "DEBUG" in log_text
    db = database_bytes(bot.store.path)
    for kind, values in secrets.items():
        for value in values:
            assert value, kind
            assert all(value not in call for call in slack_calls), f"{kind} reached Slack"
            assert value not in log_text, f"{kind} reached the log"
            assert value not in captured.out + captured.err, f"{kind} reached stdout/stderr"
            assert value.encode() not in db, f"{kind} is in the database file in plain text"
    assert b"PRIVATE KEY" not in db
