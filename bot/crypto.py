"""Encryption at rest for client secrets and device codes.

Fernet (AES-128-CBC with HMAC-SHA256) from the `cryptography` package. The key comes from
`VEEAM_SA_ENCRYPTION_KEY`, or is generated on first start into `<database>.key`, a file
only its owner can read. `Cipher` takes several keys so that a key rotation can read old
ciphertext while writing new.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bot.errors import ConfigError, StorageError

log = logging.getLogger(__name__)


def validate_key(key: str) -> bool:
    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        return False
    return True


class Cipher:
    """Encrypts and decrypts short strings; the first key encrypts, all keys decrypt."""

    def __init__(self, *keys: str) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise StorageError(
                "a stored secret cannot be decrypted with the configured key "
                "(VEEAM_SA_ENCRYPTION_KEY or the key file changed?)"
            ) from None


def key_file_for(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".key")


def load_or_create_key(db_path: Path, configured: str | None) -> tuple[Cipher, Path | None]:
    """The cipher for this database, and the key file it generated (None when none was)."""
    if configured is not None:
        return Cipher(configured), None
    path = key_file_for(db_path)
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                "VEEAM_SA_ENCRYPTION_KEY",
                f"is unset and the key file {path} can be read by other users",
                f"run `chmod 600 {path}`",
            )
        key = path.read_text().strip()
        if not validate_key(key):
            raise ConfigError(
                "VEEAM_SA_ENCRYPTION_KEY", f"is unset and the key file {path} is corrupt"
            )
        return Cipher(key), None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    log.warning(
        "VEEAM_SA_ENCRYPTION_KEY is unset: generated a new encryption key in %s "
        "(readable only by its owner); back it up with the database",
        path,
    )
    return Cipher(key), path
