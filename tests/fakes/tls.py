"""A throw-away certificate authority for HTTPS test doubles.

Nothing here reads ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``:
the client context trusts the test CA and nothing else, so a test passes or fails
the same way whatever the machine's CA environment says.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import weakref

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
