"""A throw-away certificate authority for HTTPS test doubles.

Nothing here reads ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``:
the client context trusts the test CA and nothing else, so a test passes or fails
the same way whatever the machine's CA environment says.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import trustme

SERVER_IDENTITIES = ("127.0.0.1", "localhost", "::1")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class TestCA:
    """A private CA with one server certificate for the loopback names.

    - ``server_context()``: an ``ssl.SSLContext`` for servers on 127.0.0.1 / localhost / ::1.
    - ``client_context()``: an ``ssl.SSLContext`` that trusts only this CA.
    - ``ca_pem_path``: the CA certificate as a PEM file (for ``SSL_CERT_FILE`` in
      subprocess tests); removed by ``close()`` or when the object is collected.
    - ``httpx_client(**kw)``: ``httpx.Client(verify=client_context(), trust_env=False, **kw)``.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(*SERVER_IDENTITIES)
        self._pem_path: str | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM-encoded."""
        return self.ca.cert_pem.bytes()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.server_cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        # PROTOCOL_TLS_CLIENT verifies the chain and the host name by default and,
        # unlike ssl.create_default_context(), loads no system or environment CAs.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ca.configure_trust(ctx)
        return ctx

    @property
    def ca_pem_path(self) -> str:
        if self._pem_path is None:
            fd, path = tempfile.mkstemp(prefix="test-ca-", suffix=".pem")
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.cert_pem)
            self._pem_path = path
            self._finalizer = weakref.finalize(self, _remove_quietly, path)
        return self._pem_path

    def httpx_client(self, **kw) -> httpx.Client:
        kw.setdefault("verify", self.client_context())
        kw.setdefault("trust_env", False)
        return httpx.Client(**kw)

    def close(self) -> None:
        """Remove the PEM file written for ``ca_pem_path`` (if any)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._pem_path = None


class TLSHandler(BaseHTTPRequestHandler):
    """Hands every request to ``server.double._serve(handler)``; TLS handshake in the worker."""

    protocol_version = "HTTP/1.1"
    timeout = 60
    server: TLSServer

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request.do_handshake()  # in this worker thread, not the accept loop
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def parse_request(self) -> bool:
        #: When the request line arrived (before its headers are parsed): a double's
        #: `latency` runs from here.
        self.arrived = time.monotonic()
        return super().parse_request()

    def _dispatch(self) -> None:
        self.server.double._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class TLSServer(ThreadingHTTPServer):
    """An HTTPS server on 127.0.0.1 for a test double (``double`` has ``_serve``, ``lock``
    and ``internal_errors``), tracking open connections so a test can drop them."""

    daemon_threads = True
    #: The standard library's listen backlog is 5: a burst of concurrent clients (the bot's
    #: worker pool) would see connections reset, which Microsoft's front ends never do.
    request_queue_size = 1024

    def __init__(self, double: Any, ssl_context: ssl.SSLContext) -> None:
        self.double = double
        self.ssl_context = ssl_context
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), TLSHandler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except OSError:
            sock.close()
            raise
        with self._open_lock:
            self._open.add(tls)
        return tls, addr

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS failures and clients hanging up are the client's business; anything else is
        # a bug in the double and is kept for the test to see.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError | EOFError):
            return
        with self.double.lock:
            self.double.internal_errors.append(traceback.format_exc())

    def drop_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
