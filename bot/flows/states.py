"""The states a flow row goes through, and how long each may stand still.

    starting ──▶ awaiting_sign_in ──▶ signed_in ──▶ (the kind's own steps) ──▶ done
        │               │                 │
        └───────────────┴─────────────────┴──▶ failed | cancelled | expired
"""

from __future__ import annotations

SIGN_IN_STATES = ("starting", "awaiting_sign_in")
POST_SIGN_IN_STATES = (
    "signed_in",
    "checking",
    "blocked",
    "choosing",
    "choosing_tenant",
    "provisioning",
    "renewing",
    "retiring",
    "repairing",
)
CANCELLABLE_AFTER_SIGN_IN = ("signed_in", "blocked", "choosing", "choosing_tenant")
#: States in which a step runs in the background; a cancel stops it at its next boundary.
RUNNING_STATES = ("checking", "provisioning", "renewing", "retiring", "repairing")
#: How long a state may stand still with no job for it before the watchdog acts (seconds).
STEP_LIMITS_S = {
    "starting": 120,
    "awaiting_sign_in": 120,
    "signed_in": 600,
    "checking": 900,
    "provisioning": 1800,
    "renewing": 1800,
    "retiring": 900,
    "repairing": 1800,
}
#: States that wait for a person; closed after a day.
PARKED_STATES = ("blocked", "choosing", "choosing_tenant")
PARKED_LIMIT_S = 86400
