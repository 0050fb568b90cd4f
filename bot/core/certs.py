"""Certificate credentials: the key pair, the self-signed certificate, the PKCS#12 file and
the signed tokens that go with them, all with `cryptography`.

A certificate account signs in with a client assertion (a JWT signed with its private key,
RFC 7523) instead of a client secret. The application holds only the public certificate
(Graph `keyCredentials`, `type: AsymmetricX509Cert`, `usage: Verify`, `key` = the DER
certificate in base64); the private key stays in the bot, encrypted at rest, and reaches
the VBAzure appliance only inside a password-protected PKCS#12 file whose password is made
fresh for each hand-off and never kept.

Rolling a certificate with Graph's `addKey` / `removeKey` needs a proof-of-possession token
signed with one of the application's current certificates (Microsoft Graph, "Generate proof
of possession tokens for rolling keys": `aud` is Microsoft Graph's app id
00000003-0000-0000-c000-000000000000, `iss` the application's object id, `exp` at most ten
minutes after `nbf`).
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

#: RSA modulus length of new keys (Entra accepts 2048 and longer).
KEY_BITS = 2048
#: Microsoft Graph's application id: the audience of a key-rolling proof token.
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
#: Longest lifetime Graph accepts for a proof token.
PROOF_LIFETIME = timedelta(minutes=10)
#: A certificate is valid from this long before it is made (clocks a little apart); its
#: credential on the application counts from when it was made, so that a lifetime policy
#: sees exactly the lifetime asked for.
BACKDATE = timedelta(minutes=5)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Certificate:
    """A private key and its self-signed certificate (both PEM)."""

    key_pem: str
    cert_pem: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def thumbprint(self) -> str:
        """SHA-1 thumbprint in upper-case hex, as the Entra admin center shows it."""
        return self.certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - x5t is SHA-1 by definition

    @property
    def thumbprint_s256(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex().upper()

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def hint(self) -> str:
        """What the bot shows of it: the start of the thumbprint."""
        return self.thumbprint[:8]

    def key_credential(self, display_name: str) -> dict[str, object]:
        """The Graph `keyCredential` that puts the public certificate on an application."""
        cert = self.certificate
        return {
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "key": base64.b64encode(self.der).decode(),
            "displayName": display_name,
            "startDateTime": (cert.not_valid_before_utc + BACKDATE)
            .isoformat()
            .replace("+00:00", "Z"),
            "endDateTime": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        }

    def dump(self) -> str:
        """What the encrypted store keeps (key and certificate, JSON)."""
        return json.dumps({"key": self.key_pem, "cert": self.cert_pem})

    @classmethod
    def load(cls, stored: str) -> Certificate:
        data = json.loads(stored)
        return cls(key_pem=str(data["key"]), cert_pem=str(data["cert"]))

    def _private_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.key_pem.encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    def sign_jwt(self, claims: dict[str, object]) -> str:
        """An RS256 JWT with `x5t` (SHA-1 thumbprint) and `kid` headers."""
        header = {
            "alg": "RS256",
            "typ": "JWT",
            "x5t": b64url(bytes.fromhex(self.thumbprint)),
            "kid": self.thumbprint,
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._private_key().sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return signing_input + "." + b64url(signature)

    def proof_token(self, app_object_id: str, now: datetime) -> str:
        """The proof of possession `addKey` and `removeKey` ask for."""
        nbf = int(now.timestamp())
        return self.sign_jwt(
            {
                "aud": GRAPH_APP_ID,
                "iss": app_object_id,
                "nbf": nbf,
                "exp": nbf + int(PROOF_LIFETIME.total_seconds()),
                "jti": str(uuid.uuid4()),
            }
        )

    def pkcs12(self, name: str, password: str) -> bytes:
        """The key and certificate as a PKCS#12 file protected by `password` (AES-256)."""
        return pkcs12.serialize_key_and_certificates(
            name.encode(),
            self._private_key(),
            self.certificate,
            None,
            serialization.BestAvailableEncryption(password.encode()),
        )


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def new_certificate(
    subject: str, now: datetime, lifetime: timedelta, key: rsa.RSAPrivateKey | None = None
) -> Certificate:
    """A certificate for `key` (a fresh RSA key when None), valid from a few minutes before
    `now` (clocks a little apart) until `now + lifetime`."""
    key = key or new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject[:64])])
    start = now.astimezone(UTC).replace(microsecond=0) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now.astimezone(UTC).replace(microsecond=0) + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
    )


def new_password() -> str:
    """A random PKCS#12 password (made for one hand-off, never stored)."""
    return secrets.token_urlsafe(24)
