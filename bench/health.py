"""The health-check row: many accounts checked in one run, spread over a (shortened)
interval, against the Microsoft double, never faster than the configured request rate.

The accounts are seeded straight into the double (application, service principal, one
secret, the three default roles on one subscription) and into a real SQLite database (the
secret encrypted, as a creation stores it). Then `HealthCheck.run(interval_s=…)` runs as
the scheduled job does, with the real rate limiter, real clock and sleeps, real MSAL-free
client-credential grants and ARM role-assignment reads over HTTPS. The rate is measured
from the times the double recorded the requests (`RecordedRequest.time`), not from the
bot's own count.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from bot.core.config import BUILTIN_ROLES, DEFAULT_ROLES, load_config
from bot.core.crypto import Cipher
from bot.flows.health import HealthCheck
from bot.flows.root import build_services
from bot.slack.client import make_web_client
from storage import queries
from storage.db import open_store
from tests.fakes.microsoft import (
    DEFAULT_SUBSCRIPTIONS,
    DEFAULT_TENANT_ID,
    Application,
    MicrosoftDouble,
    Password,
    RoleAssignment,
    ServicePrincipal,
)
from tests.fakes.slack import SlackDouble
from tests.fakes.tls import TestCA
from tests.harness import bot_env

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


def _seed(ms: MicrosoftDouble, store: Any, cipher: Cipher, count: int) -> None:
    now = ms.now()
    db = store.db
    with ms.lock, db.atomic():
        for n in range(count):
            text = secrets.token_urlsafe(30)
            app = Application(
                str(uuid.uuid4()),
                str(uuid.uuid4()),
                DEFAULT_TENANT_ID,
                now,
                {"displayName": f"acct-{n}", "signInAudience": "AzureADMyOrg"},
                passwords=[
                    Password(str(uuid.uuid4()), "veeam-sa", text, text[:3], now, now + 365 * 86400)
                ],
            )
            ms._apps[app.id] = app  # noqa: SLF001 - seeding the double directly
            sp = ServicePrincipal(str(uuid.uuid4()), app.app_id, DEFAULT_TENANT_ID, app.display_name, now)
            ms._sps[sp.id] = sp  # noqa: SLF001
            for role in DEFAULT_ROLES:
                ms.role_assignments.append(
                    RoleAssignment(
                        str(uuid.uuid4()),
                        f"/subscriptions/{SUB}",
                        BUILTIN_ROLES[role],
                        sp.id,
                        "ServicePrincipal",
                        now,
                    )
                )
            account_id = queries.insert_account(
                db,
                {
                    "name": f"acct-{n}",
                    "tenant_id": DEFAULT_TENANT_ID,
                    "app_object_id": app.id,
                    "app_id": app.app_id,
                    "sp_id": sp.id,
                    "subscriptions": json.dumps([SUB]),
                    "roles": json.dumps({SUB: list(DEFAULT_ROLES)}),
                    "created_by": "U0BENCH",
                    "created_at": queries.utcnow_iso(),
                    "channel_id": "C0OPS",
                    "alert_channel_id": "C0OPS",
                    "state": "active",
                },
            )
            queries.insert_secret(
                db,
                {
                    "account_id": account_id,
                    "key_id": app.passwords[0].key_id,
                    "hint": text[:3],
                    "end_at": "2099-01-01T00:00:00+00:00",
                    "created_at": queries.utcnow_iso(),
                    "ciphertext": cipher.encrypt(text),
                    "state": "active",
                },
            )


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most requests in any `window` seconds."""
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def measure(accounts: int, interval_s: float, rate: float, ms_latency: float) -> dict[str, Any]:
    ca = TestCA()
    work = Path(tempfile.mkdtemp(prefix="veeam-sa-bench-health-"))
    try:
        with MicrosoftDouble(ca) as ms, SlackDouble() as slack:
            ms.latency = ms_latency
            env = bot_env(
                slack,
                ms,
                work,
                ca.ca_pem_path,
                VEEAM_SA_ENCRYPTION_KEY=Fernet.generate_key().decode(),
                VEEAM_SA_HEALTH_RATE=f"{rate:g}",
            )
            config = load_config(env, dotenv=None)
            store = open_store(config.db_path)
            assert config.encryption_key is not None
            cipher = Cipher(config.encryption_key)
            built = time.monotonic()
            _seed(ms, store, cipher, accounts)
            seeded_s = time.monotonic() - built
            services = build_services(
                config, store=store, cipher=cipher, slack=make_web_client(config)
            )
            check = HealthCheck(services.context)
            mark = len(ms.requests)
            result = check.run(interval_s=interval_s)
            sent = [r for r in ms.requests[mark:] if r.server in ("login", "arm")]
            times = sorted(r.time for r in sent)
            span = times[-1] - times[0] if len(times) > 1 else 0.0
            services.workers.shutdown(wait=False)
            services.notifier.close()
            services.http.close()
            store.close()
            return {
                "accounts": accounts,
                "interval_s": interval_s,
                "rate_limit": rate,
                "seeded_s": seeded_s,
                "checked": result.checked,
                "states": result.states,
                "alerted": result.alerted,
                "took_s": result.took_s,
                "requests": len(sent),
                "tokens": sum(1 for r in sent if r.server == "login"),
                "arm": sum(1 for r in sent if r.server == "arm"),
                "mean_rate": len(sent) / span if span else 0.0,
                "max_in_1s": max_in_window(times),
                "min_gap": min((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0),
            }
    finally:
        ca.close()
