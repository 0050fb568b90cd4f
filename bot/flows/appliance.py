"""Handing service accounts to the VBAzure appliance, keeping the bot's view in sync, and
the `/veeam-sa sync` and `/veeam-sa import` jobs.

When `VEEAM_URL` is configured, a created account is registered with `saveByApp` and a
renewed secret is pushed with `updateByApp` before the old secret is removed. Nothing here
runs without `VEEAM_URL`. The secret goes from the encrypted store straight into the
appliance's request body; it is never returned, logged or put in an error.

`updateByApp` replaces the account's settings, so an update sends the subscriptions
(`subscriptionIds`) and purposes the appliance holds for the account right now — read just
before — and never an empty list. `VEEAM_PURPOSES` is only for accounts the bot creates.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.clients.vbazure import (
    AZURE_ENVIRONMENTS,
    ORIGIN_CERTIFICATE,
    AccountSettings,
    CertificateUpload,
)
from bot.core.certs import Certificate, new_password
from bot.core.clock import parse_time
from bot.core.errors import ApplianceError
from bot.core.logs import register_secret_value as register
from bot.slack import blocks
from bot.slack.messages import appliance_text
from storage import queries

if TYPE_CHECKING:
    from bot.flows.context import Context

log = logging.getLogger(__name__)

#: Appliance `cloudState` values that mean all is well.
HEALTHY = frozenset({"Valid"})


def certificate_upload(account: dict[str, Any], cert: Certificate) -> CertificateUpload:
    """The certificate as the appliance takes it: a PKCS#12 file under a password made for
    this one hand-off (never stored, masked in logs)."""
    password = register(new_password())
    name = f"{account['name']}-{cert.hint}.pfx"
    return CertificateUpload(
        pkcs12_b64=base64.b64encode(cert.pkcs12(name, password)).decode(),
        password=password,
        name=name,
    )


def hand_off_stored(
    services: Context, account: dict[str, Any], row: dict[str, Any], actor: str
) -> str:
    """`hand_off` of a stored credential row: a client secret, or a certificate."""
    plain = services.cipher.decrypt(row["ciphertext"])
    if row.get("kind") == "certificate":
        return hand_off(services, account, None, actor, certificate=Certificate.load(plain))
    return hand_off(services, account, plain, actor)


def hand_off(
    services: Context,
    account: dict[str, Any],
    secret_text: str | None,
    actor: str,
    certificate: Certificate | None = None,
) -> str:
    """Register the account with the appliance (or update it) with its client secret or its
    certificate; returns the appliance id.
    Raises `ApplianceError`; records the outcome on the account either way."""
    appliance = services.appliance
    assert appliance is not None
    config = services.config
    db = services.store.db
    recorded = [str(s) for s in json.loads(account.get("subscriptions") or "[]")]
    kwargs: dict[str, Any] = {
        "name": account["name"],
        "description": account.get("description") or f"Created by veeam-sa for {account['name']}",
        "application_id": account["app_id"],
        "tenant_id": account["tenant_id"],
        "client_secret": secret_text,
        "certificate": certificate_upload(account, certificate) if certificate else None,
        "subscriptions": recorded,
        "purposes": list(config.veeam_purposes),
        "environment": AZURE_ENVIRONMENTS.get(config.cloud, "Global"),
    }
    try:
        if account.get("appliance_id"):
            appliance_id = str(account["appliance_id"])
            held = appliance.get_account(appliance_id)
            if held is None:
                raise ApplianceError(
                    f"the appliance has no service account {appliance_id!r} any more",
                    kind="not_found",
                    status=404,
                )
            kwargs.update(_held_settings(account, held, recorded, list(config.veeam_purposes)))
            if account.get("management_group") and recorded:
                # a management group's account: its subscriptions are the group's, as read
                kwargs["subscriptions"] = recorded
            appliance.update_by_app(appliance_id, AccountSettings(**kwargs))
        else:
            appliance_id = appliance.save_by_app(AccountSettings(**kwargs))
    except ApplianceError as exc:
        with db.atomic():
            queries.update_account(db, account["id"], handoff="failed")
            queries.add_audit(
                db,
                actor=actor,
                action="appliance.handoff",
                target=account["name"],
                outcome="failed",
                detail={"kind": exc.kind, "status": exc.status},
            )
        raise
    with db.atomic():
        changes: dict[str, Any] = {"appliance_id": appliance_id, "handoff": "done"}
        if kwargs["subscriptions"] != recorded:
            changes["subscriptions"] = json.dumps(kwargs["subscriptions"])
        queries.update_account(db, account["id"], **changes)
        queries.add_audit(
            db,
            actor=actor,
            action="appliance.handoff",
            target=account["name"],
            outcome="ok",
            detail={
                "appliance_id": appliance_id,
                "update": bool(account.get("appliance_id")),
                "credential": "certificate" if certificate else "secret",
                "subscriptions": len(kwargs["subscriptions"]),
                "purposes": list(kwargs["purposes"]),
            },
        )
    return appliance_id


def _held_settings(
    account: dict[str, Any], held: dict[str, Any], recorded: list[str], configured: list[str]
) -> dict[str, Any]:
    """The subscriptions and purposes an update must send: what the appliance holds."""
    subscriptions = [str(s).lower() for s in held.get("subscriptionIds") or [] if s]
    if not subscriptions:
        subscriptions = recorded
    if not subscriptions:
        raise ApplianceError(
            f"the appliance reports no subscriptions for {account['name']!r} and the bot knows "
            "none; an update would leave the account protecting nothing, so it was not sent. "
            "Add its subscriptions in VBAzure (Service Accounts → Edit), then try again",
            kind="problem",
        )
    purposes = [str(p) for p in held.get("purposes") or [] if p]
    if not purposes and not account.get("imported"):
        purposes = configured
    if not purposes:
        raise ApplianceError(
            f"the appliance reports no purposes for {account['name']!r}; an update would "
            "clear them, so it was not sent. Choose them in VBAzure (Service Accounts → Edit), "
            "then try again",
            kind="problem",
        )
    return {"subscriptions": subscriptions, "purposes": purposes}


def refresh(services: Context, now: datetime) -> int:
    """Read every appliance account and record its state on the matching managed account."""
    appliance = services.appliance
    if appliance is None:
        return 0
    accounts = appliance.list_accounts()
    db = services.store.db
    seen = 0
    stamp = queries.utcnow_iso(now)
    with db.atomic():
        for item in accounts:
            app_id = str(item.get("applicationId") or "").lower()
            if not app_id:
                continue
            for account in queries.active_accounts_by_app_id(db, app_id):
                queries.update_account(
                    db,
                    account["id"],
                    appliance_id=account.get("appliance_id") or item.get("id"),
                    appliance_state=item.get("cloudState"),
                    appliance_expiry=item.get("expirationDate"),
                    appliance_checked_at=stamp,
                    **(
                        {"permissions_state": json.dumps(item["azurePermissionsState"])}
                        if isinstance(item.get("azurePermissionsState"), list)
                        else {}
                    ),
                )
                seen += 1
    if seen:
        services.changed()
    return seen


def follow_groups(services: Context, now: datetime) -> list[str]:
    """For each account made for a management group: read the group's direct subscriptions
    (as the account itself: its roles at the group let it read the group) and, when they
    changed, record them and hand the appliance the new list with `updateByApp` — the roles
    at the group already reach a subscription moved into it, so nothing is assigned. Veeam,
    like the bot, follows only the group's direct subscriptions, not its nested groups'.
    Returns a line per account changed; an account that cannot be read is left as it is."""
    if services.appliance is None:
        return []
    db = services.store.db
    changed: list[str] = []
    for account in queries.group_accounts(db):
        group = json.loads(account.get("management_group") or "null")
        if not isinstance(group, dict) or not group.get("id"):
            continue
        rows = [s for s in queries.active_secrets(db, account["id"]) if s.get("ciphertext")]
        if not rows or not account.get("appliance_id"):
            continue
        try:
            current = _group_subscriptions(services, account, rows[-1], str(group["id"]))
        except Exception:  # noqa: BLE001 - one unreadable group must not stop the others
            log.warning("could not read management group of %s", account["name"], exc_info=True)
            continue
        if current is None:
            continue
        subs, nested = current
        recorded = [str(s).lower() for s in json.loads(account.get("subscriptions") or "[]")]
        if sorted(subs) == sorted(recorded) and nested == list(group.get("nested") or []):
            continue
        if not subs:
            log.warning("management group of %s holds no subscription now", account["name"])
            continue
        added = sorted(set(subs) - set(recorded))
        removed = sorted(set(recorded) - set(subs))
        if added or removed:
            # the appliance first: the bot records the new list only once Veeam holds it,
            # so a failed update is tried again by the next scan
            try:
                hand_off_stored(
                    services, {**account, "subscriptions": json.dumps(subs)}, rows[-1], "system"
                )
            except ApplianceError as exc:
                log.warning("could not update %s on the appliance: %s", account["name"], exc)
                continue
        group["nested"] = nested
        with db.atomic():
            queries.update_account(
                db,
                account["id"],
                subscriptions=json.dumps(subs),
                management_group=json.dumps(group, sort_keys=True),
            )
            queries.add_audit(
                db,
                actor="system",
                action="azure.management_group",
                target=account["name"],
                outcome="changed",
                detail={
                    "group": group["id"],
                    "added": added,
                    "removed": removed,
                    "nested": nested,
                },
            )
        if not added and not removed:
            continue
        changed.append(
            f"{account['name']}: management group `{group['id']}` "
            + (f"gained {', '.join(added)}" if added else "")
            + ("; " if added and removed else "")
            + (f"lost {', '.join(removed)}" if removed else "")
        )
    if changed:
        services.changed()
    return changed


def _group_subscriptions(
    services: Context, account: dict[str, Any], row: dict[str, Any], group_id: str
) -> tuple[list[str], list[str]] | None:
    """(direct subscription ids, nested group ids) of the group, read with the account's
    own credential; None when Entra refuses the credential (the health check reports it)."""
    from bot.flows.health import client_assertion  # the health check signs the same way

    plain = services.cipher.decrypt(row["ciphertext"])
    certificate = row.get("kind") == "certificate"
    answer = services.device.app_token(
        str(account["tenant_id"]),
        str(account["app_id"]),
        None if certificate else plain,
        assertion=client_assertion(Certificate.load(plain), str(account["app_id"]))
        if certificate
        else None,
    )
    if answer.token is None:
        return None
    token = answer.token
    group = services.arm(token=lambda: token, attempts=3).management_group(group_id)
    return [s["id"] for s in group["subscriptions"]], [g["id"] for g in group["groups"]]


def import_accounts(
    services: Context, actor: str, channel: str | None, now: datetime
) -> tuple[list[str], list[str]]:
    """Adopt appliance accounts the bot does not manage yet, so their expiry is watched.
    Returns the names adopted and the names left alone (certificate accounts).

    The bot gets no secret for them; a renewal then adds a new one and hands it over with the
    subscriptions and purposes the appliance holds. The expiry the appliance reports stands
    in for the secret until then. An account that signs in with a certificate is left alone:
    the bot renews client secrets, and giving it one would change how Veeam signs it in.
    """
    appliance = services.appliance
    assert appliance is not None
    db = services.store.db
    adopted: list[str] = []
    skipped: list[str] = []
    for item in appliance.list_accounts():
        app_id = str(item.get("applicationId") or "").lower()
        if not app_id or queries.active_accounts_by_app_id(db, app_id):
            continue
        if item.get("accountOrigin") == ORIGIN_CERTIFICATE:
            skipped.append(str(item.get("name") or app_id))
            continue
        name = _free_name(db, str(item.get("name") or f"imported-{app_id[:8]}"))
        expiry = item.get("expirationDate")
        end = parse_time(expiry) if expiry else now + timedelta(days=services.config.secret_days)
        with db.atomic():
            account_id = queries.insert_account(
                db,
                {
                    "name": name,
                    "description": item.get("description"),
                    "tenant_id": item.get("tenantId"),
                    "app_id": app_id,
                    "subscriptions": json.dumps(
                        [str(s).lower() for s in item.get("subscriptionIds") or []]
                    ),
                    "roles": json.dumps({}),
                    "created_by": actor,
                    "created_at": queries.utcnow_iso(now),
                    "channel_id": channel,
                    "alert_channel_id": services.config.alert_channel or channel,
                    "state": "active",
                    "appliance_id": item.get("id"),
                    "appliance_state": item.get("cloudState"),
                    "appliance_expiry": expiry,
                    "appliance_checked_at": queries.utcnow_iso(now),
                    "handoff": "done",
                    "imported": 1,
                },
            )
            queries.insert_secret(
                db,
                {
                    "account_id": account_id,
                    "key_id": f"appliance:{item.get('id')}",
                    "hint": "",
                    "end_at": end.astimezone(UTC).isoformat(timespec="seconds"),
                    "created_at": queries.utcnow_iso(now),
                    "ciphertext": None,
                    "state": "active",
                },
            )
            queries.add_audit(
                db,
                actor=actor,
                action="appliance.import",
                target=name,
                outcome="ok",
                detail={
                    "app_id": app_id,
                    "appliance_id": item.get("id"),
                    "origin": item.get("accountOrigin"),
                    "purposes": item.get("purposes") or [],
                },
            )
        adopted.append(name)
    if adopted:
        services.changed()
    return adopted, skipped


def _free_name(db: Any, wanted: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]", "-", wanted)[:240] or "imported"
    name, n = base, 1
    while queries.get_account(db, name) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


# -- `/veeam-sa sync` and `/veeam-sa import`: run on the worker pool, each returning the
# Slack payload that reports its outcome to the person who asked.


def sync(services: Context, name: str, user: str) -> dict[str, Any]:
    """Retry the hand-off of an account's current secret to the appliance."""
    db = services.store.db
    account = queries.get_account(db, name)
    if account is None or account["state"] != "active":
        return blocks.error_message(
            f"There is no managed service account `{name}`.", with_help_hint=False
        )
    secrets = [s for s in queries.active_secrets(db, account["id"]) if s.get("ciphertext")]
    if not secrets:
        return blocks.error_message(
            f"The bot holds no secret for `{name}` (it was imported). Renew it to give Veeam a new one: "
            f"`/veeam-sa renew {name}`.",
            with_help_hint=False,
        )
    try:
        appliance_id = hand_off_stored(services, account, secrets[-1], user)
    except ApplianceError as exc:
        return blocks.error_message(
            f"`{name}` was not handed to Veeam: {appliance_text(exc)}.", with_help_hint=False
        )
    services.changed()
    return blocks.note(
        f":white_check_mark: `{name}` is registered with the Veeam appliance (account `{appliance_id}`)."
    )


def import_all(services: Context, user: str, channel: str | None) -> dict[str, Any]:
    try:
        adopted, skipped = import_accounts(services, user, channel, services.clock())
    except ApplianceError as exc:
        return blocks.error_message(
            f"Nothing was imported: {appliance_text(exc)}.", with_help_hint=False
        )
    left = (
        " Left alone (they sign in with a certificate, and the bot renews client secrets): "
        + ", ".join(f"`{n}`" for n in skipped)
        + "."
        if skipped
        else ""
    )
    if not adopted:
        return blocks.note(
            "Every service account on the Veeam appliance is already managed here." + left
        )
    names = ", ".join(f"`{n}`" for n in adopted)
    return blocks.note(
        f":inbox_tray: Now watching {blocks.plural(len(adopted), 'account')} from the appliance: {names}. "
        "Their expiry is warned about like any other; renewing one gives it a new secret and "
        "keeps the subscriptions and purposes the appliance holds for it." + left
    )
