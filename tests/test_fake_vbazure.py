"""The VBAzure appliance double speaks the v8.1 wire formats: its answers are checked
against JSON Schemas written from the vendor's v8.1 OpenAPI document
(``tests/schemas/vbazure/``), and each rule it models from that document fires."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry, Resource

from tests.fakes.tls import TestCA
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble

SCHEMAS = Path(__file__).parent / "schemas" / "vbazure"
BASE = "https://veeam-sa.invalid/schemas/vbazure/"
APP_ID = "0b9f6a3e-6c55-4f0e-9d7b-1a2b3c4d5e6f"
TENANT_ID = "7f3c1a52-0d1e-4b8e-9b1a-5e2c3d4f6a7b"
SUB_A = "3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
SUB_B = "4a3b2c1d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


REGISTRY = _registry()


def check(shape: str, value: Any) -> None:
    """Validate ``value`` against ``tests/schemas/vbazure/{shape}.json``."""
    schema = json.loads((SCHEMAS / f"{shape}.json").read_text())
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(value)


def invalid(shape: str, value: Any) -> bool:
    try:
        check(shape, value)
    except jsonschema.ValidationError:
        return True
    return False


@pytest.fixture
def dbl(ca: TestCA) -> Iterator[VBAzureDouble]:
    with VBAzureDouble(ca) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def http(ca: TestCA) -> Iterator[httpx.Client]:
    with ca.httpx_client(timeout=5.0) as client:
        yield client


def token(dbl: VBAzureDouble, http: httpx.Client) -> dict[str, str]:
    answer = http.post(
        f"{dbl.url}/api/oauth2/token",
        data={"grant_type": "Password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD},
    )
    assert answer.status_code == 200
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def body(name: str = "prod", secret: str = "s3cr3t-value", subs: list[str] | None = None) -> dict:
    return {
        "accountInfo": {"name": name, "description": "d"},
        "clientLoginParameters": {
            "azureEnvironment": "Global",
            "applicationId": APP_ID,
            "tenantId": TENANT_ID,
            "clientSecret": secret,
            "azureAccountPurposes": ["VirtualMachineBackup", "Repository"],
            "subscriptions": subs if subs is not None else [SUB_A, SUB_B],
        },
    }


def poll_to_end(dbl: VBAzureDouble, http: httpx.Client, auth: dict, op: dict) -> list[dict]:
    """Every state of an operation until it is done, each checked against the schema."""
    seen = [op]
    check("async-operation", op)
    for _ in range(20):
        if seen[-1]["status"] not in (
            "Pending",
            "Running",
            "RunningWithWarning",
            "RunningWithError",
            "Canceling",
        ):
            return seen
        answer = http.get(seen[-1]["_links"]["self"]["href"], headers=auth)
        assert answer.status_code == 200
        check("async-operation", answer.json())
        seen.append(answer.json())
    raise AssertionError("the operation never finished")


# --------------------------------------------------------------------------- the schemas


def test_schemas_are_valid_and_strict() -> None:
    for path in SCHEMAS.glob("*.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))
    account = {"accountId": "a", "applicationId": APP_ID, "subscriptionIds": []}
    check("azure-account", account)
    # what older doubles (and the old client) got wrong is refused
    assert invalid("azure-account", {**account, "subscriptions": []})
    assert invalid("azure-account", {**account, "accountOrigin": "ImportedSecret"})
    assert invalid("links", [{"rel": "self", "href": "https://x"}])
    assert invalid("job-status", "NotStarted") and invalid("job-status", "Queued")
    assert invalid("page-of-azure-account", {"results": []})  # offset and limit required
    check("page-of-azure-account", {"offset": 0, "limit": 1, "totalCount": None, "results": []})
    assert invalid("problem-details", {"status": 403, "title": "Forbidden", "detail": "x"})
    assert invalid("problem-details", {"status": 400, "title": "Bad", "instance": "/x"})
    assert invalid("login", {"access_token": "t", "error": "invalid_grant"})


# --------------------------------------------------------------------------- answers


def test_token_answer_names_the_role(dbl: VBAzureDouble, http: httpx.Client) -> None:
    answer = http.post(
        f"{dbl.url}/api/oauth2/token",
        data={"grant_type": "Password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD},
    ).json()
    check("login", answer)
    assert answer["roleName"] == "Portal Administrator"

    bad = http.post(
        f"{dbl.url}/api/oauth2/token",
        data={"grant_type": "Password", "username": DEFAULT_USERNAME, "password": "nope"},
    )
    assert bad.status_code == 401
    assert bad.headers["content-type"].startswith("application/problem+json")
    check("problem-details", bad.json())
    assert "incorrect" in bad.json()["detail"]


def test_list_and_get_answer_200_and_202(dbl: VBAzureDouble, http: httpx.Client) -> None:
    auth = token(dbl, http)
    dbl.add_account("legacy", subscriptions=[SUB_A], origin="Imported Secret")
    account_id = dbl.add_account("device-made")
    base = f"{dbl.url}/api/v8.1/accounts/azure/service"

    page = http.get(base, headers=auth).json()
    check("page-of-azure-account", page)
    assert [a["accountOrigin"] for a in page["results"]] == [
        "Device Authentication",
        "Imported Secret",
    ]
    assert page["results"][1]["subscriptionIds"] == [SUB_A]
    one = http.get(f"{base}/{account_id}", headers=auth)
    assert one.status_code == 200
    check("azure-account", one.json())

    dbl.async_reads = True
    listed = http.get(base, headers=auth)
    assert listed.status_code == 202
    states = poll_to_end(dbl, http, auth, listed.json())
    assert [s["status"] for s in states] == ["Pending", "Running", "RunningWithWarning", "Success"]
    assert states[0]["result"] is None
    check("page-of-azure-account", states[-1]["result"])
    assert len(states[-1]["result"]["results"]) == 2

    single = http.get(f"{base}/{account_id}", headers=auth)
    assert single.status_code == 202
    result = poll_to_end(dbl, http, auth, single.json())[-1]["result"]
    check("azure-account", result)
    assert result["accountId"] == account_id

    missing = http.get(f"{base}/{uuid.uuid4()}", headers=auth)
    assert missing.status_code == 404
    check("problem-details", missing.json())


def test_writes_answer_a_json_string_or_an_operation(
    dbl: VBAzureDouble, http: httpx.Client
) -> None:
    auth = token(dbl, http)
    base = f"{dbl.url}/api/v8.1/accounts/azure/service"
    saved = http.post(f"{base}/saveByApp", json=body(), headers=auth)
    assert saved.status_code == 200
    check("account-id", saved.json())
    account_id = saved.json()

    dbl.async_save = True
    dbl.operation_outcome = "Warning"
    updated = http.put(
        f"{base}/updateByApp/{account_id}", json=body(secret="n3w", subs=[SUB_B]), headers=auth
    )
    assert updated.status_code == 202
    states = poll_to_end(dbl, http, auth, updated.json())
    assert [s["status"] for s in states] == ["Pending", "Running", "RunningWithWarning", "Warning"]
    assert states[-1]["result"] == account_id  # a warning is done: the work happened
    assert dbl.accounts[account_id]["clientSecret"] == "n3w"

    dbl.operation_outcome = "Error"
    dbl.operation_statuses = ["Running", "RunningWithError"]
    failed = http.put(f"{base}/updateByApp/{account_id}", json=body(secret="x"), headers=auth)
    states = poll_to_end(dbl, http, auth, failed.json())
    assert [s["status"] for s in states] == ["Running", "RunningWithError", "Error"]
    assert states[-1]["error"]["title"] and states[-1]["result"] is None
    assert dbl.accounts[account_id]["clientSecret"] == "n3w"


def test_update_replaces_subscriptions_and_purposes(dbl: VBAzureDouble, http: httpx.Client) -> None:
    auth = token(dbl, http)
    base = f"{dbl.url}/api/v8.1/accounts/azure/service"
    account_id = http.post(f"{base}/saveByApp", json=body(), headers=auth).json()
    assert dbl.accounts[account_id]["origin"] == "Imported Secret"
    changed = body()
    changed["clientLoginParameters"]["subscriptions"] = []
    changed["clientLoginParameters"]["azureAccountPurposes"] = ["Repository"]
    assert http.put(f"{base}/updateByApp/{account_id}", json=changed, headers=auth).is_success
    stored = dbl.accounts[account_id]
    assert stored["subscriptions"] == [] and stored["purposes"] == ["Repository"]
    assert stored["cloudState"] == "NoSubscriptions"


def test_problem_documents_follow_their_status(dbl: VBAzureDouble, http: httpx.Client) -> None:
    base = f"{dbl.url}/api/v8.1/accounts/azure/service"
    unauthenticated = http.get(base)
    assert unauthenticated.status_code == 401
    check("problem-details", unauthenticated.json())

    auth = token(dbl, http)
    bad = body()
    bad["clientLoginParameters"]["applicationId"] = "not-a-guid"
    refused = http.post(f"{base}/saveByApp", json=bad, headers=auth)
    assert refused.status_code == 400
    check("problem-details", refused.json())
    assert refused.json()["errors"] == {
        "clientLoginParameters.applicationId": [
            "The clientLoginParameters.applicationId field must be a GUID."
        ]
    }
    assert refused.json()["traceId"]

    form = http.post(
        f"{base}/saveByApp", content="x", headers={**auth, "Content-Type": "text/plain"}
    )
    assert form.status_code == 415
    check("problem-details", form.json())

    account_id = http.post(f"{base}/saveByApp", json=body(), headers=auth).json()
    http.post(f"{base}/saveByApp", json=body("other"), headers=auth)
    clash = http.put(f"{base}/updateByApp/{account_id}", json=body("other"), headers=auth)
    assert clash.status_code == 409
    check("problem-details", clash.json())

    dbl.fault("GET", r"/accounts/azure/service$", 403)
    forbidden = http.get(base, headers=auth)
    check("problem-details", forbidden.json())
    assert "detail" not in forbidden.json()  # ProblemDetails403 has none


def test_query_parameters_are_case_sensitive_and_total_may_be_null(
    dbl: VBAzureDouble, http: httpx.Client
) -> None:
    auth = token(dbl, http)
    for i in range(3):
        dbl.add_account(f"acct-{i}")
    base = f"{dbl.url}/api/v8.1/accounts/azure/service"

    proper = http.get(base, params={"Offset": "1", "Limit": "1"}, headers=auth).json()
    assert [a["name"] for a in proper["results"]] == ["acct-1"]
    assert proper["totalCount"] == 3

    lower = http.get(base, params={"offset": "1", "limit": "1"}, headers=auth).json()
    assert [a["name"] for a in lower["results"]] == ["acct-0", "acct-1", "acct-2"]

    dbl.total_count_null = True
    nulled = http.get(base, params={"Limit": "2"}, headers=auth).json()
    check("page-of-azure-account", nulled)
    assert nulled["totalCount"] is None and len(nulled["results"]) == 2


def test_fault_after_processing_loses_only_the_answer(
    dbl: VBAzureDouble, http: httpx.Client
) -> None:
    auth = token(dbl, http)
    dbl.fault("POST", r"/saveByApp$", 504, after_processing=True)
    lost = http.post(
        f"{dbl.url}/api/v8.1/accounts/azure/service/saveByApp", json=body(), headers=auth
    )
    assert lost.status_code == 504
    assert [a["name"] for a in dbl.accounts.values()] == ["prod"]


def test_export_and_check_permissions(dbl: VBAzureDouble, http: httpx.Client) -> None:
    """exportPermissionsByApp answers the role-like JSON file as octet-stream; checkPermissions
    reads its query arrays, answers a SubscriptionsListingResult naming what is missing, and
    records the outcome in the account's azurePermissionsState."""
    auth = token(dbl, http)
    base = f"{dbl.url}/api/v8.1/accounts/azure/service"
    login = body()["clientLoginParameters"]

    missing_sub = http.post(f"{base}/exportPermissionsByApp", headers=auth, json=login)
    assert missing_sub.status_code == 400
    exported = http.post(
        f"{base}/exportPermissionsByApp", params={"subscriptionId": SUB_A}, headers=auth, json=login
    )
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/octet-stream"
    [block] = json.loads(exported.content)["permissions"]
    needed = dbl.required_permissions
    assert set(block["actions"]) == set(
        needed["VirtualMachineBackup"]["actions"] + needed["Repository"]["actions"]
    )
    assert set(block["dataActions"]) == set(needed["Repository"]["dataActions"])
    assert block["notActions"] == [] and block["notDataActions"] == []

    account_id = http.post(f"{base}/saveByApp", headers=auth, json=body()).json()
    url = f"{base}/{account_id}/checkPermissions"
    assert http.post(f"{base}/{uuid.uuid4()}/checkPermissions", headers=auth).status_code == 404

    # everything present
    ok = http.post(url, params=[("subscriptionId", SUB_A), ("purposes", "Repository")], headers=auth)
    assert ok.status_code == 200
    check("subscriptions-listing-result", ok.json())
    [sub] = ok.json()["subscriptions"]
    assert (sub["id"], sub["permissionsState"], sub["missingPermissions"]) == (
        SUB_A,
        "AvailableAll",
        [],
    )

    # the application holds only some of it; one provider is not registered on SUB_B
    held = {"actions": ["Microsoft.Storage/*"], "dataActions": []}
    dbl.azure_permissions = lambda app_id, sub_id: [held] if app_id == APP_ID else []
    dbl.missing_providers = {SUB_B: ["Microsoft.KeyVault"]}
    answer = http.post(
        url,
        params=[("subscriptionId", SUB_A), ("subscriptionId", SUB_B), ("purposes", "Repository")],
        headers=auth,
    ).json()
    check("subscriptions-listing-result", answer)
    a, b = answer["subscriptions"]
    assert a["missingPermissions"] == [] and a["permissionsState"] == "Insufficient"
    assert set(a["missingDataActions"]) == set(needed["Repository"]["dataActions"])
    assert a["missingPurposes"][0]["purpose"] == "Repository"
    assert b["missingResourceProviders"] == ["Microsoft.KeyVault"]
    assert b["resourceProvidersState"] == "Insufficient"
    account = http.get(f"{base}/{account_id}", headers=auth).json()
    check("azure-account", account)
    assert account["azurePermissionsState"] == ["MissingPermissions"]
    assert account["azurePermissionsStateCheckTimeUtc"]

    # granted: cleared
    held["dataActions"] = ["Microsoft.KeyVault/vaults/keys/*", "Microsoft.Storage/*"]
    dbl.missing_providers = {}
    again = http.post(
        url, params=[("subscriptionId", SUB_A), ("purposes", "Repository")], headers=auth
    ).json()
    assert again["subscriptions"][0]["permissionsState"] == "AvailableAll"
    assert http.get(f"{base}/{account_id}", headers=auth).json()["azurePermissionsState"] == [
        "AllPermissionsAvailable"
    ]
