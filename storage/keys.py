"""The database and its encryption key belong together.

The database records the fingerprints of the keys its encrypted values (client secrets,
device codes) may be under (`meta.key_fingerprints`). On start:

- the configured key (`VEEAM_SA_ENCRYPTION_KEY` or the key file beside the database) must
  include every recorded fingerprint when the database holds encrypted values; if not —
  a replaced or missing key — start-up stops with one line naming the key expected, where
  it was looked for and how to restore it, and nothing is changed (no key is generated);
- a database without fingerprints (made before they were recorded) that holds encrypted
  values must decrypt one of them with the configured key;
- a missing database next to an existing key file means the database was lost (the key
  file is written after the database on first start): the bot does not create an empty
  one unless told to by `veeam-sa-bot init`, which leaves an audit row.

A fingerprint is the first 16 hex digits of SHA-256 over a fixed label and the key: it names
the key without revealing it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bot.core.config import Config
from bot.core.crypto import Cipher, key_file_for, new_key, read_key_file, split_keys, write_key_file
from bot.core.errors import StorageError
from bot.core.keys import ENV, DatabaseMissing, KeyMismatch, fingerprint
from storage import queries
from storage.db import Store, open_store

log = logging.getLogger(__name__)

@dataclass
class Bound:
    store: Store
    cipher: Cipher
    #: Where the key came from: the key file's path, or the environment variable's name.
    source: str
    created_database: bool
    generated_key: Path | None
    keys: list[str]


def _restore_hint(key_file: Path, configured: bool) -> str:
    if configured:
        return f"set {ENV} to that key (as backed up with the database)"
    return f"restore {key_file} from the backup made with the database (owner-only, chmod 600)"


def check_database_present(config: Config) -> None:
    """Raise `DatabaseMissing` when the database file is gone but its key file is there."""
    db_path = config.db_path
    key_file = key_file_for(db_path)
    if config.encryption_key is None and not db_path.exists() and key_file.exists():
        raise DatabaseMissing(
            f"the database {db_path} is missing, but its key file {key_file} is there, so the bot "
            "ran here before: restore the database from the backup made with that key, or run "
            "`veeam-sa-bot init` to start an empty one (every managed account would be "
            "forgotten); nothing was created"
        )


def _configured_keys(config: Config) -> tuple[list[str], str] | None:
    if config.encryption_key is not None:
        return split_keys(config.encryption_key), ENV
    key_file = key_file_for(config.db_path)
    if key_file.exists():
        return read_key_file(key_file), str(key_file)
    return None


def recorded_fingerprints(store: Store) -> list[str]:
    value = queries.get_meta(store.db, queries.META_KEY_FINGERPRINTS)
    return [f for f in (value or "").split(",") if f]


def verify(store: Store, config: Config) -> tuple[list[str], str] | None:
    """Check the configured key against the database; returns the keys and where they came
    from (None when no key exists yet and none is needed). Raises `KeyMismatch`."""
    key_file = key_file_for(config.db_path)
    configured = config.encryption_key is not None
    found = _configured_keys(config)
    recorded = recorded_fingerprints(store)
    sample = queries.encrypted_sample(store.db)
    where = ENV if configured else str(key_file)
    expected = (
        f"the key with fingerprint {', '.join(recorded)}" if recorded else "the key it was used with"
    )
    if found is None:
        if sample is None:
            return None
        raise KeyMismatch(
            f"the key file {key_file} is missing, but the database {config.db_path} holds values "
            f"encrypted under {expected}: {_restore_hint(key_file, configured)}, or set {ENV}; "
            "nothing was changed (no new key was generated)"
        )
    keys, where = found
    if sample is None:
        return keys, where
    have = {fingerprint(k) for k in keys}
    if recorded:
        matches = set(recorded) <= have
    else:
        try:
            Cipher(*keys).decrypt(sample)
            matches = True
        except StorageError:
            matches = False
    if not matches:
        got = ", ".join(sorted(have))
        raise KeyMismatch(
            f"the encryption key does not belong to the database {config.db_path}: it expects "
            f"{expected}, but the key in {where} has fingerprint {got}; "
            f"{_restore_hint(key_file, configured)} and start again; nothing was changed"
        )
    return keys, where


def record(store: Store, keys: list[str], *, replace: bool = False) -> None:
    """Record that values may now be encrypted under `keys[0]` (with `replace`, only under
    it: after every value was re-encrypted)."""
    first = fingerprint(keys[0])
    db = store.db
    with db.atomic():
        have = [] if replace else recorded_fingerprints(store)
        if queries.encrypted_sample(db) is None and not replace:
            have = []  # nothing is encrypted under the older keys: forget them
        if first not in have:
            have.append(first)
        queries.set_meta(db, queries.META_KEY_FINGERPRINTS, ",".join(have))


def open_bound(config: Config, *, allow_new_database: bool = False, actor: str = "system") -> Bound:
    """Open the database and its key together, or raise (`DatabaseMissing`, `KeyMismatch`,
    `ConfigError`, `StorageError`) having changed nothing."""
    if not allow_new_database:
        check_database_present(config)
    created = not config.db_path.exists()
    store = open_store(config.db_path)
    try:
        found = verify(store, config)
        generated: Path | None = None
        if found is None:
            # First start (or a database that holds nothing encrypted): a new key file,
            # written after the database so that a key file alone means the database was lost.
            key_file = key_file_for(config.db_path)
            key = new_key()
            key_file.parent.mkdir(parents=True, exist_ok=True)
            write_key_file(key_file, [key])
            log.warning(
                "%s is unset: generated a new encryption key in %s (readable only by its "
                "owner); back it up with the database",
                ENV,
                key_file,
            )
            found, generated = ([key], str(key_file)), key_file
        keys, source = found
        before = recorded_fingerprints(store)
        record(store, keys)
        if before and fingerprint(keys[0]) not in before and queries.encrypted_sample(store.db) is None:
            log.warning(
                "the database was used with another key (fingerprint %s) but holds nothing "
                "encrypted: it now belongs to the key in %s",
                ", ".join(before),
                source,
            )
        if created:
            queries.add_audit(
                store.db,
                actor=actor,
                action="database.created",
                outcome="ok",
                detail={"path": str(config.db_path), "key_fingerprint": fingerprint(keys[0])},
            )
        if config.encryption_key is None:
            key_file = key_file_for(config.db_path)
            cipher = Cipher(*keys, reload=lambda: read_key_file(key_file))
        else:
            cipher = Cipher(*keys)
    except BaseException:
        store.close()
        raise
    return Bound(store, cipher, source, created, generated, keys)
