"""The doctor's local checks: the configuration, the database and its key."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from bot.core.config import Config
from bot.core.errors import ConfigError, StorageError
from bot.ops.doctor.result import Result

# ------------------------------------------------------------------ configuration


def _token(value: str | None) -> str:
    if value is None:
        return "(unset)"
    prefix, dash, _rest = value.partition("-")
    return f"{prefix}-…" if dash else "set"


def _secret(value: str | None) -> str:
    return "set" if value else "(unset)"


def _plain(value: object) -> str:
    return "(unset)" if value is None else str(value)


def _joined(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)


#: Config field -> (environment variable, how its value is shown). Secrets show only a
#: prefix or "set"; a field missing here is shown as "(not shown)" and fails a test.
SETTINGS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "slack_bot_token": ("SLACK_BOT_TOKEN", _token),
    "slack_app_token": ("SLACK_APP_TOKEN", _token),
    "slack_signing_secret": ("SLACK_SIGNING_SECRET", _secret),
    "slack_api_url": ("SLACK_API_URL", _plain),
    "port": ("PORT", _plain),
    "db_path": ("VEEAM_SA_DB", _plain),
    "encryption_key": ("VEEAM_SA_ENCRYPTION_KEY", _secret),
    "alert_channel": ("VEEAM_SA_ALERT_CHANNEL", _plain),
    "admins": ("VEEAM_SA_ADMINS", _joined),
    "cloud": ("VEEAM_SA_CLOUD", _plain),
    "authority_host": ("VEEAM_SA_AUTHORITY_HOST", _plain),
    "graph_url": ("VEEAM_SA_GRAPH_URL", _plain),
    "arm_url": ("VEEAM_SA_ARM_URL", _plain),
    "client_id": ("VEEAM_SA_CLIENT_ID", _plain),
    "tenant": ("VEEAM_SA_TENANT", _plain),
    "roles": ("VEEAM_SA_ROLES", lambda roles: ", ".join(r.name for r in roles)),
    "secret_days": ("VEEAM_SA_SECRET_DAYS", _plain),
    "credential": ("VEEAM_SA_CREDENTIAL", _plain),
    "warn_days": ("VEEAM_SA_WARN_DAYS", _joined),
    "veeam_url": ("VEEAM_URL", _plain),
    "veeam_username": ("VEEAM_USERNAME", _plain),
    "veeam_password": ("VEEAM_PASSWORD", _secret),
    "ssl_cert_file": ("SSL_CERT_FILE", lambda v: v or "(unset: system store)"),
    "allow_personal_accounts": (
        "VEEAM_SA_ALLOW_PERSONAL_ACCOUNTS",
        lambda v: "true" if v else "false",
    ),
    "workers": ("VEEAM_SA_WORKERS", _plain),
    "scan_minutes": ("VEEAM_SA_SCAN_MINUTES", _plain),
    "log_level": ("VEEAM_SA_LOG_LEVEL", _plain),
    "log_format": ("VEEAM_SA_LOG_FORMAT", _plain),
    "list_for_everyone": ("VEEAM_SA_LIST_FOR_EVERYONE", lambda v: "true" if v else "false"),
    "require_email_match": ("VEEAM_SA_REQUIRE_EMAIL_MATCH", lambda v: "true" if v else "false"),
    "veeam_api_version": ("VEEAM_API_VERSION", _plain),
    "veeam_purposes": ("VEEAM_PURPOSES", _joined),
    # VEEAM_SA_ROLES=builtin|least-privilege sets the mode; a list of roles sets `roles`.
    "role_mode": ("VEEAM_SA_ROLES (mode)", _plain),
    "permission_check_window_s": ("VEEAM_SA_PERMISSION_CHECK_SECONDS", _plain),
    "health_hours": ("VEEAM_SA_HEALTH_INTERVAL", _plain),
    "health_rate": ("VEEAM_SA_HEALTH_RATE", _plain),
}


def check_configuration(config: Config) -> Result:
    present = [f.name for f in fields(config)]
    details = []
    for attr in [a for a in SETTINGS if a in present] + [a for a in present if a not in SETTINGS]:
        name, show = SETTINGS.get(attr, (attr, lambda _v: "(not shown)"))
        details.append(f"{name} = {show(getattr(config, attr))}")
    mode = "Socket Mode" if config.socket_mode else "HTTP mode"
    return Result("configuration", True, f"loaded ({mode})", details=tuple(details))


# ------------------------------------------------------------------ database and key


@dataclass
class DatabaseState:
    exists: bool = False
    encrypted: int = 0  # stored values encrypted with the key
    sample: str | None = None  # one of them, to try the key on


def check_database(config: Config) -> tuple[Result, DatabaseState]:
    from sqlite_utils import Database

    from storage import queries
    from storage.db import Store
    from storage.migrations import LATEST, migrations

    path = config.db_path
    state = DatabaseState()
    if not path.exists():
        directory = path.parent
        if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
            return Result(
                "database",
                False,
                f"{path} does not exist and {directory} is not writable",
                f"let the bot's user write to {directory}, or set VEEAM_SA_DB",
            ), state
        return Result(
            "database", True, f"{path} does not exist yet; it is created on first start"
        ), state
    state.exists = True
    if not path.is_file():
        return Result(
            "database", False, f"{path} is not a file", "set VEEAM_SA_DB to a file path"
        ), state
    if not (os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)):
        return Result(
            "database",
            False,
            f"{path} (or its directory) is not readable and writable by this user",
            "run the doctor as the bot's user, or fix the file's owner and permissions",
        ), state

    # Read-only: the bot itself migrates on start, so a pending migration is not a failure.
    store = Store(path)
    try:
        db = store.db
        known = {m.name for m in migrations.pending(Database(memory=True))}
        applied = [m.name for m in migrations.applied(db)]
        pending = [m.name for m in migrations.pending(db)]
        current = store.schema_current()
        state.encrypted, state.sample = queries.count_encrypted(db)
    except sqlite3.Error as exc:
        return Result(
            "database",
            False,
            f"cannot read {path}: {exc}",
            "check it is the bot's SQLite database; restore it from a backup if it is damaged",
        ), state
    finally:
        store.close()

    unknown = [name for name in applied if name not in known]
    if unknown:
        return Result(
            "database",
            False,
            f"{path} was migrated by a newer veeam-sa ({', '.join(unknown)})",
            "run that version, or restore a backup taken before the upgrade",
        ), state
    held = f"{state.encrypted} encrypted value(s) stored"
    if current:
        return Result(
            "database", True, f"{path} opens; schema is current ({LATEST}); {held}"
        ), state
    return Result(
        "database",
        True,
        f"{path} opens; schema is behind ({len(pending)} migration(s) pending: "
        f"{', '.join(pending)}), applied on next start; {held}",
    ), state


def check_key(config: Config, database: DatabaseState) -> Result:
    from bot.core.crypto import Cipher, key_file_for, load_or_create_key

    key_file = key_file_for(config.db_path)
    if config.encryption_key is not None:
        source = "VEEAM_SA_ENCRYPTION_KEY"
        cipher = Cipher(config.encryption_key)
    elif not key_file.exists():
        if database.encrypted:
            return Result(
                "encryption key",
                False,
                f"no key file {key_file} yet the database holds {database.encrypted} encrypted "
                "value(s); a key generated on first start could not decrypt them",
                f"restore {key_file} from the backup taken with the database, "
                "or set VEEAM_SA_ENCRYPTION_KEY to the key it was written with",
            )
        return Result(
            "encryption key",
            True,
            f"no key file yet; one is generated on first start into {key_file} — back it up",
        )
    else:
        source = f"key file {key_file}"
        try:
            # The file exists, so this reads it (and checks its mode) and creates nothing.
            cipher, _created = load_or_create_key(config.db_path, None)
        except ConfigError as exc:
            return Result("encryption key", False, exc.problem, exc.fix or "")
        except OSError as exc:
            return Result(
                "encryption key",
                False,
                f"cannot read {key_file}: {exc.strerror or exc}",
                "run the doctor as the bot's user, or fix the file's owner",
            )
    if database.sample is None:
        return Result("encryption key", True, f"loaded from {source}")
    try:
        cipher.decrypt(database.sample)
    except StorageError:
        return Result(
            "encryption key",
            False,
            f"the key from {source} does not decrypt the stored secrets",
            "use the key the database was written with (VEEAM_SA_ENCRYPTION_KEY or its key file)",
        )
    return Result("encryption key", True, f"loaded from {source}; it decrypts the stored secrets")
