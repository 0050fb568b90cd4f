"""The Microsoft double works with real clients: MSAL for sign-in, httpx for Graph and ARM."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import msal
import pytest

from tests.fakes.microsoft import (
    ALICE_UPN,
    APPLICATION_DEVELOPER,
    AZURE_CLI_CLIENT_ID,
    CONTRIBUTOR,
    DEFAULT_SUBSCRIPTIONS,
    DEFAULT_TENANT_ID,
    GLOBAL_ADMINISTRATOR,
    KEY_VAULT_CRYPTO_USER,
    MSA_TENANT_ID,
    OWNER,
    ROLE_ASSIGNMENT_WRITE,
    MicrosoftDouble,
    permissions_allow,
)
from tests.fakes.tls import TestCA

SUB1, SUB2 = (sid for sid, _ in DEFAULT_SUBSCRIPTIONS)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_ca_environment(monkeypatch):
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ca():
    test_ca = TestCA()
    yield test_ca
    test_ca.close()


@pytest.fixture
def dbl(ca):
    with MicrosoftDouble(ca) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def http(ca):
    with ca.httpx_client(timeout=10) as client:
        yield client


@pytest.fixture
def make_app(ca, dbl):
    """A fresh MSAL PublicClientApplication per call (MSAL caches 429/5xx per object)."""
    clients = []

    def make(tenant="organizations", client_id=AZURE_CLI_CLIENT_ID):
        client = ca.httpx_client(timeout=10)
        clients.append(client)
        return msal.PublicClientApplication(
            client_id,
            authority=f"{dbl.authority_host}/{tenant}",
            instance_discovery=False,
            http_client=client,
        )

    yield make
    for client in clients:
        client.close()


def poll(app, flow):
    """Exactly one poll, without MSAL's "Attempted too soon" warning."""
    flow.pop("latest_attempt_at", None)
    return app.acquire_token_by_device_flow(flow, exit_condition=lambda f: True)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def claims_of(jwt):
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def create_app(http, dbl, token, name="veeam-sa-test", **extra):
    r = http.post(
        f"{dbl.graph_url}/v1.0/applications",
        headers=bearer(token),
        json={"displayName": name, "signInAudience": "AzureADMyOrg", **extra},
    )
    assert r.status_code == 201, r.text
    return r.json()


def create_sp(http, dbl, token, app_id):
    r = http.post(
        f"{dbl.graph_url}/v1.0/servicePrincipals", headers=bearer(token), json={"appId": app_id}
    )
    assert r.status_code == 201, r.text
    return r.json()


def assign(
    http,
    dbl,
    token,
    sub,
    principal_id,
    role=CONTRIBUTOR,
    name=None,
    principal_type="ServicePrincipal",
):
    name = name or str(uuid.uuid4())
    return http.put(
        f"{dbl.arm_url}/subscriptions/{sub}/providers/Microsoft.Authorization/"
        f"roleAssignments/{name}",
        params={"api-version": "2022-04-01"},
        headers=bearer(token),
        json={
            "properties": {
                "roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
                f"roleDefinitions/{role}",
                "principalId": principal_id,
                "principalType": principal_type,
            }
        },
    )


# --------------------------------------------------------------------------- sign-in (MSAL)


def test_msal_device_flow_then_silent_arm_token(dbl, make_app, http):
    dbl.script_next_flow(["pending", "pending", "slow_down", "approve"])
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    assert "user_code" in flow, flow
    assert len(flow["user_code"]) == 9 and flow["user_code"].isalnum()
    assert flow["verification_uri"] == "https://microsoft.com/devicelogin"
    assert flow["interval"] == 5 and flow["expires_in"] == 900
    assert flow["user_code"] in flow["message"]

    for _ in range(2):
        result = poll(app, flow)
        assert result["error"] == "authorization_pending"
        assert result["error_codes"] == [70016]
        assert result["error_description"].startswith("AADSTS70016: ")
        assert result["correlation_id"] == flow["_correlation_id"]
    result = poll(app, flow)
    assert result["error"] == "slow_down"
    assert flow["interval"] == 10
    result = poll(app, flow)
    assert "access_token" in result, result
    claims = result["id_token_claims"]
    assert claims["preferred_username"] == ALICE_UPN
    assert claims["tid"] == DEFAULT_TENANT_ID
    assert claims["aud"] == AZURE_CLI_CLIENT_ID
    assert claims["iss"] == f"https://login.microsoftonline.com/{DEFAULT_TENANT_ID}/v2.0"
    assert claims["oid"] == dbl.alice.oid and claims["ver"] == "2.0"

    recorded = dbl.flow()
    assert recorded.polls == 4 and len(recorded.poll_times) == 4
    assert recorded.outcomes == [
        "authorization_pending",
        "authorization_pending",
        "slow_down",
        "token",
    ]
    assert recorded.state == "redeemed"
    assert recorded.scope and f"{dbl.graph_url}/.default" in recorded.scope

    accounts = app.get_accounts()
    assert [a["username"] for a in accounts] == [ALICE_UPN]
    arm = app.acquire_token_silent([f"{dbl.arm_url}/.default"], account=accounts[0])
    assert arm and "access_token" in arm, arm
    assert dbl.access_tokens[arm["access_token"]].audience == "arm"
    assert dbl.access_tokens[result["access_token"]].audience == "graph"

    me = http.get(f"{dbl.graph_url}/v1.0/me", headers=bearer(result["access_token"]))
    assert me.status_code == 200
    assert me.json()["userPrincipalName"] == ALICE_UPN
    subs = http.get(
        f"{dbl.arm_url}/subscriptions",
        params={"api-version": "2022-12-01"},
        headers=bearer(arm["access_token"]),
    )
    assert subs.status_code == 200
    assert {s["subscriptionId"] for s in subs.json()["value"]} == {SUB1, SUB2}
    assert all(s["tenantId"] == DEFAULT_TENANT_ID for s in subs.json()["value"])

    # each token only works for its own audience
    wrong = http.get(
        f"{dbl.arm_url}/subscriptions",
        params={"api-version": "2022-12-01"},
        headers=bearer(result["access_token"]),
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"
    wrong = http.get(f"{dbl.graph_url}/v1.0/me", headers=bearer(arm["access_token"]))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "InvalidAuthenticationToken"

    # the silent request was a refresh_token grant for the ARM scope, with client_info
    refresh = [
        r
        for r in dbl.requests_to("login", "POST", r"/token$")
        if r.body.get("grant_type") == "refresh_token"
    ]
    assert len(refresh) == 1 and f"{dbl.arm_url}/.default" in refresh[0].body["scope"]
    assert "authorization" not in refresh[0].headers


def test_manual_approve_as_another_user_and_redeem_once(dbl, make_app):
    bob = dbl.add_user("bob@contoso.onmicrosoft.com", name="Bob Builder")
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.arm_url}/.default"])
    assert poll(app, flow)["error"] == "authorization_pending"
    dbl.approve(user="bob@contoso.onmicrosoft.com")
    result = poll(app, flow)
    assert result["id_token_claims"]["name"] == "Bob Builder"
    assert result["id_token_claims"]["oid"] == bob.oid
    assert dbl.access_tokens[result["access_token"]].audience == "arm"
    again = poll(app, flow)
    assert again["error"] == "invalid_grant" and again["error_codes"] == [70000]


def test_decline_is_terminal(dbl, make_app):
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    dbl.decline(flow["user_code"])
    assert poll(app, flow)["error"] == "authorization_declined"
    assert poll(app, flow)["error"] == "authorization_declined"


@pytest.mark.parametrize(
    ("step", "error", "code", "suberror"),
    [
        ("decline", "authorization_declined", 70000, None),
        ("expire", "expired_token", 70019, None),
        ("bad_code", "bad_verification_code", 70018, None),
        (("aadsts", 53003), "invalid_grant", 53003, None),
        (("aadsts", 530033), "invalid_grant", 530033, None),
        (("aadsts", 50076), "invalid_grant", 50076, "basic_action"),
        (("aadsts", 50079), "invalid_grant", 50079, "basic_action"),
        (("aadsts", 50020), "invalid_grant", 50020, None),
        (("aadsts", 90002), "invalid_request", 90002, None),
        (("aadsts", 700016), "unauthorized_client", 700016, None),
        (("aadsts", 65001), "invalid_grant", 65001, "consent_required"),
        (("aadsts", 65002), "invalid_client", 65002, None),
        (("aadsts", 700022), "invalid_scope", 700022, None),
    ],
)
def test_scripted_errors_reach_msal(dbl, make_app, step, error, code, suberror):
    dbl.script_next_flow(["pending", step])
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    assert poll(app, flow)["error"] == "authorization_pending"
    for _ in range(2):  # the last step repeats
        result = poll(app, flow)
        assert result["error"] == error
        assert result["error_codes"] == [code]
        assert result["error_description"].startswith(f"AADSTS{code}: ")
        assert result["correlation_id"] == flow["_correlation_id"]
        assert result.get("suberror") == suberror
        assert "trace_id" in result and "timestamp" in result


def test_flow_expires_on_the_double_clock(dbl, make_app):
    dbl.device_expires_in = 600
    dbl.device_interval = 1
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    assert flow["expires_in"] == 600 and flow["interval"] == 1
    assert poll(app, flow)["error"] == "authorization_pending"
    dbl.advance(601)
    dbl.approve()  # too late
    result = poll(app, flow)
    assert result["error"] == "expired_token" and result["error_codes"] == [70019]
    times = dbl.flow().poll_times
    assert times[1] - times[0] >= 601


def test_429_with_retry_after_is_cached_by_msal_across_flows(dbl, make_app):
    dbl.script_next_flow([("http", 429, 7), "approve"])
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    other = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    result = poll(app, flow)
    assert result["error"] == "temporarily_unavailable"
    assert result["error_codes"] == [90055]
    throttled = dbl.requests_to("login", "POST", r"/token$")
    assert throttled[-1].status == 429
    # MSAL answers from its cache for Retry-After seconds, even for the *other* flow
    assert poll(app, flow)["error"] == "temporarily_unavailable"
    assert poll(app, other)["error"] == "temporarily_unavailable"
    assert dbl.flow(flow["user_code"]).polls == 1
    assert dbl.flow(other["user_code"]).polls == 0
    # a fresh application object is not throttled; the script moves on
    fresh = make_app()
    assert "access_token" in poll(fresh, flow)


def test_5xx_makes_msal_raise(dbl, make_app):
    dbl.script_next_flow([("http", 503, None), "approve"])
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    with pytest.raises(msal.exceptions.MsalServiceError):
        poll(app, flow)
    assert "access_token" in poll(make_app(), flow)


def test_multi_resource_scope_is_rejected_at_initiation(dbl, make_app):
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default", f"{dbl.arm_url}/.default"])
    assert "user_code" not in flow
    assert flow["error"] == "invalid_scope" and flow["error_codes"] == [700022]
    assert dbl.flows == []


def test_unknown_client_and_tenants(dbl, make_app):
    dbl.unknown_clients.add("11111111-2222-3333-4444-555555555555")
    flow = make_app(client_id="11111111-2222-3333-4444-555555555555").initiate_device_flow(
        scopes=[f"{dbl.graph_url}/.default"]
    )
    assert flow["error"] == "unauthorized_client" and flow["error_codes"] == [700016]

    # MSAL replaces the AADSTS90002 answer of discovery with its own message
    for tenant in (str(uuid.uuid4()), "nosuch.onmicrosoft.com"):
        with pytest.raises(ValueError, match="Unable to get authority configuration"):
            make_app(tenant=tenant)
        discovery = dbl.requests_to("login", "GET")[-1]
        assert discovery.path == f"/{tenant}/v2.0/.well-known/openid-configuration"
        assert discovery.status == 400

    # a domain resolves to the tenant; endpoints then carry the tenant id
    app = make_app(tenant="contoso.onmicrosoft.com")
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    assert dbl.requests_to("login", "POST")[-1].path == (
        f"/{DEFAULT_TENANT_ID}/oauth2/v2.0/devicecode"
    )
    # a user from another tenant cannot sign in to this one
    fabrikam = dbl.add_tenant(display_name="Fabrikam")
    dbl.add_user("carol@fabrikam.onmicrosoft.com", tenant_id=fabrikam.id)
    dbl.approve(user="carol@fabrikam.onmicrosoft.com")
    result = poll(app, flow)
    assert result["error_codes"] == [50020]


def test_personal_and_guest_accounts(dbl, make_app):
    dbl.add_user("pat@outlook.com", name="Pat Personal", personal=True)
    dbl.add_user(
        "gus_outlook.com#EXT#@contoso.onmicrosoft.com", name="Gus Guest", guest_idp="live.com"
    )

    app = make_app(tenant="common")
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    dbl.approve(user="pat@outlook.com")
    result = poll(app, flow)
    assert result["id_token_claims"]["tid"] == MSA_TENANT_ID

    # /organizations refuses personal accounts
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    dbl.approve(user="pat@outlook.com")
    assert poll(app, flow)["error_codes"] == [50020]

    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    dbl.approve(user="gus_outlook.com#EXT#@contoso.onmicrosoft.com")
    result = poll(app, flow)
    assert result["id_token_claims"]["idp"] == "live.com"
    assert result["id_token_claims"]["tid"] == DEFAULT_TENANT_ID


def test_refresh_errors_are_scriptable(dbl, make_app):
    dbl.script_next_flow(["approve"])
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    assert "access_token" in poll(app, flow)
    account = app.get_accounts()[0]
    dbl.script_refresh([("aadsts", 50076)])
    result = app.acquire_token_silent_with_error([f"{dbl.arm_url}/.default"], account=account)
    assert result["error"] == "invalid_grant" and result["error_codes"] == [50076]
    assert result["suberror"] == "basic_action"
    # plain acquire_token_silent hides the error as None (MSAL then replays the 400 for 60 s)
    assert app.acquire_token_silent([f"{dbl.arm_url}/.default"], account=account) is None


def test_conditional_access_mfa_for_azure_management(dbl, make_app):
    """MFA required for Azure management only: a Graph sign-in cannot reach ARM silently;
    an ARM sign-in does MFA on the sign-in page, and Graph then follows silently."""
    dbl.tenants[DEFAULT_TENANT_ID].mfa_required_for = {"arm"}
    dbl.script_next_flow(["approve"])
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    assert "access_token" in poll(app, flow)
    result = app.acquire_token_silent_with_error(
        [f"{dbl.arm_url}/.default"], account=app.get_accounts()[0]
    )
    assert result["error_codes"] == [50076]
    assert "797f4846-ba00-4fd7-ba43-dac1f8f63013" in result["error_description"]

    dbl.script_next_flow(["approve"])
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.arm_url}/.default"])
    assert "access_token" in poll(app, flow)
    graph = app.acquire_token_silent_with_error(
        [f"{dbl.graph_url}/.default"], account=app.get_accounts()[0]
    )
    assert "access_token" in graph


def test_revoked_sessions_fail_refresh(dbl, make_app):
    dbl.script_next_flow(["approve"])
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    poll(app, flow)
    dbl.revoke_sessions(ALICE_UPN)
    result = app.acquire_token_silent_with_error(
        [f"{dbl.arm_url}/.default"], account=app.get_accounts()[0]
    )
    assert result["error_codes"] == [50173]


# --------------------------------------------------------------------------- client credentials


def test_client_credentials_with_a_new_secret(dbl, ca, http):
    token = dbl.token_for()
    app = create_app(http, dbl, token)
    sp = create_sp(http, dbl, token, app["appId"])
    dbl.new_secret_delay = 2
    r = http.post(
        f"{dbl.graph_url}/v1.0/applications/{app['id']}/addPassword",
        headers=bearer(token),
        json={"passwordCredential": {"displayName": "veeam"}},
    )
    secret = r.json()["secretText"]

    with ca.httpx_client(timeout=10) as client:
        cca = msal.ConfidentialClientApplication(
            app["appId"],
            client_credential=secret,
            authority=f"{dbl.authority_host}/{DEFAULT_TENANT_ID}",
            instance_discovery=False,
            http_client=client,
        )
        for _ in range(2):
            result = cca.acquire_token_for_client([f"{dbl.arm_url}/.default"])
            assert result["error"] == "invalid_client"
            assert result["error_codes"] == [7000215]
        assert dbl.client_logins == []
        result = cca.acquire_token_for_client([f"{dbl.arm_url}/.default"])
        assert "access_token" in result, result
    assert [(c.app_id, c.audience) for c in dbl.client_logins] == [(app["appId"], "arm")]

    # the principal sees a subscription once it has a role there
    def visible():
        r = http.get(
            f"{dbl.arm_url}/subscriptions",
            params={"api-version": "2022-12-01"},
            headers=bearer(result["access_token"]),
        )
        return [s["subscriptionId"] for s in r.json()["value"]]

    assert visible() == []
    arm = dbl.token_for(audience="arm")
    assert assign(http, dbl, arm, SUB1, sp["id"]).status_code == 201
    assert visible() == [SUB1]

    # a wrong secret, then an expired one
    def login(secret_text):
        return http.post(
            f"{dbl.authority_host}/{DEFAULT_TENANT_ID}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": app["appId"],
                "client_secret": secret_text,
                "scope": f"{dbl.graph_url}/.default",
            },
        )

    app_only = login(secret).json()["access_token"]
    me = http.get(f"{dbl.graph_url}/v1.0/me", headers=bearer(app_only))
    assert me.status_code == 400  # /me needs a delegated token
    assert dbl.access_tokens[app_only].service_principal.id == sp["id"]

    bad = login("nope")
    assert bad.status_code == 401 and bad.json()["error_codes"] == [7000215]
    assert login(secret).status_code == 200
    dbl.advance(3 * 365 * 86400)
    expired = login(secret)
    assert expired.status_code == 401 and expired.json()["error_codes"] == [7000222]

    # client credentials need a tenant, and a /.default scope
    r = http.post(
        f"{dbl.authority_host}/organizations/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": app["appId"],
            "client_secret": secret,
            "scope": f"{dbl.graph_url}/.default",
        },
    )
    assert r.json()["error_codes"] == [50059]


# --------------------------------------------------------------------------- Graph


def test_graph_identity_reads(dbl, http):
    dbl.add_user(
        "dev@contoso.onmicrosoft.com",
        directory_roles=[APPLICATION_DEVELOPER],
        groups=["Azure Admins"],
    )
    token = dbl.token_for()
    org = http.get(f"{dbl.graph_url}/v1.0/organization", headers=bearer(token)).json()
    assert org["value"][0]["id"] == DEFAULT_TENANT_ID
    assert org["value"][0]["displayName"] == "Contoso"
    assert org["value"][0]["verifiedDomains"][0]["name"] == "contoso.onmicrosoft.com"

    roles = http.get(f"{dbl.graph_url}/v1.0/me/transitiveMemberOf", headers=bearer(token))
    assert roles.status_code == 200
    (role,) = roles.json()["value"]
    assert role["@odata.type"] == "#microsoft.graph.directoryRole"
    assert role["roleTemplateId"] == GLOBAL_ADMINISTRATOR
    assert role["displayName"] == "Global Administrator"

    dev = dbl.token_for("dev@contoso.onmicrosoft.com")
    kinds = [
        o["@odata.type"]
        for o in http.get(
            f"{dbl.graph_url}/v1.0/me/transitiveMemberOf", headers=bearer(dev)
        ).json()["value"]
    ]
    assert kinds == ["#microsoft.graph.directoryRole", "#microsoft.graph.group"]

    policy = http.get(f"{dbl.graph_url}/v1.0/policies/authorizationPolicy", headers=bearer(token))
    assert policy.json()["defaultUserRolePermissions"]["allowedToCreateApps"] is True
    dbl.set_allowed_to_create_apps(DEFAULT_TENANT_ID, False)
    policy = http.get(f"{dbl.graph_url}/v1.0/policies/authorizationPolicy", headers=bearer(token))
    assert policy.json()["defaultUserRolePermissions"]["allowedToCreateApps"] is False
    dbl.policy_forbidden(DEFAULT_TENANT_ID, True)
    policy = http.get(f"{dbl.graph_url}/v1.0/policies/authorizationPolicy", headers=bearer(token))
    assert policy.status_code == 403
    err = policy.json()["error"]
    assert err["code"] == "Authorization_RequestDenied"
    assert set(err["innerError"]) >= {"request-id", "date"}


def test_app_creation_rights(dbl, http):
    dbl.add_user("bob@contoso.onmicrosoft.com")
    dbl.add_user("dev@contoso.onmicrosoft.com", directory_roles=[APPLICATION_DEVELOPER])
    bob = dbl.token_for("bob@contoso.onmicrosoft.com")
    dev = dbl.token_for("dev@contoso.onmicrosoft.com")
    body = {"displayName": "x", "signInAudience": "AzureADMyOrg"}

    assert (
        http.post(f"{dbl.graph_url}/v1.0/applications", headers=bearer(bob), json=body).status_code
        == 201
    )
    dbl.set_allowed_to_create_apps(DEFAULT_TENANT_ID, False)
    denied = http.post(f"{dbl.graph_url}/v1.0/applications", headers=bearer(bob), json=body)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "Authorization_RequestDenied"
    assert (
        http.post(f"{dbl.graph_url}/v1.0/applications", headers=bearer(dev), json=body).status_code
        == 201
    )
    # a non-owner without an admin role cannot add secrets to someone else's app
    alice_app = create_app(http, dbl, dbl.token_for())
    r = http.post(
        f"{dbl.graph_url}/v1.0/applications/{alice_app['id']}/addPassword",
        headers=bearer(dev),
        json={},
    )
    assert r.status_code == 403


def test_application_lifecycle(dbl, http):
    token = dbl.token_for()
    g = f"{dbl.graph_url}/v1.0"
    app = create_app(http, dbl, token, name="veeam-prod")
    assert app["signInAudience"] == "AzureADMyOrg"
    assert app["publisherDomain"] == "contoso.onmicrosoft.com"
    assert app["passwordCredentials"] == []

    by_id = http.get(f"{g}/applications/{app['id']}", headers=bearer(token)).json()
    assert by_id["appId"] == app["appId"]
    by_app_id = http.get(f"{g}/applications(appId='{app['appId']}')", headers=bearer(token))
    assert by_app_id.json()["id"] == app["id"]
    for flt in (f"appId eq '{app['appId']}'", "displayName eq 'veeam-prod'"):
        found = http.get(f"{g}/applications", params={"$filter": flt}, headers=bearer(token))
        assert [a["id"] for a in found.json()["value"]] == [app["id"]]
    assert http.get(f"{g}/applications/{app['appId']}", headers=bearer(token)).status_code == 404

    r = http.patch(
        f"{g}/applications/{app['id']}",
        headers=bearer(token),
        json={"notes": "managed by veeam-sa"},
    )
    assert r.status_code == 204
    assert dbl.application(object_id=app["id"]).props["notes"] == "managed by veeam-sa"

    # idempotent upsert by uniqueName
    url = f"{g}/applications(uniqueName='veeam-sa-prod')"
    prefer = {**bearer(token), "Prefer": "create-if-missing"}
    created = http.patch(
        url, headers=prefer, json={"displayName": "veeam-sa-prod", "signInAudience": "AzureADMyOrg"}
    )
    assert created.status_code == 201
    assert created.json()["uniqueName"] == "veeam-sa-prod"
    updated = http.patch(
        url, headers=prefer, json={"displayName": "veeam-sa-prod", "description": "v2"}
    )
    assert updated.status_code == 204 and updated.content == b""
    got = http.get(url, headers=bearer(token)).json()
    assert got["id"] == created.json()["id"] and got["description"] == "v2"
    assert (
        http.patch(
            f"{g}/applications(uniqueName='missing')",
            headers=bearer(token),
            json={"displayName": "m"},
        ).status_code
        == 404
    )

    # secrets
    end = "2027-06-30T00:00:00Z"
    r = http.post(
        f"{g}/applications/{app['id']}/addPassword",
        headers=bearer(token),
        json={"passwordCredential": {"displayName": "veeam", "endDateTime": end}},
    )
    assert r.status_code == 200
    pwd = r.json()
    assert len(pwd["secretText"]) == 40 and pwd["hint"] == pwd["secretText"][:3]
    assert pwd["endDateTime"] == end and pwd["displayName"] == "veeam"
    uuid.UUID(pwd["keyId"])

    r = http.post(f"{g}/applications/{app['id']}/addPassword", headers=bearer(token), json={})
    default = r.json()
    years = (
        datetime.fromisoformat(default["endDateTime"])
        - datetime.fromisoformat(default["startDateTime"])
    ).days
    assert 729 <= years <= 731

    # a tenant app management policy capping secrets at 180 days refuses longer ones (Graph
    # does not shorten them) and accepts one within the cap
    dbl.tenants[DEFAULT_TENANT_ID].password_max_days = 180
    r = http.post(
        f"{g}/applications/{app['id']}/addPassword",
        headers=bearer(token),
        json={"passwordCredential": {"endDateTime": "2099-01-01T00:00:00Z"}},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "CredentialInvalidLifetimeAsPerAppPolicy"
    assert error["message"] == (
        "Credential lifetime exceeds the max value allowed as per assigned policy "
        "'00000000-0000-0000-0000-000000000000'."
    )
    assert error["details"][0]["code"] == "InvalidKeyEndDate"
    within = datetime.fromtimestamp(dbl.now() + 179 * 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = http.post(
        f"{g}/applications/{app['id']}/addPassword",
        headers=bearer(token),
        json={"passwordCredential": {"endDateTime": within}},
    )
    assert r.status_code == 200
    dbl.tenants[DEFAULT_TENANT_ID].password_max_days = None

    listed = http.get(f"{g}/applications/{app['id']}", headers=bearer(token)).json()
    assert len(listed["passwordCredentials"]) == 3
    assert all(p["secretText"] is None for p in listed["passwordCredentials"])
    r = http.post(
        f"{g}/applications/{app['id']}/removePassword",
        headers=bearer(token),
        json={"keyId": pwd["keyId"]},
    )
    assert r.status_code == 204
    r = http.post(
        f"{g}/applications/{app['id']}/removePassword",
        headers=bearer(token),
        json={"keyId": pwd["keyId"]},
    )
    assert r.status_code == 400
    assert len(dbl.application(object_id=app["id"]).passwords) == 2

    # service principal
    sp = create_sp(http, dbl, token, app["appId"])
    assert sp["appId"] == app["appId"] and sp["servicePrincipalType"] == "Application"
    dup = http.post(f"{g}/servicePrincipals", headers=bearer(token), json={"appId": app["appId"]})
    assert dup.status_code == 409
    found = http.get(
        f"{g}/servicePrincipals",
        params={"$filter": f"appId eq '{app['appId']}'"},
        headers=bearer(token),
    ).json()["value"]
    assert [s["id"] for s in found] == [sp["id"]]
    assert http.get(f"{g}/servicePrincipals/{sp['id']}", headers=bearer(token)).status_code == 200
    nobody = http.post(
        f"{g}/servicePrincipals", headers=bearer(token), json={"appId": str(uuid.uuid4())}
    )
    assert nobody.status_code == 400
    assert nobody.json()["error"]["details"][0]["code"] == "NoBackingApplicationObject"

    # delete removes the principal too
    assert http.delete(f"{g}/applications/{app['id']}", headers=bearer(token)).status_code == 204
    assert http.get(f"{g}/servicePrincipals/{sp['id']}", headers=bearer(token)).status_code == 404
    assert [a.id for a in dbl.deleted_applications] == [app["id"]]
    assert dbl.application(object_id=app["id"]) is None


def test_graph_request_validation(dbl, http):
    token = dbl.token_for()
    r = http.post(
        f"{dbl.graph_url}/v1.0/applications",
        headers=bearer(token),
        content=b"not json",
    )
    assert r.status_code == 400
    r = http.get(
        f"{dbl.graph_url}/v1.0/applications",
        params={"$filter": "tags/any(t: t eq 'x')"},
        headers=bearer(token),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "Request_UnsupportedQuery"
    assert http.get(f"{dbl.graph_url}/v1.0/me").status_code == 401


# --------------------------------------------------------------------------- ARM


def test_role_assignments_and_permissions(dbl, http):
    owner = dbl.token_for(audience="arm")
    graph = dbl.token_for()
    app = create_app(http, dbl, graph)
    sp = create_sp(http, dbl, graph, app["appId"])
    name = str(uuid.uuid4())

    r = assign(http, dbl, owner, SUB1, sp["id"], name=name)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == name and body["properties"]["principalId"] == sp["id"]
    assert body["properties"]["scope"] == f"/subscriptions/{SUB1}"
    assert assign(http, dbl, owner, SUB1, sp["id"], name=name).status_code == 200
    again = assign(http, dbl, owner, SUB1, sp["id"])
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "RoleAssignmentExists"
    assert assign(http, dbl, owner, SUB1, sp["id"], role=OWNER).status_code == 201

    missing = assign(http, dbl, owner, SUB1, str(uuid.uuid4()))
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "PrincipalNotFound"
    wrong_type = assign(
        http, dbl, owner, SUB1, sp["id"], role=OWNER, principal_type="User", name=str(uuid.uuid4())
    )
    assert wrong_type.json()["error"]["code"] == "UnmatchedPrincipalType"

    # a Contributor can read but not assign roles
    dbl.add_user("con@contoso.onmicrosoft.com")
    dbl.grant("con@contoso.onmicrosoft.com", SUB2, "Contributor")
    contributor = dbl.token_for("con@contoso.onmicrosoft.com", audience="arm")
    perms = http.get(
        f"{dbl.arm_url}/subscriptions/{SUB2}/providers/Microsoft.Authorization/permissions",
        params={"api-version": "2022-04-01"},
        headers=bearer(contributor),
    ).json()["value"]
    assert perms[0]["actions"] == ["*"]
    assert "Microsoft.Authorization/*/Write" in perms[0]["notActions"]
    assert not permissions_allow(perms, ROLE_ASSIGNMENT_WRITE)
    denied = assign(http, dbl, contributor, SUB2, sp["id"])
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "AuthorizationFailed"
    assert ROLE_ASSIGNMENT_WRITE in denied.json()["error"]["message"]

    dbl.grant("con@contoso.onmicrosoft.com", SUB2, "User Access Administrator")
    assert assign(http, dbl, contributor, SUB2, sp["id"]).status_code == 201
    dbl.revoke("con@contoso.onmicrosoft.com", SUB2, "User Access Administrator")
    assert assign(http, dbl, contributor, SUB2, sp["id"], role=OWNER).status_code == 403

    listed = http.get(
        f"{dbl.arm_url}/subscriptions/{SUB1}/providers/Microsoft.Authorization/roleAssignments",
        params={"api-version": "2022-04-01", "$filter": f"principalId eq '{sp['id']}'"},
        headers=bearer(owner),
    ).json()["value"]
    assert {a["name"] for a in listed} >= {name}
    assert all(a["properties"]["principalId"] == sp["id"] for a in listed)
    url = (
        f"{dbl.arm_url}/subscriptions/{SUB1}/providers/Microsoft.Authorization/"
        f"roleAssignments/{name}"
    )
    assert (
        http.delete(url, params={"api-version": "2022-04-01"}, headers=bearer(owner)).status_code
        == 200
    )
    assert (
        http.delete(url, params={"api-version": "2022-04-01"}, headers=bearer(owner)).status_code
        == 204
    )

    defs = http.get(
        f"{dbl.arm_url}/subscriptions/{SUB1}/providers/Microsoft.Authorization/roleDefinitions",
        params={"api-version": "2022-04-01", "$filter": "roleName eq 'Key Vault Crypto User'"},
        headers=bearer(owner),
    ).json()["value"]
    assert [d["name"] for d in defs] == ["12338af0-0e69-4776-bea7-57ae8d297424"]


def test_arm_errors(dbl, http):
    arm = dbl.token_for(audience="arm")
    r = http.get(f"{dbl.arm_url}/subscriptions")
    assert r.status_code == 401 and r.json()["error"]["code"] == "AuthenticationFailed"
    r = http.get(f"{dbl.arm_url}/subscriptions", headers=bearer(arm))
    assert r.status_code == 400 and r.json()["error"]["code"] == "MissingApiVersionParameter"
    other = dbl.add_tenant(display_name="Fabrikam")
    foreign = dbl.add_subscription(name="Fabrikam Prod", tenant_id=other.id)
    r = http.get(
        f"{dbl.arm_url}/subscriptions/{foreign.subscription_id}/providers/"
        "Microsoft.Authorization/permissions",
        params={"api-version": "2022-04-01"},
        headers=bearer(arm),
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationTokenTenant"
    dbl.advance(3600)
    r = http.get(
        f"{dbl.arm_url}/subscriptions", params={"api-version": "2022-12-01"}, headers=bearer(arm)
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "ExpiredAuthenticationToken"


# --------------------------------------------------------------------------- realism knobs


def test_replication_delay(dbl, http):
    dbl.replication_delay = 2
    graph = dbl.token_for()
    arm = dbl.token_for(audience="arm")
    app = create_app(http, dbl, graph)
    codes = [
        http.get(
            f"{dbl.graph_url}/v1.0/applications/{app['id']}", headers=bearer(graph)
        ).status_code
        for _ in range(3)
    ]
    assert codes == [404, 404, 200]
    assert (
        http.get(f"{dbl.graph_url}/v1.0/applications/{app['id']}", headers=bearer(graph)).json()[
            "id"
        ]
        == app["id"]
    )

    app2 = create_app(http, dbl, graph, name="second")
    attempts = [
        http.post(
            f"{dbl.graph_url}/v1.0/servicePrincipals",
            headers=bearer(graph),
            json={"appId": app2["appId"]},
        )
        for _ in range(3)
    ]
    assert [a.status_code for a in attempts] == [400, 400, 201]
    assert (
        "does not reference a valid application object" in (attempts[0].json()["error"]["message"])
    )
    sp = attempts[2].json()
    role_codes = []
    for _ in range(3):
        r = assign(http, dbl, arm, SUB1, sp["id"])
        role_codes.append(r.json()["error"]["code"] if r.status_code != 201 else 201)
    assert role_codes == ["PrincipalNotFound", "PrincipalNotFound", 201]


def test_pagination(dbl, http):
    dbl.page_size = 2
    for i in range(3):
        sub = dbl.add_subscription(name=f"Extra {i}")
        dbl.grant(ALICE_UPN, sub.subscription_id, "Reader")
    arm = dbl.token_for(audience="arm")
    url, params, seen, pages = f"{dbl.arm_url}/subscriptions", {"api-version": "2022-12-01"}, [], 0
    while url:
        body = http.get(url, params=params, headers=bearer(arm)).json()
        seen += [s["subscriptionId"] for s in body["value"]]
        url, params, pages = body.get("nextLink"), None, pages + 1
    assert len(seen) == len(set(seen)) == 5 and pages == 3

    graph = dbl.token_for()
    for i in range(5):
        create_app(http, dbl, graph, name=f"app-{i}")
    url, names = f"{dbl.graph_url}/v1.0/applications", []
    while url:
        body = http.get(url, headers=bearer(graph)).json()
        names += [a["displayName"] for a in body["value"]]
        url = body.get("@odata.nextLink")
    assert names == [f"app-{i}" for i in range(5)]


def test_faults_latency_and_recording(dbl, http):
    token = dbl.token_for()
    f = dbl.fault("graph", "GET", r"/me$", 429, retry_after=3, times=2)
    for _ in range(2):
        r = http.get(f"{dbl.graph_url}/v1.0/me", headers=bearer(token))
        assert r.status_code == 429 and r.headers["Retry-After"] == "3"
        assert r.json()["error"]["code"] == "TooManyRequests"
    assert http.get(f"{dbl.graph_url}/v1.0/me", headers=bearer(token)).status_code == 200
    assert f.hits == 2 and f.times == 0

    dbl.fault(
        "arm", None, r"/subscriptions", 503, body={"error": {"code": "Busy", "message": "later"}}
    )
    r = http.get(f"{dbl.arm_url}/subscriptions", params={"api-version": "2022-12-01"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "Busy"

    dbl.latency = 0.05
    started = time.monotonic()
    http.get(f"{dbl.graph_url}/v1.0/me", headers=bearer(token))
    assert time.monotonic() - started >= 0.05

    me = dbl.requests_to("graph", "GET", r"/me$")
    assert [r.status for r in me] == [429, 429, 200, 200]
    assert all("authorization" not in r.headers for r in dbl.requests)
    assert dbl.requests_to("arm")[0].query == {"api-version": "2022-12-01"}


def test_concurrent_requests_are_safe(dbl, ca):
    token = dbl.token_for()
    errors = []

    def worker(i):
        try:
            with ca.httpx_client(timeout=10) as client:
                for j in range(3):
                    r = client.post(
                        f"{dbl.graph_url}/v1.0/applications",
                        headers=bearer(token),
                        json={"displayName": f"t{i}-{j}"},
                    )
                    assert r.status_code == 201
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(dbl.applications) == 24


# --------------------------------------------------------------------------- TLS


def test_tls_trusts_only_the_test_ca(ca, dbl):
    ctx = ca.client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1
    with httpx.Client(verify=ssl.create_default_context(cafile=None), trust_env=False) as plain:
        with pytest.raises(httpx.ConnectError):
            plain.get(f"{dbl.graph_url}/v1.0/me")
    with open(ca.ca_pem_path, "rb") as fh:
        assert fh.read() == ca.cert_pem
    code = (
        "import ssl, sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    urllib.request.urlopen('{dbl.graph_url}/v1.0/me', "
        "context=ssl.create_default_context())\n"
        "except urllib.error.HTTPError as e:\n"
        "    sys.exit(0 if e.code == 401 else 1)\n"
    )
    env = {"SSL_CERT_FILE": ca.ca_pem_path, "PATH": "/usr/bin:/bin"}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=20).returncode == 0


def test_script_an_existing_flow_and_expire_by_hand(dbl, make_app):
    app = make_app()
    flow = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    assert poll(app, flow)["error"] == "authorization_pending"
    dbl.script_flow(flow["user_code"], ["slow_down", ("approve", ALICE_UPN)])
    assert poll(app, flow)["error"] == "slow_down"
    assert "access_token" in poll(app, flow)

    second = app.initiate_device_flow(scopes=[f"{dbl.graph_url}/.default"])
    dbl.expire()
    assert poll(app, second)["error"] == "expired_token"
    with pytest.raises(ValueError):
        dbl.script_next_flow(["approve", "nonsense"])


def test_app_management_policy_blocks_and_reads(dbl, http):
    """Tenant default app management policy: no client secrets at all; the policy itself is
    readable by privileged roles only (403 for others, like any policy read)."""
    g = dbl.graph_url + "/v1.0"
    admin = dbl.token_for(ALICE_UPN, "graph")
    app = http.post(
        f"{g}/applications", headers=bearer(admin), json={"displayName": "p"}
    ).json()
    tenant = dbl.tenants[DEFAULT_TENANT_ID]
    tenant.passwords_blocked = True
    tenant.password_max_days = 30
    r = http.post(f"{g}/applications/{app['id']}/addPassword", headers=bearer(admin), json={})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "CredentialTypeNotAllowedAsPerAppPolicy"
    assert dbl.application(object_id=app["id"]).passwords == []

    policy = http.get(f"{g}/policies/defaultAppManagementPolicy", headers=bearer(admin)).json()
    assert policy["isEnabled"] is True
    kinds = {
        r["restrictionType"]: r for r in policy["applicationRestrictions"]["passwordCredentials"]
    }
    assert kinds["passwordLifetime"]["maxLifetime"] == "P30D"
    assert kinds["passwordAddition"]["state"] == "enabled"

    dbl.add_user("dev@contoso.onmicrosoft.com", directory_roles=[APPLICATION_DEVELOPER])
    dev = dbl.token_for("dev@contoso.onmicrosoft.com", "graph")
    denied = http.get(f"{g}/policies/defaultAppManagementPolicy", headers=bearer(dev))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "Authorization_RequestDenied"


@pytest.mark.parametrize(
    ("form", "status", "fragment"),
    [
        ("no_backing", 400, "does not reference a valid application object"),
        ("local_tenant", 403, "must in the local tenant"),
        ("not_exist", 404, " does not exist "),
    ],
)
def test_service_principal_before_replication(dbl, http, form, status, fragment):
    dbl.replication_delay = 1
    dbl.sp_replication_form = form
    graph = dbl.token_for()
    app = create_app(http, dbl, graph)
    post = lambda: http.post(  # noqa: E731
        f"{dbl.graph_url}/v1.0/servicePrincipals",
        headers=bearer(graph),
        json={"appId": app["appId"]},
    )
    first = post()
    assert first.status_code == status and fragment in first.json()["error"]["message"]
    assert post().status_code == 201


def test_truncated_answer_after_the_request_was_carried_out(dbl, http):
    """A truncate fault carries the request out (the application exists) and cuts the JSON."""
    graph = dbl.token_for()
    dbl.fault("graph", "POST", r"/applications$", 201, truncate=True)
    r = http.post(
        f"{dbl.graph_url}/v1.0/applications", headers=bearer(graph), json={"displayName": "t"}
    )
    assert r.status_code == 201
    with pytest.raises(json.JSONDecodeError):
        r.json()
    assert [a.display_name for a in dbl.applications] == ["t"]


# --------------------------------------------------------------------------- rendezvous


def _get_org(http, dbl, token):
    return http.get(f"{dbl.graph_url}/v1.0/organization", headers=bearer(token))


def _get_me(http, dbl, token):
    return http.get(f"{dbl.graph_url}/v1.0/me", headers=bearer(token))


def test_rendezvous_meets_requests_sent_side_by_side(dbl, http):
    token = dbl.token_for()
    rv = dbl.meet(
        lambda r: r.path.endswith("/organization"), lambda r: r.path.endswith("/me"), timeout=5
    )
    other = threading.Thread(target=_get_me, args=(http, dbl, token))
    other.start()
    assert _get_org(http, dbl, token).status_code == 200
    other.join()
    assert rv.met


def test_rendezvous_reports_requests_sent_one_after_the_other(dbl, http):
    token = dbl.token_for()
    rv = dbl.meet(
        lambda r: r.path.endswith("/organization"), lambda r: r.path.endswith("/me"), timeout=0.3
    )
    assert _get_org(http, dbl, token).status_code == 200  # held for the timeout: no /me came
    assert _get_me(http, dbl, token).status_code == 200
    assert not rv.met
    assert rv.waited == [False, True]


def put_role(http, dbl, token, sub, rd_id, name="veeam-sa custom", scopes=None, **props):
    body = {
        "properties": {
            "roleName": name,
            "description": "test role",
            "type": "CustomRole",
            "permissions": [
                {
                    "actions": ["Microsoft.Compute/disks/read"],
                    "notActions": [],
                    "dataActions": ["Microsoft.KeyVault/vaults/keys/read"],
                    "notDataActions": [],
                }
            ],
            "assignableScopes": scopes if scopes is not None else [f"/subscriptions/{sub}"],
            **props,
        }
    }
    return http.put(
        f"{dbl.arm_url}/subscriptions/{sub}/providers/Microsoft.Authorization/"
        f"roleDefinitions/{rd_id}",
        params={"api-version": "2022-04-01"},
        headers=bearer(token),
        json=body,
    )


def test_custom_role_definitions_follow_arms_rules(dbl, http):
    owner = dbl.token_for(audience="arm")
    graph = dbl.token_for()
    app = create_app(http, dbl, graph)
    sp = create_sp(http, dbl, graph, app["appId"])
    rd_id = str(uuid.uuid4())

    # created once, then the same GUID again is an update
    created = put_role(
        http, dbl, owner, SUB1, rd_id, scopes=[f"/subscriptions/{SUB1}", f"/subscriptions/{SUB2}"]
    )
    assert created.status_code == 201, created.text
    assert created.json()["properties"]["type"] == "CustomRole"
    assert (
        put_role(
            http,
            dbl,
            owner,
            SUB1,
            rd_id,
            scopes=[f"/subscriptions/{SUB1}", f"/subscriptions/{SUB2}"],
        ).status_code
        == 200
    )
    [custom] = dbl.custom_roles(DEFAULT_TENANT_ID)
    assert custom.data_actions == ["Microsoft.KeyVault/vaults/keys/read"]

    # the name is unique in the tenant
    clash = put_role(http, dbl, owner, SUB1, str(uuid.uuid4()), name="VEEAM-SA CUSTOM")
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "RoleDefinitionWithSameNameExists"
    assert (
        put_role(http, dbl, owner, SUB1, str(uuid.uuid4()), name="Contributor").status_code == 409
    )

    # assignable scopes: required, never the root
    for scopes in ([], ["/"]):
        bad = put_role(http, dbl, owner, SUB1, str(uuid.uuid4()), name="other", scopes=scopes)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "InvalidRoleDefinition"

    # roleDefinitions/write is needed on every assignable scope
    dbl.add_user("uaa@contoso.onmicrosoft.com")
    dbl.grant("uaa@contoso.onmicrosoft.com", SUB1, "Role Based Access Control Administrator")
    rbac = dbl.token_for("uaa@contoso.onmicrosoft.com", audience="arm")
    denied = put_role(http, dbl, rbac, SUB1, str(uuid.uuid4()), name="third")
    assert denied.status_code == 403
    assert "Microsoft.Authorization/roleDefinitions/write" in denied.json()["error"]["message"]

    # a new definition replicates: the first assignments do not find it yet
    dbl.role_definition_replication = 2
    fresh = str(uuid.uuid4())
    assert put_role(http, dbl, owner, SUB1, fresh, name="fresh").status_code == 201
    for _ in range(2):
        early = assign(http, dbl, owner, SUB1, sp["id"], role=fresh)
        assert early.status_code == 400
        assert early.json()["error"]["code"] == "RoleDefinitionDoesNotExist"
    assignment = str(uuid.uuid4())
    assert assign(http, dbl, owner, SUB1, sp["id"], role=fresh, name=assignment).status_code == 201
    # only where it is assignable
    outside = assign(http, dbl, owner, SUB2, sp["id"], role=fresh)
    assert outside.status_code == 400

    # the caller's permissions show it; data actions too
    blocks = dbl.blocks_of_application(app["appId"], SUB1)
    assert any("Microsoft.Compute/disks/read" in b["actions"] for b in blocks)

    # not deleted while assigned; deleted after
    url = (
        f"{dbl.arm_url}/subscriptions/{SUB1}/providers/Microsoft.Authorization/"
        f"roleDefinitions/{fresh}"
    )
    params = {"api-version": "2022-04-01"}
    busy = http.delete(url, params=params, headers=bearer(owner))
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "RoleDefinitionHasAssignments"
    http.delete(
        f"{dbl.arm_url}/subscriptions/{SUB1}/providers/Microsoft.Authorization/"
        f"roleAssignments/{assignment}",
        params=params,
        headers=bearer(owner),
    )
    assert http.delete(url, params=params, headers=bearer(owner)).status_code == 200
    assert http.delete(url, params=params, headers=bearer(owner)).status_code == 204
    gone = http.get(url, params=params, headers=bearer(owner))
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "RoleDefinitionDoesNotExist"


# --------------------------------------------------------------------------- out-of-band changes


def test_out_of_band_changes_show_as_the_token_endpoint_and_arm_show_them(dbl, http):
    """What the health check relies on, per Microsoft's documentation:
    - Role Assignments - List For Scope: "Use $filter=principalId eq {id} to return all role
      assignments at, above or below the scope for the specified principal"; the caller needs
      Microsoft.Authorization/roleAssignments/read, else 403 AuthorizationFailed
      (learn.microsoft.com/rest/api/authorization/role-assignments/list-for-scope);
    - the token endpoint (Entra error codes reference): AADSTS7000215 invalid client secret
      (a deleted secret), AADSTS7000222 expired secret, AADSTS700016 application not found
      in the directory (a deleted application)."""
    token = dbl.token_for()
    app = create_app(http, dbl, token)
    sp = create_sp(http, dbl, token, app["appId"])
    secret = http.post(
        f"{dbl.graph_url}/v1.0/applications/{app['id']}/addPassword",
        headers=bearer(token),
        json={"passwordCredential": {"displayName": "veeam"}},
    ).json()["secretText"]
    owner = dbl.token_for(audience="arm")
    assert assign(http, dbl, owner, SUB1, sp["id"], role=CONTRIBUTOR).status_code == 201
    assert assign(http, dbl, owner, SUB1, sp["id"], role=KEY_VAULT_CRYPTO_USER).status_code == 201

    def login():
        return http.post(
            f"{dbl.authority_host}/{DEFAULT_TENANT_ID}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": app["appId"],
                "client_secret": secret,
                "scope": f"{dbl.arm_url}/.default",
            },
        )

    def own_assignments(filter_):
        return http.get(
            f"{dbl.arm_url}/subscriptions/{SUB1}/providers/Microsoft.Authorization/roleAssignments",
            params={"api-version": "2022-04-01", "$filter": filter_},
            headers=bearer(login().json()["access_token"]),
        )

    listed = own_assignments(f"principalId eq '{sp['id']}'")
    assert listed.status_code == 200
    roles = {a["properties"]["roleDefinitionId"].rsplit("/", 1)[-1] for a in listed.json()["value"]}
    assert roles == {CONTRIBUTOR, KEY_VAULT_CRYPTO_USER}
    assert own_assignments("principalId ne 'x'").status_code == 400  # unsupported filter

    # one role removed in the portal: the listing no longer has it
    assert dbl.remove_role_assignment(sp["id"], SUB1, "Key Vault Crypto User") == 1
    listed = own_assignments(f"principalId eq '{sp['id']}'").json()["value"]
    assert [a["properties"]["roleDefinitionId"].rsplit("/", 1)[-1] for a in listed] == [CONTRIBUTOR]
    # the role that allowed reading gone too: 403 AuthorizationFailed, naming the action
    dbl.remove_role_assignment(sp["id"], SUB1, "Contributor")
    denied = own_assignments(f"principalId eq '{sp['id']}'")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "AuthorizationFailed"
    assert "Microsoft.Authorization/roleAssignments/read" in denied.json()["error"]["message"]

    # the secret deleted in the portal: AADSTS7000215
    assert login().status_code == 200
    assert dbl.remove_password_out_of_band(app["appId"]) == 1
    gone = login()
    assert gone.status_code == 401
    assert gone.json()["error"] == "invalid_client" and gone.json()["error_codes"] == [7000215]

    # the application deleted in the portal: AADSTS700016, and it is soft-deleted
    dbl.delete_application_out_of_band(app["appId"])
    missing = login()
    assert missing.status_code == 400
    assert missing.json()["error"] == "unauthorized_client"
    assert missing.json()["error_codes"] == [700016]
    assert app["appId"] in missing.json()["error_description"]
    assert dbl.application(app_id=app["appId"]) is None
    assert [a.app_id for a in dbl.deleted_applications] == [app["appId"]]
    assert dbl.service_principal(app["appId"]) is None


# --------------------------------------------------------------------------- guests in a second tenant
# Entra B2B collaboration: an invited guest is a user object of its own in the resource
# tenant (userType Guest, a `#EXT#` user principal name, its own object id) and signs in
# there with the home account. A token for the resource tenant comes from that tenant's
# authority (`login.microsoftonline.com/{tenant}`); "organizations" gives the home tenant's
# (Microsoft identity platform: "Application configuration options — authority"). ARM
# "Tenants - List" (api-version 2022-12-01) lists every tenant of the account, each with
# tenantId, displayName, domains, defaultDomain and tenantCategory.


def _device_sign_in(dbl, make_app, tenant, user, scope):
    app = make_app(tenant)
    flow = app.initiate_device_flow(scopes=[scope])
    assert "user_code" in flow, flow
    dbl.approve(flow["user_code"], user)
    return app, poll(app, flow)


def test_guest_reaches_the_resource_tenant_only_through_its_authority(dbl, make_app, http):
    fabrikam = dbl.add_tenant(display_name="Fabrikam", domain="fabrikam.onmicrosoft.com")
    guest = dbl.add_guest(dbl.alice, fabrikam.id)
    assert guest.user_type == "Guest" and guest.oid != dbl.alice.oid
    assert guest.upn.endswith("#EXT#@fabrikam.onmicrosoft.com")
    arm_scope = f"{dbl.arm_url}/.default"

    home_app, home = _device_sign_in(dbl, make_app, "organizations", ALICE_UPN, arm_scope)
    assert home["id_token_claims"]["tid"] == DEFAULT_TENANT_ID
    there_app, there = _device_sign_in(
        dbl, make_app, "fabrikam.onmicrosoft.com", ALICE_UPN, arm_scope
    )
    claims = there["id_token_claims"]
    assert (claims["tid"], claims["oid"]) == (fabrikam.id, guest.oid)
    assert claims["preferred_username"] == ALICE_UPN  # the home account signs in
    assert claims["idp"] == f"https://sts.windows.net/{DEFAULT_TENANT_ID}/"
    # one person: MSAL's home account id is the same in both tenants
    assert (
        home_app.get_accounts()[0]["home_account_id"]
        == there_app.get_accounts()[0]["home_account_id"]
        == f"{dbl.alice.oid}.{DEFAULT_TENANT_ID}"
    )
    assert dbl.access_tokens[there["access_token"]].tenant_id == fabrikam.id

    for token in (home["access_token"], there["access_token"]):
        listed = http.get(
            f"{dbl.arm_url}/tenants", params={"api-version": "2022-12-01"}, headers=bearer(token)
        )
        assert listed.status_code == 200
        tenants = {t["tenantId"]: t for t in listed.json()["value"]}
        assert set(tenants) == {DEFAULT_TENANT_ID, fabrikam.id}
        assert tenants[fabrikam.id]["defaultDomain"] == "fabrikam.onmicrosoft.com"
        assert tenants[fabrikam.id]["tenantCategory"] == "Home"


def test_a_tenant_the_account_is_not_in_refuses_the_sign_in(dbl, make_app):
    fabrikam = dbl.add_tenant(display_name="Fabrikam")
    _, result = _device_sign_in(dbl, make_app, fabrikam.id, ALICE_UPN, f"{dbl.arm_url}/.default")
    assert result["error_codes"] == [50020]  # no guest object there: not in the tenant
    assert "access_token" not in result


def test_a_guest_registers_applications_only_with_a_role(dbl, make_app, http):
    fabrikam = dbl.add_tenant(display_name="Fabrikam", allowed_to_create_apps=True)
    guest = dbl.add_guest(dbl.alice, fabrikam.id)
    graph_scope = f"{dbl.graph_url}/.default"
    _, result = _device_sign_in(dbl, make_app, fabrikam.id, ALICE_UPN, graph_scope)
    r = http.post(
        f"{dbl.graph_url}/v1.0/applications",
        headers=bearer(result["access_token"]),
        json={"displayName": "guest-app", "signInAudience": "AzureADMyOrg"},
    )
    assert r.status_code == 403  # the member setting does not cover guests
    assert r.json()["error"]["code"] == "Authorization_RequestDenied"
    guest.directory_roles.add(APPLICATION_DEVELOPER)
    app = create_app(http, dbl, result["access_token"], name="guest-app")
    assert dbl.application(app_id=app["appId"]).tenant_id == fabrikam.id


def test_refresh_token_redeemed_at_another_tenants_authority(dbl, ca, http):
    # MSAL finds refresh tokens by home account: an application against tenant B sharing
    # the cache redeems the home sign-in's refresh token at B's token endpoint, and gets a
    # token for the guest object there; "organizations" keeps issuing the home tenant's.
    fabrikam = dbl.add_tenant(display_name="Fabrikam")
    guest = dbl.add_guest(dbl.alice, fabrikam.id)
    northwind = dbl.add_tenant(display_name="Northwind")
    arm_scope = f"{dbl.arm_url}/.default"
    with ca.httpx_client(timeout=10) as client:

        def app_for(tenant, cache=None):
            return msal.PublicClientApplication(
                AZURE_CLI_CLIENT_ID,
                authority=f"{dbl.authority_host}/{tenant}",
                instance_discovery=False,
                http_client=client,
                **({"token_cache": cache} if cache is not None else {}),
            )

        home = app_for("organizations")
        flow = home.initiate_device_flow(scopes=[arm_scope])
        dbl.approve(flow["user_code"], ALICE_UPN)
        assert "access_token" in poll(home, flow)
        account = home.get_accounts()[0]

        there = app_for(fabrikam.id, home.token_cache)
        graph = there.acquire_token_silent_with_error([f"{dbl.graph_url}/.default"], account=account)
        token = dbl.access_tokens[graph["access_token"]]
        assert (token.tenant_id, token.user.oid) == (fabrikam.id, guest.oid)

        again = home.acquire_token_silent_with_error([arm_scope], account=account, force_refresh=True)
        assert dbl.access_tokens[again["access_token"]].tenant_id == DEFAULT_TENANT_ID

        elsewhere = app_for(northwind.id, home.token_cache)
        refused = elsewhere.acquire_token_silent_with_error([arm_scope], account=account)
        assert refused["error_codes"] == [50020]  # not in that tenant
