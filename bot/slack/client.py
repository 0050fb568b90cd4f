"""The Slack Web API client, built from configuration (never at import time)."""

from __future__ import annotations

import http.client
import io
import socket
import threading
import urllib.request
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

import httpx
from slack_sdk import WebClient
from slack_sdk.errors import SlackRequestError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.core.config import Config
from bot.core.metrics import SlackRequestCounter

#: Connections kept open to the Slack API between calls.
KEEPALIVE_CONNECTIONS = 8


class KeepAliveWebClient(WebClient):
    """slack_sdk's `WebClient`, its calls sent over kept-alive HTTPS connections.

    slack_sdk sends every call with `urllib.request.urlopen`: a new TCP connection and TLS
    handshake each time (two round trips to Slack before the request itself) and a new
    urllib opener. This client sends the same request on a pool of open connections
    (`httpx.HTTPTransport`). Everything above the transport stays slack_sdk's: building
    the request, its retry handlers (429 `Retry-After`, connection errors, 5xx), parsing
    the answer. The seam is `_perform_urllib_http_request_internal(url, req)`, which answers
    `{"status", "headers", "body"}` and raises what `urlopen` raises: `HTTPError` for a
    3xx/4xx/5xx answer (body and headers readable), `URLError` when no answer came, and
    `TimeoutError` when an answer stopped coming (not retried: Slack may have acted on it).

    Proxies are found as urllib finds them (`HTTPS_PROXY` / `NO_PROXY`); the TLS context
    is the client's `ssl`. Redirects are not followed (Slack's Web API answers where it is
    asked): a 3xx is raised as `HTTPError` like a 4xx.
    """

    def __init__(self, *args: Any, keepalive: int = KEEPALIVE_CONNECTIONS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._keepalive = keepalive
        self._transports: dict[tuple[str, str], httpx.HTTPTransport] = {}
        self._transports_lock = threading.Lock()

    def _transport(self, url: str) -> httpx.HTTPTransport:
        parts = urlsplit(url)
        key = (parts.scheme.lower(), parts.hostname or "")
        with self._transports_lock:
            transport = self._transports.get(key)
            if transport is None:
                # Read once per scheme and host: urllib reads the whole environment each time.
                proxy = None
                if not urllib.request.proxy_bypass(key[1]):
                    proxy = urllib.request.getproxies().get(key[0])
                transport = httpx.HTTPTransport(
                    verify=self.ssl if self.ssl is not None else True,
                    limits=httpx.Limits(
                        max_connections=None, max_keepalive_connections=self._keepalive
                    ),
                    proxy=proxy,
                    # A request goes out as headers then body: without this, Nagle's
                    # algorithm holds the body until the server's delayed ACK (~40 ms).
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                )
                self._transports[key] = transport
            return transport

    def close(self) -> None:
        """Close the kept-alive connections."""
        with self._transports_lock:
            transports, self._transports = list(self._transports.values()), {}
        for transport in transports:
            transport.close()

    def _perform_urllib_http_request_internal(self, url: str, req: Any) -> dict[str, Any]:
        if not url.lower().startswith("http"):
            raise SlackRequestError(f"Invalid URL detected: {url}")
        headers = [(k, str(v)) for k, v in req.header_items()]
        data = req.data if isinstance(req.data, bytes) else b""
        timeout = httpx.Timeout(self.timeout).as_dict()
        request = httpx.Request(
            req.get_method(), url, headers=headers, content=data, extensions={"timeout": timeout}
        )
        response = self._send(request)
        message = http.client.HTTPMessage()
        for name, value in response.headers.multi_items():
            message[name] = value
        if response.status_code >= 300:
            raise HTTPError(
                url,
                response.status_code,
                response.reason_phrase,
                message,
                io.BytesIO(response.content),
            )
        if message.get_content_type() == "application/gzip":
            return {"status": response.status_code, "headers": message, "body": response.content}
        charset = message.get_content_charset() or "utf-8"
        body = response.content.decode(charset)
        return {"status": response.status_code, "headers": message, "body": body}

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._transport(str(request.url)).handle_request(request)
            try:
                response.read()
            finally:
                response.close()
        except httpx.ConnectTimeout as exc:
            raise URLError(f"ConnectTimeout: {exc}") from None
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"Slack did not answer in time ({exc})") from None
        except httpx.TransportError as exc:
            raise URLError(f"{type(exc).__name__}: {exc}") from None
        return response


def make_web_client(config: Config) -> KeepAliveWebClient:
    """A WebClient on `SLACK_API_URL` that waits out 429s (Retry-After) and retries blips,
    over kept-alive connections.

    The first retry handler only counts requests for `/metrics`: slack_sdk consults the
    handlers in order after every attempt, and it never asks for a retry itself.
    """
    return KeepAliveWebClient(
        token=config.slack_bot_token,
        base_url=config.slack_api_url,
        ssl=config.ssl_context(),
        timeout=15,
        retry_handlers=[
            SlackRequestCounter(),
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=5),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )
