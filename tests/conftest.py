from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.tls import TestCA
from tests.harness import Bot, bot_env
from tests.process import BotProcess


@pytest.fixture(autouse=True)
def _no_ambient_ca_bundles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests trust only what they configure: never this machine's CA bundle variables."""
    for name in (
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "SSL_CERT_DIR",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def ca() -> Iterator[TestCA]:
    authority = TestCA()
    yield authority
    authority.close()


@pytest.fixture
def ms(ca: TestCA) -> Iterator[MicrosoftDouble]:
    with MicrosoftDouble(ca) as dbl:
        dbl.device_interval = 1
        yield dbl


@pytest.fixture
def slack() -> Iterator[SlackDouble]:
    with SlackDouble() as dbl:
        yield dbl


@pytest.fixture
def env(slack: SlackDouble, ms: MicrosoftDouble, tmp_path: Path, ca: TestCA) -> dict[str, str]:
    return bot_env(slack, ms, tmp_path, ca.ca_pem_path)


@pytest.fixture
def bot(env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble) -> Iterator[Bot]:
    instance = Bot(env, slack, ms)
    yield instance
    instance.close()


@pytest.fixture
def procs() -> Iterator[list[BotProcess]]:
    """Bot processes a test starts; killed at the end whatever happened."""
    started: list[BotProcess] = []
    yield started
    for proc in started:
        proc.kill()
