"""Operator commands on the host: `init`, `scan`, `audit`, `rotate-key`, `secret show`.

Each returns an exit status; problems are one line on stderr.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from bot.core.certs import Certificate, new_password
from bot.core.config import Config, load_config
from bot.core.crypto import (
    Cipher,
    key_file_for,
    load_or_create_key,
    new_key,
    read_key_file,
    split_keys,
    write_key_file,
)
from bot.core.errors import ConfigError, StorageError, VeeamSAError
from bot.core.logs import register_secret_value
from storage import queries
from storage.db import Store, open_store
from storage.keys import (
    DatabaseMissing,
    KeyMismatch,
    check_database_present,
    fingerprint,
    open_bound,
    record,
    verify,
)


def _out(text: str, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout)


def _err(text: str) -> None:
    print(f"veeam-sa-bot: {text}", file=sys.stderr)


def operator_command(fn: Callable[..., int]) -> Callable[..., int]:
    """Load the configuration and open the database for `fn(config, store, ...)`; a bad
    setting exits 2 and an unusable database 1, each with one line on stderr. A database
    lost beside its key file is not re-created (`init` does that)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> int:
        try:
            config = load_config()
            check_database_present(config)
            store = open_store(config.db_path)
        except ConfigError as exc:
            _err(str(exc))
            return 2
        except (StorageError, DatabaseMissing) as exc:
            _err(str(exc))
            return 1
        try:
            return fn(config, store, *args, **kwargs)
        except (StorageError, KeyMismatch) as exc:
            _err(str(exc))
            return 1
        finally:
            store.close()

    return run


def _host_actor() -> str:
    try:
        return f"host:{getpass.getuser()}"
    except (KeyError, OSError):
        return "host"


def init_database() -> int:
    """Create an empty database beside the existing key (after the database was lost and
    there is no backup), bound to that key; audited. A database already there is left as
    it is."""
    try:
        config = load_config()
    except ConfigError as exc:
        _err(str(exc))
        return 2
    if config.db_path.exists():
        _err(f"the database {config.db_path} already exists; nothing was changed")
        return 1
    try:
        bound = open_bound(config, allow_new_database=True, actor=_host_actor())
    except ConfigError as exc:
        _err(str(exc))
        return 2
    except VeeamSAError as exc:
        _err(str(exc))
        return 1
    bound.store.close()
    _out(
        f"created an empty database {config.db_path} for the key in {bound.source} "
        f"(fingerprint {fingerprint(bound.keys[0])})"
    )
    return 0


@operator_command
def scan(config: Config, store: Store, dry_run: bool) -> int:
    from bot.flows import expiry
    from bot.slack.client import make_web_client

    now = datetime.now(UTC)
    if dry_run:
        due = expiry.decide(store, config, now)
    else:
        result = expiry.scan(store, make_web_client(config), config, now)
        due = result.due
    for item in due:
        label = "expired" if item.threshold == 0 else f"{item.threshold}-day warning"
        _out(
            f"{'would post' if dry_run else 'due'}: {item.account['name']} — {label}, "
            f"expires {item.end_at.isoformat(timespec='minutes')} — to {item.channel}"
        )
    if dry_run:
        _out(f"{len(due)} warning(s) due; nothing posted (--dry-run)")
    else:
        _out(
            f"{len(due)} warning(s) due; posted {result.posted} message(s) "
            f"({result.digests} digest(s)); {result.failed} failed"
        )
        return 1 if result.failed else 0
    return 0


@operator_command
def audit(
    config: Config, store: Store, account: str | None, since: str | None, as_json: bool
) -> int:
    if since is not None:
        try:
            since = datetime.fromisoformat(since).astimezone(UTC).isoformat(timespec="seconds")
        except ValueError:
            _err(
                f"--since wants an ISO date or time such as 2026-11-30 or 2026-11-30T08:00 (got {since!r})"
            )
            return 2
    for row in queries.audit_rows(store.db, target=account, since=since):
        if as_json:
            row = dict(row)
            row["detail"] = json.loads(row.get("detail") or "{}")
            _out(json.dumps(row, sort_keys=True))
        else:
            _out(
                f"{row['at']}  {row['actor']:<12} {row['action']:<24} {row['target'] or '-':<24} "
                f"{row['outcome']}  {row['detail']}"
            )
    return 0


@operator_command
def rotate_key(config: Config, store: Store) -> int:
    """Re-encrypt every stored secret and device code under a new key, and record in the
    database that only the new key is needed."""
    verify(store, config)
    if config.encryption_key is not None:
        keys = split_keys(config.encryption_key)
        if len(keys) < 2:
            _err(
                "VEEAM_SA_ENCRYPTION_KEY holds one key: to rotate, set it to NEW,OLD (a new key first, "
                f"e.g. {new_key()[:6]}… from `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`), restart the bot, run rotate-key, then set it to NEW"
            )
            return 2
        cipher = Cipher(*keys)
        count = _rewrap(store, cipher)
        record(store, keys, replace=True)
        _out(
            f"re-encrypted {count} value(s) under the first key; now set VEEAM_SA_ENCRYPTION_KEY to that key alone"
        )
        return 0
    path = key_file_for(config.db_path)
    if not path.exists():
        load_or_create_key(config.db_path, None)
        record(store, read_key_file(path), replace=True)
        _out(f"no key yet: generated {path}")
        return 0
    old = read_key_file(path)
    fresh = new_key()
    write_key_file(path, [fresh, *old])  # readers can decrypt both while we rewrap
    count = _rewrap(store, Cipher(fresh, *old))
    record(store, [fresh], replace=True)
    write_key_file(path, [fresh])
    _out(f"re-encrypted {count} value(s) under a new key in {path}; the old key is gone")
    queries.add_audit(
        store.db,
        actor=_host_actor(),
        action="key.rotated",
        outcome="ok",
        detail={"values": count},
    )
    return 0


def _rewrap(store: Store, cipher: Cipher) -> int:
    return queries.rewrap_encrypted(store.db, cipher.rotate)


@operator_command
def secret_show(
    config: Config,
    store: Store,
    name: str,
    yes: bool,
    stdin: TextIO | None = None,
    out: str | None = None,
) -> int:
    """Print an account's current secret after a confirmation; leaves an audit row. A
    certificate account's key and certificate are written to `out` as a PKCS#12 file (owner
    read/write only) under a new password, printed once and kept nowhere."""
    try:
        found = verify(store, config)
    except ConfigError as exc:
        _err(str(exc))
        return 2
    if found is None:
        _err(f"the bot holds no secret for {name!r} (there is no key yet)")
        return 1
    cipher = Cipher(*found[0])
    account = queries.get_account(store.db, name)
    if account is None:
        _err(f"there is no managed service account {name!r}")
        return 1
    secrets = queries.active_secrets(store.db, account["id"])
    if not secrets or not secrets[-1].get("ciphertext"):
        _err(f"the bot holds no secret for {name!r}")
        return 1
    certificate = secrets[-1].get("kind") == "certificate"
    if certificate and not out:
        _err(
            f"{name!r} signs in with a certificate: name the file for it, "
            f"e.g. `veeam-sa-bot secret show {name} --out {name}.pfx`"
        )
        return 2
    if out and not certificate:
        _err(f"{name!r} signs in with a client secret; --out is for certificate accounts")
        return 2
    if out and os.path.lexists(out):
        _err(f"{out} exists already; name a new file (nothing was written)")
        return 2
    what = "the certificate and private key" if certificate else "the client secret"
    if not yes:
        print(
            f"This prints {what} of {account['name']}. Type the name to confirm: ",
            end="",
            file=sys.stderr,
        )
        answer = (stdin or sys.stdin).readline().strip()
        if answer != account["name"]:
            queries.add_audit(
                store.db,
                actor=_host_actor(),
                action="secret.show",
                target=account["name"],
                outcome="declined",
            )
            _err("not confirmed; nothing shown")
            return 1
    secret = secrets[-1]
    if certificate:
        assert out is not None
        return _write_pfx(store, account, secret, cipher, out)
    value = cipher.decrypt(secret["ciphertext"])
    queries.add_audit(
        store.db,
        actor=_host_actor(),
        action="secret.show",
        target=account["name"],
        outcome="shown",
        detail={"key_id": secret["key_id"]},
    )
    _out(value)
    return 0


def _write_pfx(
    store: Store, account: dict[str, Any], row: dict[str, Any], cipher: Cipher, out: str
) -> int:
    """Write the certificate account's PKCS#12 file (mode 0600) and print its password."""
    cert = Certificate.load(cipher.decrypt(row["ciphertext"]))
    password = register_secret_value(new_password())
    blob = cert.pkcs12(f"{account['name']}-{cert.hint}.pfx", password)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        _err(f"cannot create {out}: {exc.strerror}")
        return 1
    with os.fdopen(fd, "wb") as handle:
        handle.write(blob)
    queries.add_audit(
        store.db,
        actor=_host_actor(),
        action="secret.show",
        target=account["name"],
        outcome="written",
        detail={"key_id": row["key_id"], "thumbprint": cert.thumbprint, "path": str(out)},
    )
    _err(
        f"wrote {out} (PKCS#12, certificate thumbprint {cert.thumbprint}, expires "
        f"{row['end_at']}); its password, shown this once:"
    )
    _out(password)
    return 0
@operator_command
def check(config: Config, store: Store, name: str | None) -> int:
    """Run the health check now (all accounts, or the one named), without spreading it;
    posts and edits drift alerts like the scheduled check. Exit 1 when something drifts."""
    from bot.flows.root import build_services
    from bot.slack.client import make_web_client

    try:
        found = verify(store, config)
    except ConfigError as exc:
        _err(str(exc))
        return 2
    if name is not None and queries.get_account(store.db, name) is None:
        _err(f"there is no managed service account {name!r}")
        return 1
    if found is None:
        _err("the bot holds no secrets yet (there is no key): nothing to check")
        return 1
    services = build_services(
        config, store=store, cipher=Cipher(*found[0]), slack=make_web_client(config)
    )
    try:
        result = services.health.run(name=name)
    finally:
        services.workers.shutdown(wait=False)
        services.notifier.close()
        services.http.close()
    for line in result.lines:
        _out(line)
    states = ", ".join(f"{count} {state}" for state, count in result.states.items())
    _out(
        f"{result.checked} account(s) checked ({states}); {result.alerted} alert(s) posted, "
        f"{result.cleared} cleared; {result.requests} request(s) to Microsoft"
    )
    return 1 if result.states.get("drift") else 0
