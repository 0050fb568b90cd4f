"""Certificate accounts end to end: created with `--credential certificate`, proven with a
signed client assertion, handed to the appliance as a PKCS#12 that opens with the password
sent with it and holds the certificate on the application."""

from __future__ import annotations

import base64
import io
import json
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from prometheus_client import CollectorRegistry

from bot.cli import main
from bot.flows.stats import DatabaseCollector
from bot.slack import ids
from storage.db import open_store
from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS, DEFAULT_TENANT_ID, MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.tls import TestCA
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble
from tests.harness import ADMIN, Bot
from tests.test_provision import sign_in
from tests.test_renew import alert, approve_next, retire_offer, wait_renew, wait_retire

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


@pytest.fixture
def vb(ca: TestCA) -> Iterator[VBAzureDouble]:
    with VBAzureDouble(ca) as dbl:
        yield dbl


@pytest.fixture
def vbot(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble, vb: VBAzureDouble
) -> Iterator[Bot]:
    instance = Bot(
        {
            **env,
            "VEEAM_URL": vb.url,
            "VEEAM_USERNAME": DEFAULT_USERNAME,
            "VEEAM_PASSWORD": DEFAULT_PASSWORD,
        },
        slack,
        ms,
    )
    assert instance.services.appliance is not None
    instance.services.appliance.poll_interval = 0.01
    yield instance
    instance.close()


def created(bot: Bot, name: str = "prod", extra: str = " --credential certificate") -> dict:
    sign_in(bot, f"create {name} --subscription {SUB}{extra}")
    bot.wait_state(name, "done", timeout=30)
    bot.wait_thread(name, "is ready")
    return dict(next(bot.db.table("accounts").rows_where("name = ?", [name])))


def app_certificate_der(ms: MicrosoftDouble, app_id: str) -> list[bytes]:
    return [k.der for k in ms.application(app_id=app_id).keys]


def test_a_certificate_account_is_created_proven_and_handed_to_the_appliance(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    account = created(vbot)
    assert account["credential"] == "certificate"
    app = ms.application(app_id=account["app_id"])
    assert app.passwords == []  # no client secret at all
    [key] = app.keys
    assert key.type == "AsymmetricX509Cert" and key.usage == "Verify"
    assert key.cert.public_key().key_size >= 2048

    # proven with a client assertion before the hand-off
    [login] = ms.client_logins
    assert login.key_id == key.key_id and login.app_id == app.app_id
    [save] = vb.events_for(r"saveByApp", "POST")
    offset = time.time() - time.monotonic()
    [proof] = [r for r in ms.requests if r.path.endswith("/token") and "client_assertion" in r.body]
    assert proof.time < save.time + offset, "handed over before it was proven"

    # the appliance holds a PKCS#12 that opens with the password sent with it, and holds
    # the very certificate on the application, with its private key
    [held] = vb.accounts.values()
    assert held["origin"] == "Imported Certificate" and held["clientSecret"] == ""
    assert held["applicationId"] == app.app_id and held["tenantId"] == DEFAULT_TENANT_ID
    blob = base64.b64decode(held["applicationCertificateBase64"])
    private, cert, _ = pkcs12.load_key_and_certificates(blob, held["certificatePassword"].encode())
    assert cert is not None and private is not None
    assert cert.public_bytes(serialization.Encoding.DER) == key.der
    assert private.public_key().public_numbers() == cert.public_key().public_numbers()
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(blob, b"wrong password")
    assert held["applicationCertificateName"].endswith(".pfx")

    # the database holds the key only encrypted; the PKCS#12 password nowhere
    [row] = vbot.db.table("secrets").rows_where("account_id = ?", [account["id"]])
    assert row["kind"] == "certificate" and row["key_id"] == key.key_id
    dump = json.dumps(list(vbot.db.table("secrets").rows)) + json.dumps(
        list(vbot.db.table("audit").rows)
    )
    assert "PRIVATE KEY" not in dump and held["certificatePassword"] not in dump
    assert x509.load_der_x509_certificate(key.der).fingerprint  # a real certificate

    # Slack says it is a certificate, and never shows the key or the password
    parent = slack.message(account["channel_id"], vbot.flow("prod")["parent_ts"])
    text = json.dumps(parent["blocks"])
    assert "Certificate:" in text and row["hint"] in text
    everything = json.dumps([c.args for c in slack.calls])
    assert held["certificatePassword"] not in everything and "PRIVATE KEY" not in everything


def test_without_an_appliance_the_operator_exports_the_pfx_once(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bot = Bot({**env, "VEEAM_SA_CREDENTIAL": "certificate"}, slack, ms)
    try:
        account = created(bot, extra="")  # the setting makes it a certificate account
        assert account["credential"] == "certificate"
        [der] = app_certificate_der(ms, account["app_id"])
        assert ms.application(app_id=account["app_id"]).passwords == []
        parent = slack.message(account["channel_id"], bot.flow("prod")["parent_ts"])
        assert "secret show prod --out" in json.dumps(parent["blocks"])
    finally:
        bot.close()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()

    # no file named: refused, nothing written
    assert main(["secret", "show", "prod", "--yes"]) == 2
    assert "--out" in capsys.readouterr().err
    out = tmp_path / "prod.pfx"
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    assert main(["secret", "show", "prod", "--out", str(out)]) == 1
    assert not out.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO("prod\n"))
    assert main(["secret", "show", "prod", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    password = captured.out.strip()
    assert password and password not in captured.err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    private, cert, _ = pkcs12.load_key_and_certificates(out.read_bytes(), password.encode())
    assert cert is not None and private is not None
    assert cert.public_bytes(serialization.Encoding.DER) == der
    # an existing file is never overwritten
    assert main(["secret", "show", "prod", "--out", str(out), "--yes"]) == 2
    assert "exists" in capsys.readouterr().err
    store = open_store(Path(env["VEEAM_SA_DB"]))
    try:
        rows = list(store.db.table("audit").rows_where("action = 'secret.show'"))
        assert [r["outcome"] for r in rows] == ["declined", "written"]
        assert password not in json.dumps(list(store.db.table("audit").rows))
    finally:
        store.close()


def held_certificate(held: dict) -> bytes:
    blob = base64.b64decode(held["applicationCertificateBase64"])
    _, cert, _ = pkcs12.load_key_and_certificates(blob, held["certificatePassword"].encode())
    assert cert is not None
    return cert.public_bytes(serialization.Encoding.DER)


def test_renewal_rolls_the_certificate_with_overlap(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    account = created(vbot)
    app = ms.application(app_id=account["app_id"])
    [old] = app.keys
    first_password = next(iter(vb.accounts.values()))["certificatePassword"]
    ts = alert(vbot, account)
    vbot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
    approve_next(vbot, 2)
    wait_renew(vbot, "done")

    # the new certificate replaced the old one, and the appliance holds it
    [new] = app.keys
    assert new.key_id != old.key_id and new.der != old.der
    [held] = vb.accounts.values()
    assert held_certificate(held) == new.der
    assert held["certificatePassword"] != first_password  # a new password per hand-off
    assert ms.refused_proofs == []

    # overlap: added (proof signed by the old one), proven, handed over, then the old removed
    offset = time.time() - time.monotonic()
    [add] = [r for r in ms.requests if r.path.endswith("/addKey")]
    [remove] = [r for r in ms.requests if r.path.endswith("/removeKey")]
    [update] = vb.events_for(r"updateByApp", "PUT")
    proofs = [r for r in ms.requests if r.path.endswith("/token") and "client_assertion" in r.body]
    assert add.status == 200 and remove.status == 204 and remove.body["keyId"] == old.key_id
    assert add.time < proofs[-1].time < update.time + offset < remove.time
    assert [c.key_id for c in ms.client_logins] == [old.key_id, new.key_id]
    header = json.loads(base64.urlsafe_b64decode(add.body["proof"].split(".")[0] + "=="))
    assert base64.urlsafe_b64decode(header["x5t"] + "=") == old.sha1

    rows = list(vbot.db.table("secrets").rows_where("account_id = ?", [account["id"]]))
    assert {(r["key_id"], r["state"]) for r in rows} == {
        (old.key_id, "retired"),
        (new.key_id, "active"),
    }
    text = json.dumps([c.args for c in slack.calls])
    assert "PRIVATE KEY" not in text and held["certificatePassword"] not in text


def test_the_certificate_lifetime_is_capped_by_the_tenant_policy(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    ms.tenants[DEFAULT_TENANT_ID].key_max_days = 90
    account = created(bot)
    [key] = ms.application(app_id=account["app_id"]).keys
    assert 89 * 86400 < key.end - key.start <= 90 * 86400
    # refused at 365 days, then the cap the policy names is used, and the thread says so
    note = bot.wait_thread("prod", "app management policy")
    assert "certificates of at most 90 days" in note
    refused = [r for r in ms.requests if r.method == "PATCH" and r.status == 400]
    assert len(refused) == 1


def test_a_certificate_that_never_works_is_rolled_back(bot: Bot, ms: MicrosoftDouble) -> None:
    ms.new_secret_delay = 1000  # every client assertion refused
    bot.services.provision.proof_budget = 1.5
    sign_in(bot, f"create prod --subscription {SUB} --credential certificate")
    flow = bot.wait_state("prod", "rolled_back", timeout=30)
    text = bot.wait_thread("prod", "Rolled back")
    assert "certificate could not obtain a token" in text and "AADSTS700027" in text
    assert ms.applications == [] and len(ms.deleted_applications) == 1
    assert len(ms.client_logins) == 0
    account = bot.db.table("accounts").get(flow["account_id"])
    assert account["state"] == "rolled_back"
    states = {r["state"] for r in bot.db.table("secrets").rows}
    assert states == {"retired"}
    # nothing was assigned: the proof comes before the roles
    assert not [r for r in ms.requests if r.method == "PUT" and "roleAssignments" in r.path]


def test_a_failed_certificate_creation_after_the_roles_rolls_everything_back(
    bot: Bot, ms: MicrosoftDouble
) -> None:
    ms.fault(
        "arm",
        "PUT",
        r"/roleAssignments/",
        403,
        body={"error": {"code": "AuthorizationFailed", "message": "no"}},
        times=10,
    )
    sign_in(bot, f"create prod --subscription {SUB} --credential certificate")
    bot.wait_state("prod", "rolled_back", timeout=30)
    assert ms.applications == []
    [deleted] = ms.deleted_applications
    assert len(deleted.keys) == 1  # the certificate went with its application


def test_without_an_appliance_the_old_certificate_goes_once_veeam_has_the_new_one(
    bot: Bot, ms: MicrosoftDouble, slack: SlackDouble
) -> None:
    account = created(bot)
    app = ms.application(app_id=account["app_id"])
    [old] = app.keys
    ts = alert(bot, account)
    warnings = [
        c for c in slack.calls_to("chat.postMessage") if c.args.get("channel") == account["alert_channel_id"]
    ]
    assert "certificate of" in json.dumps(warnings[-1].args)
    dms = [c for c in slack.calls_to("chat.postMessage") if c.args.get("channel", "").startswith("D")]
    assert dms and "Certificate expiring soon" in dms[-1].args["text"]
    bot.click(ids.ACTION_RENEW, str(account["id"]), user=ADMIN, message_ts=ts)
    approve_next(bot, 2)
    flow = wait_renew(bot, "done")
    assert len(app.keys) == 2  # overlap: both live until Veeam has the new one
    offer = retire_offer(bot, flow["channel_id"], flow["parent_ts"])
    assert "secret show prod --out prod.pfx" in json.dumps(offer["blocks"])
    [old_id] = [
        e["value"] for b in offer["blocks"] if b["type"] == "actions" for e in b["elements"]
    ]
    bot.click(ids.ACTION_RETIRE_OLD_SECRET, old_id, user=ADMIN, message_ts=offer["ts"])
    approve_next(bot, 3)
    wait_retire(bot, "done")
    [new] = app.keys
    assert new.key_id != old.key_id and ms.refused_proofs == []
    [remove] = [r for r in ms.requests if r.path.endswith("/removeKey")]
    header = json.loads(base64.urlsafe_b64decode(remove.body["proof"].split(".")[0] + "=="))
    assert base64.urlsafe_b64decode(header["x5t"] + "=") == new.sha1  # signed by the one kept


def test_metrics_count_certificates_apart_from_secrets(bot: Bot) -> None:
    created(bot)
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(bot.store, lambda: datetime.now(UTC)))
    assert registry.get_sample_value("veeam_sa_certificates", {"bucket": "gt_30"}) == 1
    assert registry.get_sample_value("veeam_sa_secrets", {"bucket": "gt_30"}) == 0


def test_list_and_show_name_the_certificate(bot: Bot) -> None:
    created(bot)
    hint = next(bot.db.table("secrets").rows)["hint"]
    shown = bot.command("list")
    assert f"certificate `{hint}" in shown
    assert f"Certificate (thumbprint) `{hint}" in bot.command("show prod")


def test_appliance_down_during_create_then_sync_hands_the_certificate(
    vbot: Bot, ms: MicrosoftDouble, vb: VBAzureDouble, slack: SlackDouble
) -> None:
    vb.fault("POST", r"saveByApp", 503, times=10)
    account = created(vbot)
    assert account["handoff"] == "failed" and vb.accounts == {}
    vb.faults.clear()
    mark = slack.mark()
    assert "Handing `prod`" in vbot.command("sync prod")
    reply = slack.wait_for("response_url", after=mark, timeout=10)
    assert "registered with the Veeam appliance" in json.dumps(reply.args)
    [held] = vb.accounts.values()
    [key] = ms.application(app_id=account["app_id"]).keys
    assert held_certificate(held) == key.der
