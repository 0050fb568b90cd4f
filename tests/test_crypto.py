from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bot.core.crypto import Cipher, key_file_for, load_or_create_key
from bot.core.errors import ConfigError, StorageError


def test_round_trip_and_ciphertext_hides_plaintext() -> None:
    cipher = Cipher(Fernet.generate_key().decode())
    token = cipher.encrypt("Abc~secret-value")
    assert "Abc~secret-value" not in token
    assert cipher.decrypt(token) == "Abc~secret-value"


def test_wrong_key_is_a_storage_error_without_the_ciphertext() -> None:
    token = Cipher(Fernet.generate_key().decode()).encrypt("x")
    with pytest.raises(StorageError) as info:
        Cipher(Fernet.generate_key().decode()).decrypt(token)
    assert token not in str(info.value)


def test_key_file_is_generated_once_and_owner_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "data" / "veeam-sa.db"
    cipher, generated = load_or_create_key(db, None)
    assert generated == key_file_for(db)
    mode = stat.S_IMODE(generated.stat().st_mode)
    assert mode == 0o600
    assert "generated a new encryption key" in caplog.text
    again, generated_again = load_or_create_key(db, None)
    assert generated_again is None
    assert again.decrypt(cipher.encrypt("hello")) == "hello"


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "veeam-sa.db"
    _, path = load_or_create_key(db, None)
    assert path is not None
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_key(db, None)


def test_configured_key_wins_and_writes_no_file(tmp_path: Path) -> None:
    db = tmp_path / "veeam-sa.db"
    key = Fernet.generate_key().decode()
    cipher, generated = load_or_create_key(db, key)
    assert generated is None
    assert not key_file_for(db).exists()
    assert Cipher(key).decrypt(cipher.encrypt("v")) == "v"
