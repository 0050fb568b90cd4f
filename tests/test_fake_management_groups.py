"""The Microsoft double's management groups, each rule from Microsoft's documentation:

- "Organize your resources with management groups" (learn.microsoft.com/azure/governance/
  management-groups/overview): a group holds subscriptions and other groups; access granted
  at a group is inherited by everything below it.
- REST "Management Groups - List / Get" (api-version 2021-04-01): `$expand=children` lists
  the direct children, each with `type` "/subscriptions" or
  "Microsoft.Management/managementGroups" (`ManagementGroupChildType` in the SDKs);
  `$recurse=true` the whole tree.
- "Azure custom roles": a custom role may name one management group among its assignable
  scopes, no more.
- "Understand scope for Azure RBAC" and "List Azure role assignments using the REST API":
  permissions and role assignments at `/providers/Microsoft.Management/managementGroups/{id}`;
  `$filter=principalId eq '…'` returns a principal's assignments at, above and below a scope.
"""

from __future__ import annotations

import uuid

import pytest

from tests.fakes.microsoft import (
    CONTRIBUTOR,
    DEFAULT_SUBSCRIPTIONS,
    ROLE_ASSIGNMENT_WRITE,
    MicrosoftDouble,
    permissions_allow,
)
from tests.fakes.tls import TestCA
from tests.test_fake_microsoft import bearer, create_app, create_sp

SUB1, SUB2 = (sid for sid, _ in DEFAULT_SUBSCRIPTIONS)
MG = "/providers/Microsoft.Management/managementGroups"
API = {"api-version": "2021-04-01"}
AUTH_API = {"api-version": "2022-04-01"}


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
        double.add_management_group("backup-prod", "Backup production", subscriptions=[SUB1])
        double.add_management_group("backup-lab", "Lab", parent="backup-prod")
        yield double
        assert double.internal_errors == []


@pytest.fixture
def http(ca):
    with ca.httpx_client(timeout=10) as client:
        yield client


def _group_user(dbl, role="Owner"):
    upn = f"mg-{uuid.uuid4().hex[:6]}@contoso.onmicrosoft.com"
    dbl.add_user(upn)
    dbl.grant_at(upn, f"{MG}/backup-prod", role)
    return upn, dbl.token_for(upn, audience="arm")


def test_groups_listed_and_expanded_with_their_children(dbl, http):
    _, token = _group_user(dbl)
    listed = http.get(f"{dbl.arm_url}{MG}", params=API, headers=bearer(token))
    assert listed.status_code == 200, listed.text
    # the group and the one below it (inherited read); nothing else
    assert sorted(g["name"] for g in listed.json()["value"]) == ["backup-lab", "backup-prod"]
    assert listed.json()["value"][0]["type"] == "Microsoft.Management/managementGroups"

    one = http.get(
        f"{dbl.arm_url}{MG}/backup-prod",
        params={**API, "$expand": "children", "$recurse": "false"},
        headers=bearer(token),
    ).json()
    assert one["properties"]["displayName"] == "Backup production"
    kids = {(c["type"], c["name"]) for c in one["properties"]["children"]}
    assert kids == {
        ("/subscriptions", SUB1),
        ("Microsoft.Management/managementGroups", "backup-lab"),
    }
    # without $expand, no children; a bad $expand is refused; api-version is required
    plain = http.get(f"{dbl.arm_url}{MG}/backup-prod", params=API, headers=bearer(token))
    assert "children" not in plain.json()["properties"]
    bad = http.get(
        f"{dbl.arm_url}{MG}/backup-prod",
        params={**API, "$expand": "grandchildren"},
        headers=bearer(token),
    )
    assert bad.status_code == 400
    assert http.get(f"{dbl.arm_url}{MG}/backup-prod", headers=bearer(token)).status_code == 400


def test_a_group_out_of_reach_is_refused_whether_or_not_it_exists(dbl, http):
    dbl.add_user("nobody@contoso.onmicrosoft.com")
    token = dbl.token_for("nobody@contoso.onmicrosoft.com", audience="arm")
    for group in ("backup-prod", "no-such-group"):
        r = http.get(f"{dbl.arm_url}{MG}/{group}", params=API, headers=bearer(token))
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "AuthorizationFailed"
    assert http.get(f"{dbl.arm_url}{MG}", params=API, headers=bearer(token)).json()["value"] == []


def test_permissions_at_the_group_and_inherited_below_it(dbl, http):
    upn, token = _group_user(dbl, "User Access Administrator")
    perms = http.get(
        f"{dbl.arm_url}{MG}/backup-prod/providers/Microsoft.Authorization/permissions",
        params=AUTH_API,
        headers=bearer(token),
    ).json()["value"]
    assert permissions_allow(perms, ROLE_ASSIGNMENT_WRITE)
    # the subscription in the group, and the nested group, inherit it
    for path in (f"/subscriptions/{SUB1}", f"{MG}/backup-lab"):
        inherited = http.get(
            f"{dbl.arm_url}{path}/providers/Microsoft.Authorization/permissions",
            params=AUTH_API,
            headers=bearer(token),
        ).json()["value"]
        assert permissions_allow(inherited, ROLE_ASSIGNMENT_WRITE), path
    # a subscription outside the group does not (and is not even listed)
    subs = http.get(
        f"{dbl.arm_url}/subscriptions", params={"api-version": "2022-12-01"}, headers=bearer(token)
    ).json()["value"]
    assert [s["subscriptionId"] for s in subs] == [SUB1]
    # a subscription moved into the group later inherits it at once
    dbl.move_subscription(SUB2, "backup-prod")
    later = http.get(
        f"{dbl.arm_url}/subscriptions/{SUB2}/providers/Microsoft.Authorization/permissions",
        params=AUTH_API,
        headers=bearer(token),
    ).json()["value"]
    assert permissions_allow(later, ROLE_ASSIGNMENT_WRITE)


def test_role_assignment_at_the_group_reaches_its_subscriptions(dbl, http):
    owner = dbl.token_for(audience="arm")  # alice: Owner on the subscriptions only
    graph = dbl.token_for()
    sp = create_sp(http, dbl, graph, create_app(http, dbl, graph)["appId"])
    name = str(uuid.uuid4())
    url = f"{dbl.arm_url}{MG}/backup-prod/providers/Microsoft.Authorization/roleAssignments/{name}"
    body = {
        "properties": {
            "roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{CONTRIBUTOR}",
            "principalId": sp["id"],
            "principalType": "ServicePrincipal",
        }
    }
    # Owner of a subscription in the group is not Owner of the group
    denied = http.put(url, params=AUTH_API, json=body, headers=bearer(owner))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "AuthorizationFailed"

    _, group_owner = _group_user(dbl)
    made = http.put(url, params=AUTH_API, json=body, headers=bearer(group_owner))
    assert made.status_code == 201, made.text
    assert made.json()["properties"]["scope"] == f"{MG}/backup-prod"
    # a principal's assignments on a subscription include those inherited from the group
    listed = http.get(
        f"{dbl.arm_url}/subscriptions/{SUB1}/providers/Microsoft.Authorization/roleAssignments",
        params={**AUTH_API, "$filter": f"principalId eq '{sp['id']}'"},
        headers=bearer(group_owner),
    ).json()["value"]
    assert [a["properties"]["scope"] for a in listed] == [f"{MG}/backup-prod"]
    assert dbl.blocks_of_application(sp["appId"], SUB1)  # what the appliance double sees
    assert not dbl.blocks_of_application(sp["appId"], SUB2)
    dbl.move_subscription(SUB2, "backup-prod")
    assert dbl.blocks_of_application(sp["appId"], SUB2)

    gone = http.delete(url, params=AUTH_API, headers=bearer(group_owner))
    assert gone.status_code == 200
    assert not dbl.blocks_of_application(sp["appId"], SUB1)
    assert http.delete(url, params=AUTH_API, headers=bearer(group_owner)).status_code == 204


def test_custom_role_assignable_at_one_group_only(dbl, http):
    _, token = _group_user(dbl)
    dbl.add_management_group("other", "Other")

    def put(scopes):
        return http.put(
            f"{dbl.arm_url}{MG}/backup-prod/providers/Microsoft.Authorization/roleDefinitions/"
            f"{uuid.uuid4()}",
            params=AUTH_API,
            json={
                "properties": {
                    "roleName": f"role {uuid.uuid4().hex[:6]}",
                    "type": "CustomRole",
                    "permissions": [{"actions": ["*/read"]}],
                    "assignableScopes": scopes,
                }
            },
            headers=bearer(token),
        )

    made = put([f"{MG}/backup-prod"])
    assert made.status_code == 201, made.text
    two = put([f"{MG}/backup-prod", f"{MG}/other"])
    assert two.status_code == 400
    assert "only one management group" in two.json()["error"]["message"]
    [role] = dbl.custom_roles()
    assert role.assignable_scopes == [f"{MG}/backup-prod"]
