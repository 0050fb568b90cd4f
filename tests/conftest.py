from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ambient_ca_bundles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests trust only what they configure: never this machine's CA bundle variables."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
