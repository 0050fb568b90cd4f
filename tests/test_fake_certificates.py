"""The Microsoft double's certificate rules fire: keyCredentials, addKey / removeKey with a
proof of possession, and client assertions whose RS256 signature is really verified
against the uploaded certificate (rules and sources in tests/fakes/keycreds.py)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import msal
import pytest

from bot.clients.signin import DiscoveryCache
from bot.core.certs import new_certificate
from tests.fakes.microsoft import DEFAULT_TENANT_ID, MicrosoftDouble
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble
from tests.test_fake_microsoft import bearer, create_app, create_sp
from tests.test_fake_vbazure import body, check


@pytest.fixture(autouse=True)
def _no_ca_environment(monkeypatch):
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def dbl(ca):
    with MicrosoftDouble(ca) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def http(ca):
    with ca.httpx_client(timeout=10) as client:
        yield client


def now() -> datetime:
    return datetime.now(UTC)


#: One key pair for the whole module: RSA key generation is the slow part.
CERT = new_certificate("veeam-sa test", now(), timedelta(days=30))
OTHER = new_certificate("veeam-sa other", now(), timedelta(days=30))


def _app_with_cert(http, dbl, token, cert=CERT):
    app = create_app(http, dbl, token)
    create_sp(http, dbl, token, app["appId"])
    r = http.patch(
        f"{dbl.graph_url}/v1.0/applications/{app['id']}",
        headers=bearer(token),
        json={"keyCredentials": [cert.key_credential("first")]},
    )
    assert r.status_code == 204, r.text
    return app


def _assertion_login(ca, dbl, app_id, cert, http_client):
    cca = msal.ConfidentialClientApplication(
        app_id,
        client_credential={"private_key": cert.key_pem, "thumbprint": cert.thumbprint},
        authority=f"{dbl.authority_host}/{DEFAULT_TENANT_ID}",
        instance_discovery=False,
        http_client=http_client,
    )
    return cca.acquire_token_for_client([f"{dbl.arm_url}/.default"])


def test_a_client_assertion_is_verified_against_the_uploaded_certificate(dbl, ca, http):
    token = dbl.token_for()
    app = _app_with_cert(http, dbl, token)
    got = http.get(f"{dbl.graph_url}/v1.0/applications/{app['id']}", headers=bearer(token)).json()
    [key] = got["keyCredentials"]
    assert key["type"] == "AsymmetricX509Cert" and key["usage"] == "Verify"

    # MSAL over a bare httpx.Client sends the assertion as the text "b'eyJ…'": refused
    with ca.httpx_client(timeout=10) as raw:
        result = _assertion_login(ca, dbl, app["appId"], CERT, raw)
    assert result.get("error_codes") == [50027], result
    # the client the bot hands MSAL sends the JWT itself
    with ca.httpx_client(timeout=10) as raw:
        result = _assertion_login(ca, dbl, app["appId"], CERT, DiscoveryCache(raw))
    assert "access_token" in result, result
    assert [c.key_id for c in dbl.client_logins] == [key["keyId"]]

    # another key claiming the same thumbprint: the signature does not verify
    forged = type(CERT)(key_pem=OTHER.key_pem, cert_pem=CERT.cert_pem)
    with ca.httpx_client(timeout=10) as raw:
        result = _assertion_login(ca, dbl, app["appId"], forged, DiscoveryCache(raw))
    assert result.get("error_codes") == [700027], result
    # a certificate the application does not hold
    with ca.httpx_client(timeout=10) as raw:
        result = _assertion_login(ca, dbl, app["appId"], OTHER, DiscoveryCache(raw))
    assert result.get("error_codes") == [700027], result

    # a hand-made assertion for another audience, or another client, or expired
    endpoint = f"{dbl.authority_host}/{DEFAULT_TENANT_ID}/oauth2/v2.0/token"

    def login(claims):
        base = {
            "aud": endpoint,
            "iss": app["appId"],
            "sub": app["appId"],
            "jti": "x",
            "nbf": int(dbl.now()),
            "exp": int(dbl.now()) + 600,
        }
        return http.post(
            endpoint,
            data={
                "grant_type": "client_credentials",
                "client_id": app["appId"],
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": CERT.sign_jwt({**base, **claims}),
                "scope": f"{dbl.arm_url}/.default",
            },
        ).json()

    assert "access_token" in login({})
    assert login({"aud": f"{dbl.authority_host}/common/oauth2/v2.0/token"})["error_codes"] == [
        50027
    ]
    assert login({"iss": "someone", "sub": "someone"})["error_codes"] == [700021]
    assert login({"exp": int(dbl.now()) - 3600})["error_codes"] == [700024]


def test_add_and_remove_key_need_a_proof_signed_by_a_current_certificate(dbl, http):
    token = dbl.token_for()
    app = create_app(http, dbl, token)
    url = f"{dbl.graph_url}/v1.0/applications/{app['id']}"
    new = OTHER.key_credential("second")

    # no certificate yet: addKey cannot be used
    r = http.post(
        url + "/addKey",
        headers=bearer(token),
        json={
            "keyCredential": new,
            "passwordCredential": None,
            "proof": CERT.proof_token(app["id"], now()),
        },
    )
    assert r.status_code == 400 and "no valid certificate" in r.json()["error"]["message"]

    _ = http.patch(url, headers=bearer(token), json={"keyCredentials": [CERT.key_credential("a")]})

    def add(proof):
        return http.post(
            url + "/addKey",
            headers=bearer(token),
            json={
                "keyCredential": new,
                "passwordCredential": None,
                "proof": proof,
            },
        )

    assert add(OTHER.proof_token(app["id"], now())).status_code == 400  # not a current cert
    assert add(CERT.proof_token(app["appId"], now())).status_code == 400  # iss is the appId
    stale = CERT.sign_jwt(
        {
            "aud": "00000003-0000-0000-c000-000000000000",
            "iss": app["id"],
            "nbf": int(dbl.now()),
            "exp": int(dbl.now()) + 3600,
        }
    )
    assert add(stale).status_code == 400  # longer than ten minutes
    old_aud = CERT.sign_jwt(
        {
            "aud": "00000002-0000-0000-c000-000000000000",
            "iss": app["id"],
            "nbf": int(dbl.now()),
            "exp": int(dbl.now()) + 600,
        }
    )
    assert add(old_aud).status_code == 400
    assert len(dbl.refused_proofs) == 5
    r = add(CERT.proof_token(app["id"], now()))
    assert r.status_code == 200, r.text
    added = r.json()["keyId"]
    keys = http.get(url, headers=bearer(token)).json()["keyCredentials"]
    assert len(keys) == 2

    first = next(k["keyId"] for k in keys if k["keyId"] != added)
    r = http.post(
        url + "/removeKey", headers=bearer(token), json={"keyId": first, "proof": "not-a-jwt"}
    )
    assert r.status_code == 400
    r = http.post(
        url + "/removeKey",
        headers=bearer(token),
        json={"keyId": first, "proof": OTHER.proof_token(app["id"], now())},
    )
    assert r.status_code == 204, r.text
    assert [k["keyId"] for k in http.get(url, headers=bearer(token)).json()["keyCredentials"]] == [
        added
    ]


def test_key_credentials_are_checked_and_capped_by_the_policy(dbl, http):
    token = dbl.token_for()
    app = create_app(http, dbl, token)
    url = f"{dbl.graph_url}/v1.0/applications/{app['id']}"

    def patch(cred):
        return http.patch(url, headers=bearer(token), json={"keyCredentials": [cred]})

    good = CERT.key_credential("a")
    assert patch({**good, "usage": "Sign"}).status_code == 400
    assert (
        patch({**good, "key": base64.b64encode(b"not a certificate").decode()}).status_code == 400
    )
    assert patch({**good, "endDateTime": "2999-01-01T00:00:00Z"}).status_code == 400
    dbl.tenants[DEFAULT_TENANT_ID].key_max_days = 7
    r = patch(good)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "CredentialInvalidLifetimeAsPerAppPolicy"
    dbl.tenants[DEFAULT_TENANT_ID].key_max_days = 60
    assert patch(good).status_code == 204


# --------------------------------------------------------------------------- the appliance


def test_the_appliance_double_takes_a_certificate_only_as_a_pkcs12_its_password_opens(
    ca,
) -> None:
    with VBAzureDouble(ca) as vb, ca.httpx_client(timeout=10) as client:
        token = client.post(
            f"{vb.url}/api/oauth2/token",
            data={
                "grant_type": "Password",
                "username": DEFAULT_USERNAME,
                "password": DEFAULT_PASSWORD,
            },
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        url = f"{vb.url}/api/v8.1/accounts/azure/service/saveByApp"
        pfx = base64.b64encode(CERT.pkcs12("prod.pfx", "right-password")).decode()

        def save(**login):
            sent = body()
            del sent["clientLoginParameters"]["clientSecret"]
            sent["clientLoginParameters"].update(login)
            return client.post(url, headers=auth, json=sent)

        good = {
            "applicationCertificate": pfx,
            "certificatePassword": "right-password",
            "applicationCertificateName": "prod.pfx",
        }
        for bad in (
            {**good, "certificatePassword": "wrong-password"},
            {**good, "applicationCertificate": base64.b64encode(b"junk").decode()},
            {**good, "applicationCertificateName": None},
            {**good, "clientSecret": "also-a-secret"},
            {**good, "certificateThumbprint": "AB"},  # not a ClientLoginParameters field
        ):
            r = save(**bad)
            assert r.status_code == 400, (bad.keys(), r.text)
            check("problem-details", r.json())
        assert vb.accounts == {}
        r = save(**good)
        assert r.status_code == 200, r.text
        [held] = vb.accounts.values()
        assert held["origin"] == "Imported Certificate"
        assert held["certificate"] == CERT.cert_pem
        listed = client.get(f"{vb.url}/api/v8.1/accounts/azure/service", headers=auth).json()
        [account] = listed["results"]
        check("azure-account", account)
        assert account["accountOrigin"] == "Imported Certificate"
        assert account["applicationCertificateName"] == "prod.pfx"
        assert "certificatePassword" not in json.dumps(account)
