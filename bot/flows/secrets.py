"""A new client secret: added within the tenant's policy, stored encrypted at once.

Creation and renewal both add secrets this way; `crash_point` marks the moments a test may
cut the power at.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.clients.graph import GraphClient
from bot.clients.signin import Identity
from bot.core.certs import Certificate, new_certificate, new_key
from bot.core.clock import iso_utc, parse_time
from bot.core.errors import POLICY_LIFETIME, MicrosoftError, SignInError, VeeamSAError, policy_id
from bot.core.logs import register_secret_value as register
from storage import queries

if TYPE_CHECKING:
    from bot.flows.context import Context


class SecretProofFailed(VeeamSAError):
    """The new secret could not obtain a token (or its application is not in the tenant)."""


def crash_point(step: str) -> None:
    """Test hook: `VEEAM_SA_CRASH_AT=<step>` kills the process there, as a power cut would."""
    if os.environ.get("VEEAM_SA_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


#: Lifetimes tried, longest first, when a tenant policy refuses the requested one and the
#: policy itself cannot be read.
STEP_DOWN_DAYS = (180, 90, 60, 30, 14, 7, 1)
#: Kept below a policy's cap, so clocks a little apart never make Graph refuse it.
POLICY_MARGIN = timedelta(minutes=10)


def add_password_within_policy(
    graph: GraphClient, object_id: str, display_name: str, now: datetime, wanted: timedelta
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Add a password ending `wanted` from `now`, or — when the tenant's app management
    policy refuses that lifetime (Graph does not shorten it) — the longest the policy allows:
    its cap when the signed-in account may read the policy, else the longest of
    `STEP_DOWN_DAYS` Graph accepts. Returns Graph's answer and, when shortened, what limited
    it (`policy`, `days`, `read`). A policy that forbids secrets raises as Graph answered."""
    return _within_policy(
        lambda lifetime: graph.add_password(object_id, display_name, now + lifetime),
        graph.password_max_lifetime,
        wanted,
    )


def add_secret(
    services: Context,
    graph: GraphClient,
    object_id: str,
    flow: dict[str, Any],
    account_id: int,
    state: str,
    crash_step: str,
) -> dict[str, Any]:
    """Add a password with an explicit end date and store it, encrypted, at once.

    The row keeps what Graph returned. A tenant app management policy may allow less than
    `VEEAM_SA_SECRET_DAYS`: then the secret lasts as long as the policy allows, and the
    returned row says so under `policy_limit` (not stored). Between Graph's answer and the
    insert lies the one moment a crash loses a secret: the callers remove passwords they do
    not know before adding one.
    """
    now = services.clock()
    created, limit = add_password_within_policy(
        graph,
        object_id,
        f"veeam-sa {now.date().isoformat()}",
        now,
        timedelta(days=services.config.secret_days),
    )
    crash_point(crash_step)  # issued by Graph, not yet stored: the unknowable case
    end = now + timedelta(days=limit["days"] if limit else services.config.secret_days)
    row = {
        "account_id": account_id,
        "key_id": created["keyId"],
        "hint": created.get("hint") or "",
        "end_at": iso_utc(created.get("endDateTime"))
        or end.astimezone(UTC).isoformat(timespec="seconds"),
        "created_at": queries.utcnow_iso(now),
        # Masked in logs while the flow runs; the client-secret pattern covers it after.
        "ciphertext": services.cipher.encrypt(register(created["secretText"], flow["id"])),
        "state": state,
    }
    created.clear()  # drop the plaintext as early as possible
    return _store(services, flow, row, "azure.secret", {}, limit)


def _store(
    services: Context,
    flow: dict[str, Any],
    row: dict[str, Any],
    action: str,
    detail: dict[str, Any],
    limit: dict[str, Any] | None,
) -> dict[str, Any]:
    """Insert a new credential's row (encrypted) with its audit row, in one transaction;
    the returned row says under `policy_limit` what shortened it, if anything."""
    db = services.store.db
    with db.atomic():
        row["id"] = queries.insert_secret(db, row)
        queries.add_audit(
            db,
            actor=flow["requester"],
            action=action,
            target=flow["name"],
            outcome="created",
            detail={
                "flow": flow["id"],
                "key_id": row["key_id"],
                **detail,
                "end_at": row["end_at"],
                **({"policy_limit": limit} if limit else {}),
            },
        )
    if limit:
        row["policy_limit"] = limit
    return row


def _within_policy(
    put: Callable[[timedelta], dict[str, Any]],
    cap_of: Callable[[str | None], timedelta | None],
    wanted: timedelta,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """`put(wanted)`, or — when the tenant's app management policy refuses that lifetime —
    `put` with the longest the policy allows (see `add_password_within_policy`)."""
    try:
        return put(wanted), None
    except MicrosoftError as exc:
        if exc.code != POLICY_LIFETIME:
            raise
        refused = exc
    policy = policy_id(refused)
    cap = cap_of(policy)
    tries: list[timedelta] = []
    if cap is not None and cap < wanted:
        tries.append(cap - POLICY_MARGIN if cap > 2 * POLICY_MARGIN else cap)
    ceiling = min(wanted, cap) if cap is not None else wanted
    tries += [timedelta(days=d) for d in STEP_DOWN_DAYS if timedelta(days=d) < ceiling]
    for lifetime in tries:
        try:
            created = put(lifetime)
        except MicrosoftError as exc:
            if exc.code != POLICY_LIFETIME:
                raise
            continue
        return created, {
            "policy": policy,
            "days": max(1, round(lifetime.total_seconds() / 86400)),
            "read": cap is not None,
        }
    raise refused


def stored_certificate(services: Context, row: dict[str, Any]) -> Certificate:
    """The certificate (and private key) a stored row holds."""
    return Certificate.load(services.cipher.decrypt(row["ciphertext"]))


def add_certificate(
    services: Context,
    graph: GraphClient,
    object_id: str,
    flow: dict[str, Any],
    account_id: int,
    state: str,
    crash_step: str,
    current: Certificate | None = None,
) -> dict[str, Any]:
    """A new key pair and self-signed certificate, put on the application and stored (the
    private key encrypted) at once; the row looks like a secret's (`kind` `certificate`,
    `hint` the start of the thumbprint).

    The first certificate of an application is set with `PATCH keyCredentials`, which
    replaces the whole collection — so one a crash left unknown goes with it. A renewal
    adds one beside `current` with `addKey`, proving possession of `current`. The lifetime
    is `VEEAM_SA_SECRET_DAYS`, or the longest the tenant's policy allows for certificates.
    """
    now = services.clock()
    key = new_key()
    subject = f"veeam-sa {flow['name']}"
    label = f"veeam-sa {now.date().isoformat()}"
    made: dict[str, Certificate] = {}

    def put(lifetime: timedelta) -> dict[str, Any]:
        cert = new_certificate(subject, now, lifetime, key)
        credential = {**cert.key_credential(label), "keyId": str(uuid.uuid4())}
        if current is None:
            graph.set_first_key(object_id, credential)
            answer: dict[str, Any] = {"keyId": credential["keyId"]}
        else:
            answer = graph.add_key(object_id, credential, current.proof_token(object_id, now))
        made["cert"] = cert
        return answer

    created, limit = _within_policy(
        put, graph.key_max_lifetime, timedelta(days=services.config.secret_days)
    )
    cert = made["cert"]
    crash_point(crash_step)  # on the application, not yet stored
    for line in cert.key_pem.splitlines():
        if len(line) >= 40:  # the key's base64 lines, masked in logs while the flow runs
            register(line, flow["id"])
    row = {
        "account_id": account_id,
        "key_id": str(created["keyId"]),
        "hint": cert.hint,
        "end_at": cert.not_after.astimezone(UTC).isoformat(timespec="seconds"),
        "created_at": queries.utcnow_iso(now),
        "ciphertext": services.cipher.encrypt(cert.dump()),
        "state": state,
        "kind": "certificate",
    }
    return _store(
        services, flow, row, "azure.certificate", {"thumbprint": cert.thumbprint}, limit
    )


#: How long to keep trying a new credential before calling it broken.
PROOF_BUDGET_S = 60.0


def prove_certificate(
    services: Context,
    account: dict[str, Any],
    row: dict[str, Any],
    budget: float,
    sleep: Callable[[float], None],
) -> None:
    """A token for the application with a client assertion signed by the stored
    certificate, retried while it propagates; `SecretProofFailed` when none comes."""
    cert = stored_certificate(services, row)
    failure = services.device.prove_certificate(
        str(account["tenant_id"]),
        str(account["app_id"]),
        cert.key_pem,
        cert.thumbprint,
        budget,
        sleep,
    )
    if failure is not None:
        raise SecretProofFailed(f"the new certificate could not obtain a token: {failure}")


def check_tenant(identity: Identity, account: dict[str, Any]) -> None:
    """A renewal or retirement signs in to the tenant the account lives in."""
    if identity.tenant_id.lower() != str(account["tenant_id"]).lower():
        raise SignInError(
            "other",
            f"that account is in tenant {identity.tenant_id}; `{account['name']}` lives in tenant "
            f"{account['tenant_id']}. Sign in with an account of that tenant",
        )


def object_id_of(db: Any, graph: GraphClient, account: dict[str, Any]) -> str:
    """The application's object id; an account imported from the appliance knows only its
    client id, so it is looked up (and recorded) the first time."""
    object_id = account["app_object_id"]
    if not object_id:
        found = graph.find_by_app_id(account["app_id"])
        if found is None:
            raise SecretProofFailed(
                f"no application with client id {account['app_id']} in this tenant"
            )
        object_id = str(found["id"])
        queries.update_account(db, account["id"], app_object_id=object_id)
    return str(object_id)


def old_key_ids(
    graph: GraphClient, object_id: str, old: list[dict[str, Any]], new: dict[str, Any]
) -> list[str]:
    """Graph key ids of the secrets being replaced. An imported account's old secret is
    known only by the expiry the appliance reported: match Graph's passwords on it."""
    keys = [s["key_id"] for s in old if not s["key_id"].startswith("appliance:")]
    placeholders = [parse_time(s["end_at"]) for s in old if s["key_id"].startswith("appliance:")]
    if placeholders:
        for password in graph.passwords(object_id):
            key_id = str(password.get("keyId"))
            end = password.get("endDateTime")
            if key_id == new["key_id"] or not end:
                continue
            if any(abs((parse_time(str(end)) - p).total_seconds()) <= 86400 for p in placeholders):
                keys.append(key_id)
    return keys
