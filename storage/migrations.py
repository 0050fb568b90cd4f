"""Schema migrations, applied in order on every open (idempotent)."""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("veeam-sa")

#: Name of the newest migration: `doctor` reports a database short of it as out of date.
LATEST = "m011_management_group"


@migrations()
def m001_initial(db: Database) -> None:
    db.table("accounts").create(
        {
            "id": int,
            "name": str,
            "description": str,
            "tenant_id": str,
            "tenant_name": str,
            "app_object_id": str,
            "app_id": str,
            "sp_id": str,
            "subscriptions": str,  # JSON list of subscription ids
            "roles": str,  # JSON: {subscription id: [role names]}
            "unique_name": str,  # Graph uniqueName that keys the creation
            "created_by": str,
            "created_at": str,
            "channel_id": str,
            "alert_channel_id": str,
            "state": str,  # active | deleted
            "updated_at": str,
        },
        pk="id",
        not_null={"name", "state", "created_at"},
        defaults={"state": "active"},
    )
    # One live account per name; rolled-back attempts keep their rows for the record.
    db.execute(
        "CREATE UNIQUE INDEX idx_accounts_live_name ON accounts(name COLLATE NOCASE) "
        "WHERE state != 'rolled_back'"
    )
    db.table("secrets").create(
        {
            "id": int,
            "account_id": int,
            "key_id": str,
            "hint": str,
            "end_at": str,  # ISO 8601 UTC, as Graph returned it
            "created_at": str,
            "ciphertext": str,  # Fernet token of the secret text (None when not held)
            "state": str,  # active | retired
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "key_id", "end_at", "state"},
        defaults={"state": "active"},
    )
    db.table("secrets").create_index(["key_id"], unique=True)
    db.table("flows").create(
        {
            "id": str,
            "kind": str,  # create | renew
            "state": str,  # see bot.flows for the state machine
            "name": str,
            "account_id": int,
            "requester": str,
            "channel_id": str,
            "parent_ts": str,
            "data": str,  # JSON, never secret
            "device_flow": str,  # Fernet token of MSAL's flow dict (holds the device code)
            "expires_at": str,
            "created_at": str,
            "updated_at": str,
            "error": str,
        },
        pk="id",
        not_null={"kind", "state", "requester", "created_at"},
    )
    db.table("notices").create(
        {
            "id": int,
            "secret_id": int,
            "threshold": int,  # days; 0 means "expired"
            "posted_at": str,
            "channel_id": str,
            "ts": str,
        },
        pk="id",
        foreign_keys=[("secret_id", "secrets", "id")],
        not_null={"secret_id", "threshold", "posted_at"},
    )
    db.table("notices").create_index(["secret_id", "threshold"], unique=True)
    db.table("audit").create(
        {
            "id": int,
            "at": str,
            "actor": str,  # Slack user id, or "system"
            "action": str,
            "target": str,
            "outcome": str,
            "detail": str,  # JSON
            "correlation_id": str,
        },
        pk="id",
        not_null={"at", "actor", "action", "outcome"},
    )


@migrations()
def m002_lookup_indexes(db: Database) -> None:
    db.table("secrets").create_index(["state", "end_at"])
    db.table("flows").create_index(["state"])
    db.table("flows").create_index(["name"])
    db.table("audit").create_index(["target", "at"])


@migrations()
def m003_audit_append_only(db: Database) -> None:
    db.execute(
        "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
        "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
    )


@migrations()
def m004_notice_digests_and_meta(db: Database) -> None:
    db.table("notices").add_column("digest", int, not_null_default=0)
    db.table("meta").create({"key": str, "value": str}, pk="key")


@migrations()
def m005_appliance(db: Database) -> None:
    accounts = db.table("accounts")
    accounts.add_column("appliance_id", str)
    accounts.add_column("handoff", str)  # done | failed | None (no appliance)
    accounts.add_column("appliance_state", str)  # the appliance's cloudState, as last seen
    accounts.add_column("appliance_expiry", str)
    accounts.add_column("appliance_checked_at", str)
    accounts.add_column("imported", int, not_null_default=0)
    accounts.create_index(["app_id"])


@migrations()
def m006_retiring_secret(db: Database) -> None:
    # A secret replaced while no appliance is configured stays live ("retiring") until a
    # person confirms Veeam holds its successor; these say which secret replaced it and
    # where the renewal's thread and its "remove the old one" message are.
    secrets = db.table("secrets")
    secrets.add_column("replaced_by", int)
    secrets.add_column("retire_channel_id", str)
    secrets.add_column("retire_thread_ts", str)
    secrets.add_column("retire_ts", str)


@migrations()
def m007_certificates(db: Database) -> None:
    # An account signs in with a client secret or a certificate. A certificate row keeps
    # Graph's keyCredential id in `key_id`, the start of its thumbprint in `hint`, and the
    # private key with its certificate, encrypted, in `ciphertext`.
    db.table("secrets").add_column("kind", str, not_null_default="password")
    db.table("accounts").add_column("credential", str, not_null_default="secret")


@migrations()
def m008_least_privilege(db: Database) -> None:
    accounts = db.table("accounts")
    # JSON {"id", "name", "scope", "assignable_scopes"} of the custom role the bot created
    # for the account (least-privilege accounts only).
    accounts.add_column("custom_role", str)
    # What the appliance said when last asked to check the account's permissions:
    # its azurePermissionsState (JSON list), the per-subscription findings (JSON) and when.
    accounts.add_column("permissions_state", str)
    accounts.add_column("permissions_detail", str)
    accounts.add_column("permissions_checked_at", str)
    accounts.add_column("permissions_ts", str)  # the thread message showing the answer


@migrations()
def m009_alerts(db: Database) -> None:
    # A warning message's account renewed since: who renewed it (a digest shows "renewed by").
    db.table("notices").add_column("renewed_by", str)
    db.table("notices").create_index(["ts"])
    # An admin's snooze: the secret's warnings are held until this time (ISO 8601 UTC).
    secrets = db.table("secrets")
    secrets.add_column("snoozed_until", str)
    secrets.add_column("snoozed_by", str)


@migrations()
def m010_health(db: Database) -> None:
    # The health check's last word on each account, and one row per drift it found: open
    # while the drift lasts (one alert per account and kind), then cleared or repaired.
    accounts = db.table("accounts")
    accounts.add_column("health_state", str)  # healthy | drift | unknown | None (not yet)
    accounts.add_column("health_checked_at", str)
    accounts.add_column("health_ok_at", str)  # the last check that found nothing wrong
    db.table("drifts").create(
        {
            "id": int,
            "account_id": int,
            "kind": str,  # credential | application | roles | appliance
            "detail": str,  # what differs, in words (never a secret)
            "missing": str,  # JSON: what a repair restores (e.g. {subscription: [role ids]})
            "since": str,  # the first check that found it
            "last_ok_at": str,  # the last check before it that found the account healthy
            "seen_at": str,  # the latest check that found it
            "channel_id": str,
            "ts": str,  # the alert
            "state": str,  # open | cleared | repaired
            "closed_at": str,
            "closed_by": str,
        },
        pk="id",
        foreign_keys=[("account_id", "accounts", "id")],
        not_null={"account_id", "kind", "since", "state"},
        defaults={"state": "open"},
    )
    db.execute(
        "CREATE UNIQUE INDEX idx_drifts_open ON drifts(account_id, kind) WHERE state = 'open'"
    )


@migrations()
def m011_management_group(db: Database) -> None:
    # An account made for a management group: JSON {"id", "name", "nested": [group ids]};
    # its role assignments are at the group's scope and `subscriptions` holds the group's
    # direct subscriptions as last read (what the appliance is given).
    db.table("accounts").add_column("management_group", str)
