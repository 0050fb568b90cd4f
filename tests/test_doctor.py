"""`veeam-sa-bot doctor` through the real CLI entry, against the Slack and Microsoft doubles."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from bot.cli import main as cli_main
from bot.core.config import Config
from bot.core.crypto import Cipher, key_file_for, load_or_create_key
from bot.ops import doctor
from storage.db import Store, open_store
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, SlackDouble
from tests.fakes.tls import TestCA
from tests.harness import CHANNEL, SIGNING_SECRET

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_SCOPES: list[str] = yaml.safe_load((ROOT / "manifest.yml").read_text())["oauth_config"][
    "scopes"
]["bot"]

#: Every variable the configuration reads, cleared before each test so the machine's
#: environment cannot leak in.
CONFIG_VARIABLES = (
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_API_URL",
    "PORT",
    "VEEAM_URL",
    "VEEAM_USERNAME",
    "VEEAM_PASSWORD",
    "SSL_CERT_FILE",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
)


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def checks(self) -> list[str]:
        """The verdict lines (the configuration's setting lines are indented)."""
        return [line for line in self.out.splitlines() if not line.startswith(" ")]

    def line(self, name: str) -> str:
        found = [c for c in self.checks if c[2:].startswith(name + ":")]
        assert len(found) == 1, f"no single {name!r} line in:\n{self.out}"
        return found[0]

    def passed(self, name: str) -> str:
        line = self.line(name)
        assert line.startswith("✓ "), line
        return line

    def failed(self, name: str) -> str:
        line = self.line(name)
        assert line.startswith("✗ "), line
        return line


@pytest.fixture
def slack(slack: SlackDouble) -> SlackDouble:
    """The Slack double granting exactly the manifest's scopes (its default set differs)."""
    slack.scopes = ",".join(MANIFEST_SCOPES)
    return slack


@pytest.fixture
def run_doctor(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path):
    def run(env: dict[str, str]) -> Outcome:
        for name in list(os.environ):
            if name.startswith("VEEAM_SA_") or name in CONFIG_VARIABLES:
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)  # no stray .env
        capsys.readouterr()
        code = cli_main(["doctor"])
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}"


def assert_no_secrets(outcome: Outcome, env: dict[str, str]) -> None:
    text = outcome.out + outcome.err
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "VEEAM_SA_ENCRYPTION_KEY",
        "VEEAM_PASSWORD",
    ):
        if env.get(name):
            assert env[name] not in text, f"{name} leaked into doctor's output"


def seed_secret(db_path: Path, key: str) -> None:
    """An existing database holding one encrypted client secret."""
    store = open_store(db_path)
    now = datetime.now(UTC).isoformat()
    with store.db.atomic():
        account = store.db["accounts"].insert({"name": "backup-prod", "created_at": now}).last_pk
        store.db["secrets"].insert(
            {
                "account_id": account,
                "key_id": "11111111-1111-1111-1111-111111111111",
                "end_at": now,
                "ciphertext": Cipher(key).encrypt("client-secret-value"),
            }
        )
    store.close()


# ------------------------------------------------------------------ all healthy


def test_all_healthy_http_mode(run_doctor, env, slack: SlackDouble, ms: MicrosoftDouble) -> None:
    env = {
        **env,
        "VEEAM_SA_ALERT_CHANNEL": CHANNEL,
        "VEEAM_URL": ms.arm_url,  # any HTTPS server the test CA vouches for
        "VEEAM_USERNAME": "veeam-admin",
        "VEEAM_PASSWORD": "appliance-password-123",
    }
    result = run_doctor(env)

    assert result.code == 0, result.out
    assert result.err == ""
    assert all(line.startswith("✓ ") for line in result.checks), result.out
    for name in (
        "configuration",
        "database",
        "encryption key",
        "Slack token",
        "Slack scopes",
        "HTTP mode",
        "alert channel",
        "Microsoft sign-in",
        "Microsoft Graph",
        "Azure Resource Manager",
        "Veeam appliance",
    ):
        result.passed(name)
    assert "token endpoint" in result.line("Microsoft sign-in")
    assert "the bot is a member" in result.line("alert channel")
    assert "@veeam-sa" in result.line("Slack token")
    # HTTP mode: the app-level token endpoint is not touched.
    assert slack.calls_to("apps.connections.open") == []
    assert_no_secrets(result, env)


def test_configuration_lists_every_setting_with_secrets_masked(run_doctor, env) -> None:
    env = {**env, "VEEAM_URL": closed_port_url(), "VEEAM_USERNAME": "u", "VEEAM_PASSWORD": "pw-9"}
    result = run_doctor(env)

    settings = dict(
        line.strip().split(" = ", 1) for line in result.out.splitlines() if line.startswith("    ")
    )
    assert set(settings) >= {name for name, _show in doctor.SETTINGS.values()}
    assert "(not shown)" not in settings.values()
    assert settings["SLACK_BOT_TOKEN"] == "xoxb-…"
    assert settings["SLACK_SIGNING_SECRET"] == "set"
    assert settings["VEEAM_SA_ENCRYPTION_KEY"] == "set"
    assert settings["VEEAM_PASSWORD"] == "set"
    assert settings["SLACK_APP_TOKEN"] == "(unset)"
    assert settings["VEEAM_SA_DB"] == env["VEEAM_SA_DB"]
    assert settings["VEEAM_SA_GRAPH_URL"] == env["VEEAM_SA_GRAPH_URL"]
    assert settings["VEEAM_SA_WARN_DAYS"] == "30,14,7,1"
    assert settings["VEEAM_USERNAME"] == "u"
    assert_no_secrets(result, env)


def test_every_config_field_has_a_display_rule() -> None:
    missing = [f.name for f in fields(Config) if f.name not in doctor.SETTINGS]
    assert missing == [], "add these settings to bot.ops.doctor.SETTINGS (mask secrets)"


def test_manifest_scopes_read_without_pyyaml_match_yaml() -> None:
    assert list(doctor.read_manifest_scopes(ROOT / "manifest.yml") or ()) == MANIFEST_SCOPES
    assert list(doctor.MANIFEST_BOT_SCOPES) == MANIFEST_SCOPES
    assert doctor.read_manifest_scopes(ROOT / "no-such-manifest.yml") is None


# ------------------------------------------------------------------ Slack


def test_revoked_bot_token(run_doctor, env, slack: SlackDouble) -> None:
    slack.tokens = {APP_TOKEN}
    result = run_doctor({**env, "VEEAM_SA_ALERT_CHANNEL": CHANNEL})

    assert result.code == 1
    line = result.failed("Slack token")
    assert "invalid_auth" in line and "OAuth & Permissions" in line
    result.failed("alert channel")  # cannot be looked up without a working token
    result.passed("Microsoft sign-in")
    assert_no_secrets(result, env)


def test_missing_scopes_are_named(run_doctor, env, slack: SlackDouble) -> None:
    slack.scopes = "commands,chat:write"
    result = run_doctor(env)

    assert result.code == 1
    result.passed("Slack token")
    line = result.failed("Slack scopes")
    for scope in ("chat:write.public", "im:write", "users:read", "usergroups:read"):
        assert scope in line
    assert "lacks" in line and "reinstall" in line
    assert "commands," not in line


def test_socket_mode_checks_the_app_token_without_connecting(
    run_doctor, env, slack: SlackDouble
) -> None:
    env = {k: v for k, v in env.items() if k != "SLACK_SIGNING_SECRET"}
    result = run_doctor({**env, "SLACK_APP_TOKEN": APP_TOKEN})

    assert result.code == 0, result.out
    assert "apps.connections.open" in result.passed("Socket Mode")
    assert len(slack.calls_to("apps.connections.open")) == 1
    assert slack.socket_connection_count == 0
    assert APP_TOKEN not in result.out


def test_socket_mode_with_a_revoked_app_token(run_doctor, env, slack: SlackDouble) -> None:
    slack.tokens = {BOT_TOKEN}
    result = run_doctor({**env, "SLACK_APP_TOKEN": APP_TOKEN})

    assert result.code == 1
    line = result.failed("Socket Mode")
    assert "SLACK_APP_TOKEN" in line and "connections:write" in line
    result.passed("Slack token")


def test_slack_unreachable(run_doctor, env) -> None:
    result = run_doctor({**env, "SLACK_API_URL": closed_port_url().replace("https", "http")})

    assert result.code == 1
    assert "check network/proxy/SSL_CERT_FILE" in result.failed("Slack token")


# ------------------------------------------------------------------ alert channel


def test_unknown_alert_channel(run_doctor, env, slack: SlackDouble) -> None:
    slack.fail("conversations.info", error="channel_not_found")
    result = run_doctor({**env, "VEEAM_SA_ALERT_CHANNEL": "C0GONE"})

    assert result.code == 1
    line = result.failed("alert channel")
    assert "C0GONE" in line and "channel_not_found" in line and "VEEAM_SA_ALERT_CHANNEL" in line


def test_public_alert_channel_without_membership_is_fine(
    run_doctor, env, slack: SlackDouble
) -> None:
    slack.channels["C0ALERTS"] = {"name": "alerts", "is_member": False}
    result = run_doctor({**env, "VEEAM_SA_ALERT_CHANNEL": "C0ALERTS"})

    assert result.code == 0, result.out
    line = result.passed("alert channel")
    assert "#alerts" in line and "not a member" in line and "chat:write.public" in line


def test_private_alert_channel_without_membership_fails(
    run_doctor, env, slack: SlackDouble
) -> None:
    slack.channels["G0SECRET"] = {"name": "secret-ops", "is_member": False}
    result = run_doctor({**env, "VEEAM_SA_ALERT_CHANNEL": "G0SECRET"})

    assert result.code == 1
    assert "/invite @veeam-sa" in result.failed("alert channel")


def test_alert_channel_without_lookup_scope_is_not_a_failure(
    run_doctor, env, slack: SlackDouble
) -> None:
    slack.fail("conversations.info", error="missing_scope")
    result = run_doctor({**env, "VEEAM_SA_ALERT_CHANNEL": CHANNEL})

    assert result.code == 0, result.out
    assert "channels:read" in result.passed("alert channel")


def test_archived_alert_channel(run_doctor, env, slack: SlackDouble) -> None:
    slack.channels["C0OLD"] = {"name": "old", "is_archived": True}
    result = run_doctor({**env, "VEEAM_SA_ALERT_CHANNEL": "C0OLD"})

    assert result.code == 1
    assert "archived" in result.failed("alert channel")


# ------------------------------------------------------------------ Microsoft and the appliance


def test_microsoft_hosts_down(run_doctor, env, ms: MicrosoftDouble) -> None:
    ms.stop()
    result = run_doctor(env)

    assert result.code == 1
    for name in ("Microsoft sign-in", "Microsoft Graph", "Azure Resource Manager"):
        assert "check network/proxy/SSL_CERT_FILE" in result.failed(name)
    result.passed("Slack token")


def test_graph_on_a_closed_port(run_doctor, env) -> None:
    result = run_doctor({**env, "VEEAM_SA_GRAPH_URL": closed_port_url()})

    assert result.code == 1
    assert "cannot reach" in result.failed("Microsoft Graph")
    result.passed("Microsoft sign-in")
    result.passed("Azure Resource Manager")


def test_untrusted_certificate_points_at_ssl_cert_file(run_doctor, env, tmp_path: Path) -> None:
    other = TestCA()
    try:
        result = run_doctor({**env, "SSL_CERT_FILE": other.ca_pem_path})
    finally:
        other.close()

    assert result.code == 1
    line = result.failed("Microsoft sign-in")
    assert "not trusted" in line and "SSL_CERT_FILE" in line


def test_unknown_tenant(run_doctor, env) -> None:
    result = run_doctor({**env, "VEEAM_SA_TENANT": "nosuchtenant.example"})

    assert result.code == 1
    line = result.failed("Microsoft sign-in")
    assert "HTTP 400" in line and "VEEAM_SA_TENANT" in line


def test_appliance_unreachable(run_doctor, env) -> None:
    env = {**env, "VEEAM_URL": closed_port_url(), "VEEAM_USERNAME": "u", "VEEAM_PASSWORD": "p-77"}
    result = run_doctor(env)

    assert result.code == 1
    assert "cannot reach" in result.failed("Veeam appliance")
    assert_no_secrets(result, env)


# ------------------------------------------------------------------ database and key


def test_missing_database_and_key_are_not_created(run_doctor, env) -> None:
    env = {k: v for k, v in env.items() if k != "VEEAM_SA_ENCRYPTION_KEY"}
    db_path = Path(env["VEEAM_SA_DB"])
    result = run_doctor(env)

    assert result.code == 0, result.out
    assert "created on first start" in result.passed("database")
    assert "generated on first start" in result.passed("encryption key")
    assert not db_path.exists()
    assert not key_file_for(db_path).exists()


def test_existing_database_with_its_key(run_doctor, env) -> None:
    seed_secret(Path(env["VEEAM_SA_DB"]), env["VEEAM_SA_ENCRYPTION_KEY"])
    result = run_doctor(env)

    assert result.code == 0, result.out
    assert "schema is current" in result.passed("database")
    assert "decrypts the stored secrets" in result.passed("encryption key")


def test_wrong_key_is_caught(run_doctor, env) -> None:
    seed_secret(Path(env["VEEAM_SA_DB"]), Fernet.generate_key().decode())
    result = run_doctor(env)

    assert result.code == 1
    assert "does not decrypt" in result.failed("encryption key")
    assert_no_secrets(result, env)


def test_secrets_without_a_key_file(run_doctor, env) -> None:
    db_path = Path(env["VEEAM_SA_DB"])
    seed_secret(db_path, Fernet.generate_key().decode())
    env = {k: v for k, v in env.items() if k != "VEEAM_SA_ENCRYPTION_KEY"}
    result = run_doctor(env)

    assert result.code == 1
    line = result.failed("encryption key")
    assert "no key file" in line and "1 encrypted value" in line
    assert not key_file_for(db_path).exists()


def test_key_file_is_used_and_its_mode_checked(run_doctor, env) -> None:
    db_path = Path(env["VEEAM_SA_DB"])
    env = {k: v for k, v in env.items() if k != "VEEAM_SA_ENCRYPTION_KEY"}
    _cipher, key_file = load_or_create_key(db_path, None)
    assert key_file is not None
    seed_secret(db_path, key_file.read_text().strip())

    result = run_doctor(env)
    assert result.code == 0, result.out
    assert str(key_file) in result.passed("encryption key")

    key_file.chmod(0o644)
    result = run_doctor(env)
    assert result.code == 1
    assert "chmod 600" in result.failed("encryption key")
    assert key_file.read_text().strip() not in result.out


def test_pending_migration_is_reported_not_applied(run_doctor, env) -> None:
    db_path = Path(env["VEEAM_SA_DB"])
    store = open_store(db_path)
    last = store.db.execute(
        "SELECT name FROM _sqlite_migrations ORDER BY rowid DESC LIMIT 1"
    ).fetchone()[0]
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = ?", [last])
    store.db.conn.commit()
    store.close()

    result = run_doctor(env)
    assert result.code == 0, result.out
    line = result.passed("database")
    assert "pending" in line and last in line
    store = Store(db_path)  # the doctor left the schema as it was
    assert not store.schema_current()
    store.close()


def test_database_from_a_newer_version(run_doctor, env) -> None:
    store = open_store(Path(env["VEEAM_SA_DB"]))
    store.db["_sqlite_migrations"].insert(
        {"migration_set": "veeam-sa", "name": "m999_future", "applied_at": "2030-01-01"}
    )
    store.close()

    result = run_doctor(env)
    assert result.code == 1
    assert "m999_future" in result.failed("database")


def test_database_file_is_not_sqlite(run_doctor, env) -> None:
    Path(env["VEEAM_SA_DB"]).write_bytes(b"this is not a database" * 100)
    result = run_doctor(env)

    assert result.code == 1
    assert "cannot read" in result.failed("database")


# ------------------------------------------------------------------ exit statuses


def test_configuration_error_exits_2_with_one_line(run_doctor, env) -> None:
    env = {k: v for k, v in env.items() if k != "VEEAM_SA_ADMINS"}
    result = run_doctor(env)

    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("veeam-sa-bot: VEEAM_SA_ADMINS is not set")
    assert BOT_TOKEN not in result.err and SIGNING_SECRET not in result.err


def test_python_m_bot_doctor(env, slack: SlackDouble, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "doctor"],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("✓ configuration:")
    assert BOT_TOKEN not in proc.stdout and SIGNING_SECRET not in proc.stdout
    assert env["VEEAM_SA_ENCRYPTION_KEY"] not in proc.stdout


def test_ascii_terminal_gets_ascii_marks() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii")
    doctor._emit("✗ Slack token: no — fix it (xoxb-…)", out)
    out.flush()
    assert raw.getvalue().decode() == "FAIL Slack token: no - fix it (xoxb-...)\n"
