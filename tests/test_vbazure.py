"""The VBAzure appliance client against the HTTPS appliance double."""

from __future__ import annotations

import ssl
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bot.clients.vbazure import (
    AZURE_ACCOUNT_PURPOSES,
    DEFAULT_PURPOSES,
    AccountSettings,
    ApplianceError,
    VBAzureClient,
)
from bot.core.errors import VeeamSAError
from tests.fakes.tls import TestCA
from tests.fakes.vbazure import DEFAULT_PASSWORD, DEFAULT_USERNAME, VBAzureDouble

APP_ID = "0b9f6a3e-6c55-4f0e-9d7b-1a2b3c4d5e6f"
TENANT_ID = "7f3c1a52-0d1e-4b8e-9b1a-5e2c3d4f6a7b"
SUBSCRIPTION = "3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
SECRET = "xY1" + "8Q~" + "s3cr3t-" + uuid.uuid4().hex
NEW_SECRET = "zZ9" + "8Q~" + "n3w-" + uuid.uuid4().hex

SAVE = r"/saveByApp$"
LIST = r"/accounts/azure/service$"
TOKEN = r"/oauth2/token$"


class FakeTime:
    """An injected clock that only moves when the client sleeps or the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def dbl(ca: TestCA) -> Iterator[VBAzureDouble]:
    with VBAzureDouble(ca) as double:
        yield double
        assert double.internal_errors == []


@pytest.fixture
def http(ca: TestCA) -> Iterator[httpx.Client]:
    client = ca.httpx_client(timeout=5.0)
    yield client
    client.close()


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def client_for(
    dbl: VBAzureDouble,
    http: httpx.Client,
    fake: FakeTime,
    *,
    password: str = DEFAULT_PASSWORD,
    **kw: Any,
) -> VBAzureClient:
    return VBAzureClient(
        dbl.url, DEFAULT_USERNAME, password, http, sleep=fake.sleep, clock=fake.clock, **kw
    )


@pytest.fixture
def client(dbl: VBAzureDouble, http: httpx.Client, fake: FakeTime) -> VBAzureClient:
    return client_for(dbl, http, fake)


def save(client: VBAzureClient, name: str = "prod-backup", secret: str = SECRET) -> str:
    return client.save_by_app(
        AccountSettings(
            name=name,
            description="Created by veeam-sa",
            application_id=APP_ID,
            tenant_id=TENANT_ID,
            client_secret=secret,
            subscriptions=[SUBSCRIPTION],
            purposes=DEFAULT_PURPOSES,
        )
    )


def update(client: VBAzureClient, account_id: str, secret: str = NEW_SECRET) -> None:
    client.update_by_app(
        account_id,
        AccountSettings(
            name="prod-backup",
            description="Renewed by veeam-sa",
            application_id=APP_ID,
            tenant_id=TENANT_ID,
            client_secret=secret,
            subscriptions=[SUBSCRIPTION],
        ),
    )


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    texts = [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
    for secret in (*secrets, DEFAULT_PASSWORD):
        for text in texts:
            assert secret not in text


# --------------------------------------------------------------------------- happy paths


def test_default_purposes_are_real_enum_values() -> None:
    assert set(DEFAULT_PURPOSES) <= AZURE_ACCOUNT_PURPOSES
    assert "WorkerManagement" not in DEFAULT_PURPOSES
    assert issubclass(ApplianceError, VeeamSAError)


def test_save_sync_then_list_and_get(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    account_id = save(client)

    stored = dbl.accounts[account_id]
    assert stored["clientSecret"] == SECRET
    assert stored["applicationId"] == APP_ID
    assert stored["tenantId"] == TENANT_ID
    assert stored["subscriptions"] == [SUBSCRIPTION]
    assert stored["purposes"] == list(DEFAULT_PURPOSES)
    assert stored["environment"] == "Global"
    assert dbl.grants == ["password"]

    listed = client.list_accounts()
    assert [a["id"] for a in listed] == [account_id]
    assert listed[0]["name"] == "prod-backup"
    assert listed[0]["cloudState"] == "Valid"
    assert SECRET not in repr(listed)

    one = client.get_account(account_id)
    assert one is not None and one["id"] == account_id and one["applicationId"] == APP_ID
    assert client.get_account(str(uuid.uuid4())) is None

    saves = dbl.events_for(SAVE)
    assert [(e.account_id, e.client_secret) for e in saves] == [(account_id, SECRET)]


@pytest.mark.parametrize("outcome", ["Success", "Warning"])
def test_save_202_operation_is_polled_through_every_running_status(
    client: VBAzureClient, dbl: VBAzureDouble, fake: FakeTime, outcome: str
) -> None:
    dbl.async_save = True
    dbl.operation_statuses = [
        "Pending",
        "Running",
        "RunningWithWarning",
        "RunningWithError",
        "Canceling",
    ]
    dbl.operation_outcome = outcome  # a warning is done, not a failure

    account_id = save(client)

    assert account_id in dbl.accounts
    polls = dbl.events_for(r"/operations/", "GET")
    assert len(polls) == 5  # four more in-progress statuses, then the outcome
    assert all(p.account_id == account_id for p in polls)
    assert fake.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_warning_without_a_result_finds_the_account(
    client: VBAzureClient, dbl: VBAzureDouble
) -> None:
    dbl.async_save = True
    dbl.operation_outcome = "Warning"
    dbl.warning_result = False  # the appliance may leave a Warning's result out
    account_id = save(client)
    assert list(dbl.accounts) == [account_id]
    assert len(dbl.events_for(LIST, "GET")) == 1


def test_failed_operation_raises_its_problem_without_the_secret(
    client: VBAzureClient, dbl: VBAzureDouble
) -> None:
    dbl.async_save = True
    dbl.operation_statuses = ["Pending", "Running", "RunningWithError"]
    dbl.operation_outcome = "Error"

    with pytest.raises(ApplianceError) as info:
        save(client)

    err = info.value
    assert err.kind == "operation"
    assert err.title == "Service account validation failed"
    assert err.detail and "client secret" in err.detail
    assert "Error" in str(err)
    assert dbl.accounts == {}
    assert_no_secret(err, SECRET)


def test_operation_that_never_finishes_times_out(
    dbl: VBAzureDouble, http: httpx.Client, fake: FakeTime
) -> None:
    dbl.async_save = True
    dbl.operation_statuses = ["Running"] * 1_000
    client = client_for(dbl, http, fake, operation_timeout=12)

    with pytest.raises(ApplianceError) as info:
        save(client)

    assert info.value.kind == "timeout"
    assert len(dbl.events_for(r"/operations/")) < 10


@pytest.mark.parametrize("asynchronous", [False, True])
def test_update_replaces_the_secret(
    client: VBAzureClient, dbl: VBAzureDouble, asynchronous: bool
) -> None:
    account_id = save(client)
    dbl.set_cloud_state(account_id, "InvalidClientSecret")
    dbl.async_save = asynchronous

    update(client, account_id)

    stored = dbl.accounts[account_id]
    assert stored["clientSecret"] == NEW_SECRET
    assert stored["description"] == "Renewed by veeam-sa"
    assert stored["cloudState"] == "Valid"
    puts = dbl.events_for(r"/updateByApp/", "PUT")
    assert [(e.account_id, e.client_secret) for e in puts] == [(account_id, NEW_SECRET)]


def test_update_of_unknown_account(client: VBAzureClient) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(ApplianceError) as info:
        update(client, missing)
    assert info.value.kind == "not_found"
    assert info.value.status == 404
    assert missing in str(info.value)
    assert_no_secret(info.value, NEW_SECRET)


def test_list_follows_paging(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    dbl.page_size = 2
    ids = {dbl.add_account(f"acct-{i}") for i in range(5)}
    dbl.set_expiration_date(next(iter(ids)), "2030-01-01T00:00:00Z")

    listed = client.list_accounts()

    assert {a["id"] for a in listed} == ids
    assert len(dbl.events_for(LIST, "GET")) == 3
    assert any(a["expirationDate"] == "2030-01-01T00:00:00Z" for a in listed)


def test_reads_answering_202_are_waited_for(
    client: VBAzureClient, dbl: VBAzureDouble, fake: FakeTime
) -> None:
    dbl.page_size = 2
    ids = {dbl.add_account(f"acct-{i}", subscriptions=[SUBSCRIPTION]) for i in range(3)}
    dbl.async_reads = True

    listed = client.list_accounts()

    assert {a["id"] for a in listed} == ids
    assert all(a["subscriptionIds"] == [SUBSCRIPTION] for a in listed)
    assert len(dbl.events_for(LIST, "GET")) == 2
    # each page: Pending in the 202, then Running, RunningWithWarning, Success
    assert len(dbl.events_for(r"/operations/", "GET")) == 6
    one = client.get_account(next(iter(ids)))
    assert one is not None and one["id"] in ids and one["accountOrigin"] == "Device Authentication"
    assert client.get_account(str(uuid.uuid4())) is None


def test_paging_when_total_count_is_null(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    dbl.page_size = 2
    dbl.total_count_null = True
    ids = {dbl.add_account(f"acct-{i}") for i in range(5)}

    assert {a["id"] for a in client.list_accounts()} == ids
    assert len(dbl.events_for(LIST, "GET")) == 3  # 2 + 2 + 1: the short page is the last

    ids.add(dbl.add_account("acct-x"))
    assert {a["id"] for a in client.list_accounts()} == ids  # 2 + 2 + 2 + 0
    assert len(dbl.events_for(LIST, "GET")) == 3 + 4


def test_role_name_is_read_from_the_token_answer(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    dbl.role_name = "Restore Operator"
    client.login()
    assert client.role_name == "Restore Operator"
    dbl.fault("POST", SAVE, 403)
    with pytest.raises(ApplianceError) as info:
        save(client)
    assert "'Restore Operator'" in str(info.value)


def test_api_version_is_configurable(
    dbl: VBAzureDouble, http: httpx.Client, fake: FakeTime
) -> None:
    client = client_for(dbl, http, fake, api_version="v8")
    assert client.list_accounts() == []
    assert dbl.events_for(r"^/api/v8/accounts")

    wrong = client_for(dbl, http, fake, api_version="v7")
    with pytest.raises(ApplianceError) as info:
        wrong.list_accounts()
    assert info.value.status == 404
    assert "'v7'" in str(info.value)


def test_base_url_may_end_in_api(dbl: VBAzureDouble, http: httpx.Client, fake: FakeTime) -> None:
    client = VBAzureClient(f"{dbl.url}/api/", DEFAULT_USERNAME, DEFAULT_PASSWORD, http)
    assert client.list_accounts() == []
    with pytest.raises(ValueError):
        VBAzureClient(dbl.url.replace("https", "http"), DEFAULT_USERNAME, DEFAULT_PASSWORD, http)


def test_validation_problem_is_reported(client: VBAzureClient) -> None:
    with pytest.raises(ApplianceError) as info:
        client.save_by_app(
            AccountSettings(
                name="prod-backup",
                description="",
                application_id="not-a-guid",
                tenant_id=TENANT_ID,
                client_secret=SECRET,
                subscriptions=[],
            )
        )
    err = info.value
    assert err.kind == "problem"
    assert err.status == 400
    assert err.title == "One or more validation errors occurred."
    assert err.detail == "The clientLoginParameters.applicationId field must be a GUID."
    assert err.errors == {
        "clientLoginParameters.applicationId": [
            "The clientLoginParameters.applicationId field must be a GUID."
        ]
    }
    assert err.trace_id
    assert "clientLoginParameters.applicationId: The clientLoginParameters" in str(err)
    assert_no_secret(err, SECRET)


def test_per_field_errors_are_shown_and_scrubbed(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    problem = {
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "detail": None,
        "traceId": "00-abc-01",
        "errors": {
            "clientLoginParameters.subscriptions": ["Subscription x is not accessible."],
            "clientLoginParameters.clientSecret": [f"'{SECRET}' is invalid."],
        },
    }
    dbl.fault("POST", SAVE, 400, body=problem)
    with pytest.raises(ApplianceError) as info:
        save(client)
    err = info.value
    assert "clientLoginParameters.subscriptions: Subscription x is not accessible." in str(err)
    assert err.trace_id == "00-abc-01"
    assert err.errors["clientLoginParameters.clientSecret"] == ["'[redacted]' is invalid."]
    assert_no_secret(err, SECRET)


# --------------------------------------------------------------------------- tokens


def test_token_is_refreshed_shortly_before_expiry(
    client: VBAzureClient, dbl: VBAzureDouble, fake: FakeTime
) -> None:
    dbl.token_lifetime = 120

    client.list_accounts()
    fake.now += 59
    client.list_accounts()
    assert dbl.grants == ["password"]

    fake.now += 2  # 61 s: within 60 s of the 120 s expiry
    client.list_accounts()
    assert dbl.grants == ["password", "refresh_token"]

    client.list_accounts()
    assert dbl.grants == ["password", "refresh_token"]


def test_expired_refresh_token_falls_back_to_password(
    client: VBAzureClient, dbl: VBAzureDouble, fake: FakeTime
) -> None:
    client.list_accounts()
    dbl.revoke_refresh_tokens()
    fake.now += 3_600

    client.list_accounts()

    assert dbl.grants == ["password", "refresh_token", "password"]


def test_401_mid_session_renews_once_and_retries(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    account_id = save(client)
    dbl.revoke_access_tokens()

    update(client, account_id)

    assert dbl.grants == ["password", "refresh_token"]
    assert dbl.accounts[account_id]["clientSecret"] == NEW_SECRET
    statuses = [e.method for e in dbl.events_for(r"/updateByApp/")]
    assert statuses == ["PUT", "PUT"]  # the refused one, then the accepted one


def test_401_with_refused_refresh_signs_in_again(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    client.list_accounts()
    dbl.revoke_access_tokens()
    dbl.revoke_refresh_tokens()

    client.list_accounts()

    assert dbl.grants == ["password", "refresh_token", "password"]


def test_401_right_after_sign_in_is_a_credentials_error(
    client: VBAzureClient, dbl: VBAzureDouble
) -> None:
    dbl.fault("GET", LIST, 401, times=5)

    with pytest.raises(ApplianceError) as info:
        client.list_accounts()

    assert info.value.kind == "credentials"
    assert "VEEAM_USERNAME/VEEAM_PASSWORD" in str(info.value)
    assert dbl.grants == ["password"]


def test_bad_credentials_are_named(dbl: VBAzureDouble, http: httpx.Client, fake: FakeTime) -> None:
    client = client_for(dbl, http, fake, password="wrong-password-123")

    with pytest.raises(ApplianceError) as info:
        client.list_accounts()

    err = info.value
    assert err.kind == "credentials"
    assert "the appliance rejected VEEAM_USERNAME/VEEAM_PASSWORD" in str(err)
    assert "The user name or password is incorrect." in str(err)
    assert "wrong-password-123" not in repr(vars(err)) + str(err)
    assert dbl.events_for(LIST) == []  # no API call without a session
    assert len(dbl.grants) == 1  # a refusal is not retried


def test_mfa_user_gets_a_clear_error(
    client: VBAzureClient, dbl: VBAzureDouble, fake: FakeTime
) -> None:
    dbl.mfa_users.add(DEFAULT_USERNAME)
    with pytest.raises(ApplianceError) as info:
        client.login()
    assert info.value.kind == "mfa"
    assert "VEEAM_USERNAME" in str(info.value)


def test_403_is_a_clear_error(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    dbl.fault("POST", SAVE, 403)

    with pytest.raises(ApplianceError) as info:
        save(client)

    err = info.value
    assert err.kind == "forbidden"
    assert err.status == 403
    assert "the appliance user lacks the right to manage service accounts" in str(err)
    assert len(dbl.events_for(SAVE)) == 1
    assert_no_secret(err, SECRET)


def test_one_sign_in_for_many_threads(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            client.list_accounts()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert dbl.grants == ["password"]
    assert len(dbl.events_for(LIST)) == 8


# --------------------------------------------------------------------------- retries


def test_5xx_is_retried_then_succeeds(
    client: VBAzureClient, dbl: VBAzureDouble, fake: FakeTime
) -> None:
    dbl.fault("GET", LIST, 503, times=2)

    assert client.list_accounts() == []

    assert len(dbl.events_for(LIST)) == 3
    assert fake.sleeps == [1.0, 2.0]


def test_429_honours_retry_after(client: VBAzureClient, dbl: VBAzureDouble, fake: FakeTime) -> None:
    dbl.fault("POST", SAVE, 429, retry_after=7)

    account_id = save(client)

    assert list(dbl.accounts) == [account_id]
    assert fake.sleeps == [7.0]


def test_retries_exhausted(client: VBAzureClient, dbl: VBAzureDouble, fake: FakeTime) -> None:
    dbl.fault("GET", LIST, 500, times=10)

    with pytest.raises(ApplianceError) as info:
        client.list_accounts()

    err = info.value
    assert err.kind == "unreachable"
    assert err.status == 500
    assert err.retryable
    assert len(dbl.events_for(LIST)) == 3
    assert fake.sleeps == [1.0, 2.0]


def test_token_endpoint_5xx_is_retried(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    dbl.fault("POST", TOKEN, 502)
    client.login()
    assert dbl.grants == ["password"]  # the faulted request never reached the handler
    assert len(dbl.events_for(TOKEN)) == 2


def test_timeout_is_retried(ca: TestCA, dbl: VBAzureDouble, fake: FakeTime) -> None:
    dbl.hang(LIST, 2.0)
    with ca.httpx_client(timeout=0.3) as http:
        client = client_for(dbl, http, fake)
        assert client.list_accounts() == []
    assert len(dbl.events_for(LIST)) == 2
    assert fake.sleeps == [1.0]


def test_save_whose_answer_was_lost_is_not_duplicated(
    ca: TestCA, dbl: VBAzureDouble, fake: FakeTime
) -> None:
    dbl.hang(SAVE, 2.0, after_processing=True)
    with ca.httpx_client(timeout=0.3) as http:
        client = client_for(dbl, http, fake)
        account_id = save(client)

    assert list(dbl.accounts) == [account_id]
    assert dbl.accounts[account_id]["clientSecret"] == SECRET
    assert len(dbl.events_for(SAVE)) == 1  # found by name and application, not posted again
    assert [e.client_secret for e in dbl.events_for(r"/updateByApp/")] == [SECRET]


def test_lost_save_answer_then_202_listing_creates_no_second_account(
    client: VBAzureClient, dbl: VBAzureDouble
) -> None:
    dbl.async_reads = True
    dbl.fault("POST", SAVE, 504, after_processing=True)  # the gateway lost the answer

    account_id = save(client)

    assert list(dbl.accounts) == [account_id]
    assert len(dbl.events_for(SAVE)) == 1
    assert len(dbl.events_for(LIST, "GET")) == 1
    assert [e.client_secret for e in dbl.events_for(r"/updateByApp/")] == [SECRET]


def test_save_after_5xx_that_did_not_create_posts_again(
    client: VBAzureClient, dbl: VBAzureDouble
) -> None:
    dbl.fault("POST", SAVE, 500)

    account_id = save(client)

    assert list(dbl.accounts) == [account_id]
    assert len(dbl.events_for(SAVE)) == 2
    assert len(dbl.events_for(LIST)) == 1  # looked before posting again


# --------------------------------------------------------------------------- secrets and TLS


def test_secret_never_appears_in_exception_text(client: VBAzureClient, dbl: VBAzureDouble) -> None:
    echoing = {
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
        "title": f"Secret {SECRET} rejected",
        "status": 400,
        "detail": f"clientSecret '{SECRET}' is not valid; password {DEFAULT_PASSWORD}",
        "instance": "/api/v8.1/accounts/azure/service/saveByApp",
    }
    dbl.fault("POST", SAVE, 400, body=echoing)
    with pytest.raises(ApplianceError) as info:
        save(client)
    assert "[redacted]" in str(info.value)
    assert_no_secret(info.value, SECRET)

    dbl.fault("POST", SAVE, 503, times=3, body=echoing)
    with pytest.raises(ApplianceError) as info:
        save(client, secret=SECRET)
    assert_no_secret(info.value, SECRET)

    account_id = save(client)
    echo_new = {**echoing, "title": f"Secret {NEW_SECRET} rejected", "detail": NEW_SECRET}
    dbl.fault("PUT", r"/updateByApp/", 409, body=echo_new)
    with pytest.raises(ApplianceError) as info:
        update(client, account_id)
    assert_no_secret(info.value, SECRET, NEW_SECRET)


def test_verification_is_on(dbl: VBAzureDouble, fake: FakeTime) -> None:
    # The system store does not know the test CA: the handshake must fail, not be skipped.
    with httpx.Client(verify=ssl.create_default_context(), trust_env=False, timeout=5) as http:
        client = client_for(dbl, http, fake)
        with pytest.raises(ApplianceError) as info:
            client.list_accounts()

    err = info.value
    assert err.kind == "tls"
    assert "SSL_CERT_FILE" in str(err)
    assert fake.sleeps == []  # not retried
    assert dbl.events == []  # nothing, not even the password, reached the appliance


def test_certificate_from_another_ca_is_refused(ca: TestCA, fake: FakeTime) -> None:
    other = TestCA()  # a CA that did not issue the double's certificate
    with VBAzureDouble(other) as dbl, ca.httpx_client(timeout=5) as http:
        client = client_for(dbl, http, fake)
        with pytest.raises(ApplianceError) as info:
            client.login()
    assert info.value.kind == "tls"
    other.close()


# --------------------------------------------------------------------------- the double itself


def test_double_speaks_problem_documents(dbl: VBAzureDouble, http: httpx.Client) -> None:
    r = http.get(f"{dbl.url}/api/v8.1/accounts/azure/service")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert set(r.json()) == {"type", "title", "status", "detail"}  # ProblemDetails401

    bad = http.post(
        f"{dbl.url}/api/oauth2/token",
        data={"grant_type": "Password", "username": DEFAULT_USERNAME, "password": "nope"},
    )
    assert bad.status_code == 401
    assert bad.json()["title"] == "Unauthorized" and bad.json()["traceId"]

    good = http.post(
        f"{dbl.url}/api/oauth2/token",
        data={"grant_type": "Password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD},
    ).json()
    assert good["token_type"] == "bearer"
    assert good["expires_in"] == 3600
    assert good["roleName"] == "Portal Administrator"
    assert {".issued", ".expires", "refresh_token"} <= set(good)

    headers = {"Authorization": f"Bearer {good['access_token']}"}
    empty = http.post(
        f"{dbl.url}/api/v8.1/accounts/azure/service/saveByApp", json={}, headers=headers
    )
    assert empty.status_code == 400
    assert empty.json()["detail"] == "The accountInfo field is required."
    assert http.get(f"{dbl.url}/api/v9/accounts/azure/service", headers=headers).status_code == 404
