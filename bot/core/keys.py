"""The encryption key's name for itself: its fingerprint, and the errors of a key that does
not belong to its database. Binding the database to its key is `storage.keys`."""

from __future__ import annotations

import hashlib

from bot.core.errors import VeeamSAError

ENV = "VEEAM_SA_ENCRYPTION_KEY"


class KeyMismatch(VeeamSAError):
    """The key does not belong to the database (or is missing for it); nothing was changed."""


class DatabaseMissing(VeeamSAError):
    """The database is gone but its key file is there; nothing was created."""


def fingerprint(key: str) -> str:
    return hashlib.sha256(b"veeam-sa key fingerprint\n" + key.strip().encode()).hexdigest()[:16]
