"""Drift watch: the health check of every managed account, and its alerts.

Expiry is one way an account stops working; people are the others — someone deletes the
client secret in the portal, removes a role assignment, deletes the application, or the
appliance starts reporting `InvalidClientSecret`. The health check looks, using only what
the bot may do without a person signing in, and never writes anything in the tenant:

1. the stored secret must still yield a token (client-credentials grant, as the
   application itself). Entra's refusal names what changed: AADSTS7000215 (no such secret:
   removed or replaced), AADSTS7000222 (expired), AADSTS700016 (no such application in the
   tenant: deleted), AADSTS7000229 (the application has no service principal);
2. with that token, the role assignments of the application's service principal on each
   subscription (`roleAssignments?$filter=principalId eq '…'`) are compared with what the
   bot assigned. Every role the bot assigns can read assignments; a 403
   `AuthorizationFailed` therefore means those roles are gone too;
3. when a VBAzure appliance is configured, its view of the account: `cloudState` must be
   `Valid` and `azurePermissionsState` must not report missing permissions.

Each kind of drift (`application`, `credential`, `roles`, `appliance`) opens one row and
one alert per account — never a second while it lasts — saying what differs and since
when, with Repair (`bot.flows.repair`). A drift that a later check no longer finds (and
could check) closes as *cleared* and its alert says so. An answer that tells nothing (the
network, 429 beyond its `Retry-After`, 5xx) leaves the account `unknown` and its alerts as
they are.

`HealthCheck.run` is the scheduled job: the accounts longest unchecked first, spread
evenly over the interval (so a thousand accounts do not burst Microsoft), every request
to Microsoft paced by one `RateLimiter` (`VEEAM_SA_HEALTH_RATE` per second).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.clients.arm import ArmClient, scope_label
from bot.core.certs import Certificate
from bot.core.config import BUILTIN_ROLES, Config
from bot.core.errors import ApplianceError, MicrosoftError, Throttled, Unreachable
from bot.core.pacing import RateLimiter
from bot.flows.context import Context
from bot.slack import blocks
from storage import queries

log = logging.getLogger(__name__)

KINDS = ("application", "credential", "roles", "appliance")
#: Share of the interval one run spreads its accounts over: the rest is slack, so that a
#: run never overlaps the next one.
SPREAD_SHARE = 0.9
#: Appliance permission states that mean something is missing.
MISSING_PERMISSIONS = frozenset({"MissingPermissions", "MissingSubscriptions"})

_CREDENTIAL_CODES = {
    7000215: "no such client secret (AADSTS7000215): it was removed or replaced outside the bot",
    7000222: "the client secret has expired (AADSTS7000222)",
    700027: "the certificate is not registered on the application any more (AADSTS700027): it "
    "was removed or replaced outside the bot",
}
_APPLICATION_CODES = {
    700016: "Entra finds no application with client id `{app_id}` in tenant `{tenant}` "
    "(AADSTS700016): it was deleted",
    7000229: "the application `{app_id}` has no service principal in tenant `{tenant}` "
    "(AADSTS7000229): it was deleted",
}


@dataclass
class Finding:
    """One kind of drift: what differs, in words, and what a repair restores."""

    kind: str
    detail: str
    missing: dict[str, Any] = field(default_factory=dict)


@dataclass
class Health:
    state: str  # healthy | drift | unknown
    findings: dict[str, Finding] = field(default_factory=dict)
    #: Kinds the check could look at (a drift of another kind is neither confirmed nor cleared).
    checked: set[str] = field(default_factory=set)
    #: Why something could not be checked.
    problems: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    checked: int = 0
    states: dict[str, int] = field(default_factory=dict)
    alerted: int = 0
    cleared: int = 0
    requests: int = 0
    took_s: float = 0.0
    lines: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Requests to Microsoft per second over the run."""
        return self.requests / self.took_s if self.took_s > 0 else 0.0


def client_assertion(cert: Certificate, client_id: str) -> Callable[[str], str]:
    """A certificate account's client assertion for the token endpoint at a URL: RS256 with
    the certificate's thumbprint as `x5t`, valid for ten minutes."""

    def sign(audience: str) -> str:
        now = int(time.time())
        return cert.sign_jwt(
            {
                "aud": audience,
                "iss": client_id,
                "sub": client_id,
                "jti": uuid.uuid4().hex,
                "nbf": now,
                "exp": now + 600,
            }
        )

    return sign


def expected_roles(config: Config, account: dict[str, Any]) -> dict[str, dict[str, str]]:
    """What the bot assigned: subscription → {role definition id: role name}."""
    by_name = {r.name.lower(): r.definition_id for r in config.roles}
    by_name.update({n.lower(): i for n, i in BUILTIN_ROLES.items()})
    custom = json.loads(account.get("custom_role") or "null")
    if isinstance(custom, dict) and custom.get("name") and custom.get("id"):
        # a least-privilege account's own role, by the GUID the bot gave its definition
        by_name[str(custom["name"]).lower()] = str(custom["id"]).rsplit("/", 1)[-1]
    wanted: dict[str, dict[str, str]] = {}
    for sub, names in (json.loads(account.get("roles") or "{}") or {}).items():
        ids: dict[str, str] = {}
        for name in names or []:
            definition = by_name.get(str(name).lower()) or (
                str(name).lower() if len(str(name)) == 36 else None
            )
            if definition:
                ids[definition.lower()] = str(name)
        if ids:
            wanted[str(sub).lower()] = ids
    return wanted


def appliance_view(ctx: Context) -> dict[str, dict[str, Any]] | None:
    """The appliance's accounts by application (client) id; None when no appliance is
    configured or it cannot be read (then its view is simply not checked)."""
    if ctx.appliance is None:
        return None
    try:
        items = ctx.appliance.list_accounts()
    except ApplianceError as exc:
        log.warning("health check: could not read the appliance's accounts (%s)", exc)
        return None
    return {str(i.get("applicationId") or "").lower(): i for i in items if i.get("applicationId")}


class HealthCheck:
    def __init__(
        self,
        ctx: Context,
        *,
        rate: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self._sleep = sleep
        self._monotonic = monotonic
        self.limiter = RateLimiter(
            rate or ctx.config.health_rate, clock=monotonic, sleep=sleep
        )
        self._lock = threading.Lock()

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    # -- looking (reads only) --------------------------------------------------------------

    def examine(
        self, account: dict[str, Any], view: dict[str, dict[str, Any]] | None
    ) -> Health:
        health = Health(state="healthy")
        secret = None
        secret_id = account.get("secret_id")
        row = queries.get_secret(self._db, int(secret_id)) if secret_id else None
        if row is not None and row.get("ciphertext"):
            secret = self.ctx.cipher.decrypt(row["ciphertext"])
        if secret is None:
            health.problems.append("the bot holds no secret for it (imported): Entra not checked")
        else:
            self._examine_entra(account, secret, row or {}, health)
        if view is not None:
            self._examine_appliance(account, view, health)
        if health.findings:
            health.state = "drift"
        elif health.problems and not health.checked:
            health.state = "unknown"
        elif any(p.startswith("could not") for p in health.problems):
            health.state = "unknown"
        return health

    def _examine_entra(
        self, account: dict[str, Any], secret: str, row: dict[str, Any], health: Health
    ) -> None:
        certificate = row.get("kind") == "certificate"
        answer = self.ctx.device.app_token(
            str(account["tenant_id"]),
            str(account["app_id"]),
            None if certificate else secret,
            assertion=client_assertion(Certificate.load(secret), str(account["app_id"]))
            if certificate
            else None,
            before=self.limiter.acquire,
            hold=self.limiter.hold,
        )
        if answer.transient is not None:
            health.problems.append(f"could not reach the token endpoint ({answer.transient})")
            return
        where = {"app_id": account["app_id"], "tenant": account["tenant_id"]}
        if answer.token is None:
            code = answer.aadsts
            if code in _APPLICATION_CODES:
                health.checked.update({"application", "credential"})
                health.findings["application"] = Finding(
                    "application",
                    _APPLICATION_CODES[code].format(**where),
                    {"app_id": account["app_id"]},
                )
            elif code in _CREDENTIAL_CODES:
                health.checked.add("application")
                health.checked.add("credential")
                hint = row.get("hint") or ""
                health.findings["credential"] = Finding(
                    "credential",
                    f"Entra rejects the stored {'certificate' if certificate else 'client secret'} "
                    f"`{hint}…`: {_CREDENTIAL_CODES[code]}",
                    {"key_id": row.get("key_id")},
                )
            else:
                label = f"AADSTS{code}" if code is not None else answer.error
                health.problems.append(
                    f"could not prove the secret: the token endpoint answered {label}"
                )
            return
        health.checked.update({"application", "credential"})
        token = answer.token
        if not account.get("sp_id"):
            return
        arm = self._arm(token)
        missing: dict[str, list[str]] = {}
        words: list[str] = []
        complete = True
        for sub, wanted in expected_roles(self.ctx.config, account).items():
            try:
                held = {
                    str((a.get("properties") or {}).get("roleDefinitionId") or "")
                    .rsplit("/", 1)[-1]
                    .lower()
                    for a in arm.assignments_of(sub, str(account["sp_id"]))
                }
            except (Throttled, Unreachable) as exc:
                health.problems.append(f"could not read role assignments on {scope_label(sub)} ({exc})")
                complete = False
                continue
            except MicrosoftError as exc:
                if exc.status == 403 and exc.code == "AuthorizationFailed":
                    missing[sub] = sorted(wanted)
                    words.append(
                        f"on {scope_label(sub)} the application may no longer read its role "
                        "assignments (403 AuthorizationFailed): "
                        + ", ".join(wanted[d] for d in sorted(wanted))
                        + " are gone"
                    )
                    continue
                health.problems.append(f"could not read role assignments on {scope_label(sub)} ({exc.code})")
                complete = False
                continue
            gone = sorted(d for d in wanted if d not in held)
            if gone:
                missing[sub] = gone
                words.append(
                    f"on {scope_label(sub)}: "
                    + ", ".join(wanted[d] for d in gone)
                    + (" is" if len(gone) == 1 else " are")
                    + " no longer assigned"
                )
        if missing:
            health.checked.add("roles")
            health.findings["roles"] = Finding("roles", "; ".join(words), {"roles": missing})
        elif complete:
            health.checked.add("roles")

    def _arm(self, token: str) -> ArmClient:
        limiter = self.limiter

        def paced() -> str:  # asked once per request: every ARM request takes a slot
            limiter.acquire()
            return token

        return self.ctx.arm(token=paced, attempts=3)

    def _examine_appliance(
        self, account: dict[str, Any], view: dict[str, dict[str, Any]], health: Health
    ) -> None:
        item = view.get(str(account.get("app_id") or "").lower())
        if item is None:
            return
        health.checked.add("appliance")
        state = item.get("cloudState")
        permissions = [str(p) for p in item.get("azurePermissionsState") or []]
        wrong: list[str] = []
        if state and state != "Valid":
            wrong.append(f"cloudState is `{state}` (expected `Valid`)")
        short = sorted(set(permissions) & MISSING_PERMISSIONS)
        if short:
            wrong.append("azurePermissionsState reports " + ", ".join(f"`{p}`" for p in short))
        if wrong:
            expiry = item.get("expirationDate")
            health.findings["appliance"] = Finding(
                "appliance",
                f"the Veeam appliance's account `{item.get('id')}`: "
                + "; ".join(wrong)
                + (f"; it expects the secret to expire {str(expiry)[:10]}" if expiry else ""),
                {"appliance_id": item.get("id")},
            )

    # -- recording and alerting ------------------------------------------------------------

    def record(self, account: dict[str, Any], health: Health, now: datetime) -> tuple[int, int]:
        """Store the result, open an alert per new kind of drift and edit the alerts of
        drifts that are gone. Returns (alerts posted, drifts cleared)."""
        db = self._db
        stamp = queries.utcnow_iso(now)
        posted = cleared = 0
        with self._lock:
            opened = {d["kind"]: d for d in queries.open_drifts(db, account["id"])}
            fresh = queries.get_account_by_id(db, account["id"]) or account
            for kind, finding in health.findings.items():
                missing = json.dumps(finding.missing, sort_keys=True)
                if kind in opened:
                    queries.seen_drift(db, opened[kind]["id"], stamp, finding.detail, missing)
                    if opened[kind].get("ts"):
                        continue
                    drift_id = int(opened[kind]["id"])
                else:
                    new_id = queries.open_drift(
                        db,
                        account_id=account["id"],
                        kind=kind,
                        detail=finding.detail,
                        missing=missing,
                        since=stamp,
                        last_ok_at=fresh.get("health_ok_at"),
                        channel_id=self._channel(account),
                    )
                    if new_id is None:
                        continue
                    drift_id = new_id
                    queries.add_audit(
                        db,
                        actor="system",
                        action="health.drift",
                        target=account["name"],
                        outcome=kind,
                        detail={"drift": drift_id, "detail": finding.detail[:300]},
                    )
                posted += self._alert(account, drift_id)
            for kind, drift in opened.items():
                if kind in health.findings or kind not in health.checked:
                    continue
                if queries.close_drift(db, drift["id"], "cleared", stamp, None):
                    cleared += 1
                    queries.add_audit(
                        db,
                        actor="system",
                        action="health.cleared",
                        target=account["name"],
                        outcome=kind,
                        detail={"drift": drift["id"]},
                    )
                    self.edit_alert(account["name"], drift["id"])
            queries.set_health(
                db, account["id"], health.state, stamp, ok=health.state == "healthy"
            )
        return posted, cleared

    def _channel(self, account: dict[str, Any]) -> str | None:
        return (
            self.ctx.config.alert_channel
            or account.get("alert_channel_id")
            or account.get("channel_id")
        )

    def _alert(self, account: dict[str, Any], drift_id: int) -> int:
        drift = queries.get_drift(self._db, drift_id)
        assert drift is not None
        channel = drift.get("channel_id") or self._channel(account)
        if not channel:
            return 0
        try:
            ts = self.ctx.notifier.post(
                channel, blocks.drift_alert(name=account["name"], drift=drift)
            )
        except SlackApiError as exc:  # the row stays open without a ts: the next check retries
            log.warning(
                "could not post the drift alert for %s: %s",
                account["name"],
                exc.response.get("error"),
            )
            return 0
        queries.set_drift_ts(self._db, drift_id, channel, ts)
        return 1

    def edit_alert(
        self, name: str, drift_id: int, by: str | None = None, still: str | None = None
    ) -> None:
        """Show a drift's alert as it stands now (open, cleared or repaired)."""
        drift = queries.get_drift(self._db, drift_id)
        if drift is None or not drift.get("ts") or not drift.get("channel_id"):
            return
        closed = None if drift["state"] == "open" else str(drift["state"])
        self.ctx.notifier.update(
            drift["channel_id"],
            drift["ts"],
            blocks.drift_alert(
                name=name, drift=drift, closed=closed, by=by or drift.get("closed_by"), still=still
            ),
        )

    # -- the job ---------------------------------------------------------------------------

    def check_one(
        self, account: dict[str, Any], now: datetime, view: dict[str, dict[str, Any]] | None = None
    ) -> Health:
        if view is None:
            view = appliance_view(self.ctx)
        health = self.examine(account, view)
        self.record(account, health, now)
        return health

    def account(self, account_id: int) -> dict[str, Any] | None:
        """An account as the check reads it (with its current secret's id)."""
        found = queries.get_account_by_id(self._db, account_id)
        if found is None:
            return None
        rows = queries.accounts_to_check(self._db, found["name"])
        return rows[0] if rows else None

    def run(
        self,
        *,
        interval_s: float | None = None,
        name: str | None = None,
        stop: threading.Event | None = None,
    ) -> RunResult:
        """Check every active account (or the one named) once. With `interval_s`, the
        checks start evenly spread over `SPREAD_SHARE` of it, longest-unchecked first."""
        accounts = queries.accounts_to_check(self._db, name)
        accounts.sort(key=lambda a: (a.get("health_checked_at") or "", a["id"]))
        result = RunResult(states=dict.fromkeys(("healthy", "drift", "unknown"), 0))
        view = appliance_view(self.ctx)
        started = self._monotonic()
        before = self.limiter.acquired
        gap = interval_s * SPREAD_SHARE / len(accounts) if interval_s and accounts else 0.0
        for index, account in enumerate(accounts):
            if stop is not None and stop.is_set():
                break
            if gap:
                wait = started + index * gap - self._monotonic()
                if wait > 0:
                    if stop is not None:
                        if stop.wait(wait):
                            break
                    else:
                        self._sleep(wait)
            try:
                health = self.examine(account, view)
                posted, cleared = self.record(account, health, self.ctx.clock())
            except Exception:  # noqa: BLE001 - one account's trouble must not stop the rest
                log.exception("health check of %s failed", account["name"])
                continue
            if health.state != account.get("health_state"):
                self.ctx.changed()  # the App Home shows each account's health
            result.checked += 1
            result.states[health.state] = result.states.get(health.state, 0) + 1
            result.alerted += posted
            result.cleared += cleared
            line = f"{account['name']}: {health.state}"
            if health.findings:
                line += " — " + "; ".join(
                    f"{blocks.DRIFT_TITLES[k]}: {f.detail}" for k, f in health.findings.items()
                )
            elif health.problems:
                line += " — " + "; ".join(health.problems)
            result.lines.append(line)
        result.requests = self.limiter.acquired - before
        result.took_s = self._monotonic() - started
        queries.set_meta(self._db, "last_health_check_at", queries.utcnow_iso(self.ctx.clock()))
        return result
