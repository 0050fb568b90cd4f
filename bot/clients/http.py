"""The one HTTPS client for Microsoft (sign-in, Graph, ARM) and the appliance."""

from __future__ import annotations

import httpx

from bot.core.config import Config


def make_http_client(config: Config) -> httpx.Client:
    """Verified TLS (the configured CA bundle), timeouts, a bounded connection pool."""
    return httpx.Client(
        verify=config.ssl_context(),
        timeout=httpx.Timeout(20.0, connect=10.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        trust_env=True,  # HTTPS_PROXY / NO_PROXY; the CA bundle still comes from `verify`
    )
