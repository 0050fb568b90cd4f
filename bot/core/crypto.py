"""Encryption at rest for client secrets and device codes.

Fernet (AES-128-CBC with HMAC-SHA256) from the `cryptography` package. Keys come from
`VEEAM_SA_ENCRYPTION_KEY` (one key, or several separated by commas: the first encrypts,
all decrypt), or from `<database>.key`, generated on first start, one key per line,
readable only by its owner.

Key rotation (`veeam-sa-bot rotate-key`) without downtime: the new key is put first in the
key file, every stored value is re-encrypted under it in one transaction, then the old key
is dropped. A running bot that meets a value it cannot decrypt re-reads the key file once
and tries again, so it keeps reading through the rotation.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bot.core.errors import ConfigError, StorageError

log = logging.getLogger(__name__)


def split_keys(value: str) -> list[str]:
    return [k.strip() for k in value.replace("\n", ",").split(",") if k.strip()]


def validate_key(value: str) -> bool:
    keys = split_keys(value)
    if not keys:
        return False
    try:
        for key in keys:
            Fernet(key.encode())
    except (ValueError, TypeError):
        return False
    return True


def new_key() -> str:
    return Fernet.generate_key().decode()


class Cipher:
    """Encrypts and decrypts short strings; the first key encrypts, all keys decrypt."""

    def __init__(self, *keys: str, reload: Callable[[], list[str]] | None = None) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._reload = reload
        self._lock = threading.Lock()
        self._fernet = self._build(list(keys))

    @staticmethod
    def _build(keys: list[str]) -> MultiFernet:
        return MultiFernet([Fernet(k.encode()) for k in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            pass
        if self._reload is not None:  # the key may have been rotated under us
            with self._lock:
                try:
                    self._fernet = self._build(self._reload())
                    return self._fernet.decrypt(ciphertext.encode()).decode()
                except (InvalidToken, OSError, ValueError):
                    pass
        raise StorageError(
            "a stored secret cannot be decrypted with the configured key "
            "(VEEAM_SA_ENCRYPTION_KEY or the key file changed?)"
        )

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt under the first key (the value must decrypt under one of the keys)."""
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise StorageError(
                "a stored value cannot be decrypted with any configured key"
            ) from None


def key_file_for(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".key")


def read_key_file(path: Path) -> list[str]:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            "VEEAM_SA_ENCRYPTION_KEY",
            f"is unset and the key file {path} can be read by other users",
            f"run `chmod 600 {path}`",
        )
    keys = split_keys(path.read_text())
    if not keys or not validate_key(",".join(keys)):
        raise ConfigError("VEEAM_SA_ENCRYPTION_KEY", f"is unset and the key file {path} is corrupt")
    return keys


def write_key_file(path: Path, keys: list[str]) -> None:
    """Replace the key file atomically, owner-only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(keys) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_or_create_key(db_path: Path, configured: str | None) -> tuple[Cipher, Path | None]:
    """The cipher for this database, and the key file it generated (None when none was)."""
    if configured is not None:
        return Cipher(*split_keys(configured)), None
    path = key_file_for(db_path)
    if path.exists():
        return Cipher(*read_key_file(path), reload=lambda: read_key_file(path)), None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.warning(
        "VEEAM_SA_ENCRYPTION_KEY is unset: generated a new encryption key in %s "
        "(readable only by its owner); back it up with the database",
        path,
    )
    return Cipher(key, reload=lambda: read_key_file(path)), path
