"""Certificate credentials for the Microsoft double: Graph `keyCredentials` and the signed
JWTs Entra checks against them (client assertions, key-rolling proofs).

Sources, each rule below cites one:
- Graph `keyCredential` resource: `type` `AsymmetricX509Cert` (usage `Verify`) or
  `X509CertAndPassword` (usage `Sign`); `key` is the certificate's raw data, base64.
  (learn.microsoft.com/graph/api/resources/keycredential)
- `application: addKey` / `removeKey`: a proof of possession of an existing valid
  certificate is verified; an application without one cannot use them (use Update
  application instead). (learn.microsoft.com/graph/api/application-addkey, -removekey)
- "Generate proof of possession tokens for rolling keys": signed with the private key of
  one of the application's existing valid certificates; `aud`
  00000003-0000-0000-c000-000000000000, `iss` the application's object id (not the appId),
  `nbf`, and `exp` at most `nbf` + 10 minutes. (learn.microsoft.com/graph/application-rollkey-prooftoken)
- "Microsoft identity platform application authentication certificate credentials": the
  client assertion is a JWT with `alg` RS256 and `x5t` (SHA-1 thumbprint, base64url) or PS256
  and `x5t#S256`; claims `aud` = the token endpoint, `iss` = `sub` = the client id, `jti`,
  `exp`, `nbf`; sent as `client_assertion` with `client_assertion_type`
  `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
  (learn.microsoft.com/entra/identity-platform/certificate-credentials)
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
PROOF_MAX_LIFETIME = 600  # seconds: "exp" at most "nbf" + 10 minutes
CLOCK_SKEW = 300


@dataclass
class KeyCred:
    key_id: str
    display_name: str | None
    type: str
    usage: str
    der: bytes
    start: float
    end: float
    pending_rejections: int = 0  # new_secret_delay: client assertions still refused

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    @property
    def sha1(self) -> bytes:
        return self.cert.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is SHA-1 by definition

    @property
    def sha256(self) -> bytes:
        return self.cert.fingerprint(hashes.SHA256())

    def valid_at(self, now: float) -> bool:
        return self.start <= now < self.end


class Refused(Exception):
    """A key credential or a signed token the service would refuse; `args[0]` says why."""


def _b64url_decode(part: str, padded: bool = False) -> bytes:
    """base64url; a JWS part carries no padding (RFC 7515 §2), a thumbprint may (MSAL pads
    its `x5t`, and Entra takes it)."""
    if padded and isinstance(part, str):
        part = part.rstrip("=")
    if not isinstance(part, str) or not part or any(c in part for c in "=+/ '\""):
        raise Refused("malformed")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise Refused("malformed") from None


def parse_key_credential(cred: Any, now: float) -> KeyCred:
    """A `keyCredential` from a request body, checked as Graph checks it."""
    if not isinstance(cred, dict):
        raise Refused("keyCredential must be an object")
    kind, usage = cred.get("type"), cred.get("usage")
    if kind != "AsymmetricX509Cert" or usage != "Verify":
        # X509CertAndPassword/Sign is for token signing, never a sign-in credential.
        raise Refused(f"unsupported key type '{kind}' with usage '{usage}'")
    try:
        der = base64.b64decode(str(cred.get("key") or ""), validate=True)
        cert = x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        raise Refused("key is not a base64 DER X.509 certificate") from None
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    for name in ("startDateTime", "endDateTime"):
        given = cred.get(name)
        if given:
            try:
                at = datetime.fromisoformat(str(given).replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise Refused(f"invalid {name}") from None
            # The dates must lie within the certificate's own validity.
            if (name == "startDateTime" and at < start - 1) or (
                name == "endDateTime" and at > end + 1
            ):
                raise Refused(f"{name} is outside the certificate's validity")
            if name == "endDateTime":
                end = min(end, at)
            else:
                start = max(start, at)
    if end <= now:
        raise Refused("the certificate has expired")
    key_id = str(cred.get("keyId") or uuid.uuid4())
    try:
        uuid.UUID(key_id)
    except ValueError:
        raise Refused("keyId must be a GUID") from None
    return KeyCred(key_id, cred.get("displayName"), kind, usage, der, start, end)


def key_json(k: KeyCred, with_key: bool = False) -> dict:
    def iso(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {
        "customKeyIdentifier": base64.b64encode(k.sha1).decode(),
        "displayName": k.display_name,
        "endDateTime": iso(k.end),
        "key": base64.b64encode(k.der).decode() if with_key else None,
        "keyId": k.key_id,
        "startDateTime": iso(k.start),
        "type": k.type,
        "usage": k.usage,
    }


def verify_jwt(token: Any, keys: list[KeyCred], now: float) -> tuple[dict, dict, KeyCred]:
    """Header, claims and the key that signed `token` (a compact JWS, RS256 with `x5t` or
    PS256 with `x5t#S256`), whose signature really verifies against that certificate."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise Refused("malformed")
    head_b64, body_b64, sig_b64 = token.split(".")
    try:
        header = json.loads(_b64url_decode(head_b64))
        claims = json.loads(_b64url_decode(body_b64))
    except ValueError:
        raise Refused("malformed") from None
    signature = _b64url_decode(sig_b64)
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Refused("malformed")
    alg = header.get("alg")
    if alg == "RS256" and header.get("x5t"):
        thumb, attr = _b64url_decode(str(header["x5t"]), padded=True), "sha1"
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
    elif alg == "PS256" and header.get("x5t#S256"):
        thumb, attr = _b64url_decode(str(header["x5t#S256"]), padded=True), "sha256"
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    else:
        raise Refused("unsupported alg or no thumbprint")
    key = next((k for k in keys if getattr(k, attr) == thumb), None)
    if key is None:
        raise Refused("unknown certificate")
    if not key.valid_at(now):
        raise Refused("certificate expired")
    public = key.cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise Refused("not an RSA certificate")
    try:
        public.verify(signature, f"{head_b64}.{body_b64}".encode(), pad, hashes.SHA256())
    except InvalidSignature:
        raise Refused("bad signature") from None
    return header, claims, key


def check_proof(token: Any, app_object_id: str, keys: list[KeyCred], now: float) -> KeyCred:
    """The proof of possession `addKey` / `removeKey` ask for."""
    valid = [k for k in keys if k.valid_at(now)]
    if not valid:
        raise Refused("the application has no valid certificate to prove possession of")
    _, claims, key = verify_jwt(token, valid, now)
    if claims.get("aud") != GRAPH_APP_ID:
        raise Refused("wrong audience")
    if str(claims.get("iss", "")).lower() != app_object_id.lower():
        raise Refused("issuer is not the application's object id")
    nbf, exp = claims.get("nbf"), claims.get("exp")
    if not isinstance(nbf, int | float) or not isinstance(exp, int | float):
        raise Refused("nbf and exp are required")
    if exp - nbf > PROOF_MAX_LIFETIME:
        raise Refused("lifetime over 10 minutes")
    if nbf > now + CLOCK_SKEW or exp <= now:
        raise Refused("expired or not yet valid")
    return key


def check_assertion(
    token: Any, client_id: str, token_endpoint: str, keys: list[KeyCred], now: float
) -> tuple[int, KeyCred | None]:
    """(0, key) for a good client assertion, else (AADSTS code, None)."""
    try:
        _, claims, key = verify_jwt(token, keys, now)
    except Refused as exc:
        reason = str(exc)
        return (50027 if reason == "malformed" else 700027), None
    if claims.get("aud") != token_endpoint:
        return 50027, None  # audience is not this token endpoint: the token is invalid
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return 700021, None
    exp, nbf = claims.get("exp"), claims.get("nbf", now)
    if not isinstance(exp, int | float) or exp <= now - CLOCK_SKEW or nbf > now + CLOCK_SKEW:
        return 700024, None
    if not claims.get("jti"):
        return 50027, None
    return 0, key
