"""After a sign-in code is redeemed: check who signed in, fetch every token the flow needs,
ask for a further sign-in when the tenant wants one (MFA or consent for one resource), and
hand the flow to its next step (`SignInEngine.on_signed_in`, wired by the composition root).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.clients.signin import Identity, Session, needs_interaction
from bot.core.errors import SignInError
from bot.core.fanout import both, once
from bot.flows.tenant import TenantStep, same_person
from bot.slack import blocks
from bot.slack.messages import support_suffix
from storage import queries

if TYPE_CHECKING:
    from bot.flows.signin import SignInEngine

log = logging.getLogger(__name__)

#: Further sign-ins a tenant may ask for (MFA or consent per resource) before the flow fails.
MAX_EXTRA_SIGN_INS = 2


class _NeedsSignIn(Exception):
    """A resource's silent token needs the person again."""

    def __init__(self, scope: str, error: SignInError) -> None:
        self.scope = scope
        self.error = error
        super().__init__(scope)

class Redemption:
    def __init__(self, engine: SignInEngine) -> None:
        self.engine = engine
        self.tenant = TenantStep(engine)

    def signed_in(self, flow: dict[str, Any], identity: Identity, session: Session) -> None:
        flow_id = flow["id"]
        data = self.engine.record.data(flow)
        first = data.get("first_identity")
        if first is not None:
            # a further sign-in the tenant asked for: it must be the same person
            if not same_person(first, identity):
                self.engine.fail(
                    flow_id,
                    SignInError(
                        "other_person",
                        "the second sign-in was made with another account",
                    ),
                    who=blocks.escape(f"{identity.upn} (first sign-in: {first['upn']})"),
                )
                return
        elif not self.acceptable(flow, identity):
            return
        early = flow
        signin = self.engine.device

        def list_tenants() -> list[dict[str, Any]]:
            token = signin.token(session, signin.sign_in_scope)  # the sign-in's own
            return self.engine.ctx.arm(token=lambda: token, attempts=2).tenants()

        tenants = once(list_tenants)  # the tenant step and the tenant's name share one read

        def tokens() -> tuple[str | None, Exception | None]:
            # only reads: wasted, not wrong, when the tenant step takes the flow elsewhere
            try:
                name, _ = both(
                    lambda: self.tokens_and_tenant_name(session, identity, tenants),
                    lambda: self.prefetch(early, identity, session),
                )
            except (_NeedsSignIn, SignInError) as exc:
                return None, exc
            return name, None

        # Whether this is the tenant to work in (which may take one more read) is asked beside
        # the fetch of the other tokens and the next step's early reads.
        handled, (tenant_name, problem) = both(
            lambda: self.tenant.settle(flow, identity, session, tenants), tokens
        )
        if handled:
            return
        flow = queries.get_flow(self.engine.ctx.db, flow_id) or flow
        data = self.engine.record.data(flow)
        if isinstance(problem, _NeedsSignIn):
            if int(data.get("extra_sign_ins", 0)) < MAX_EXTRA_SIGN_INS:
                self.sign_in_again(flow, identity, session, problem.scope, problem.error)
            else:
                self.engine.fail(flow_id, problem.error)
            return
        if isinstance(problem, SignInError):
            self.engine.fail(flow_id, problem)
            return
        identity.tenant_name = tenant_name
        data = self.engine.record.data(queries.get_flow(self.engine.ctx.db, flow_id) or flow)
        data["identity"] = {
            "upn": identity.upn,
            "name": identity.name,
            "tenant_id": identity.tenant_id,
            "tenant_name": tenant_name,
            "object_id": identity.object_id,
            # an `idp` claim: the account comes from elsewhere (a guest of this tenant)
            "guest": bool(identity.idp),
        }
        data.pop("sign_in_scope", None)
        steps = data.setdefault("steps", {})
        steps["sign_in"] = "done"
        if "sign_in_again" in steps:
            steps["sign_in_again"] = "done"
        moved = queries.transition_flow(
            self.engine.ctx.db,
            flow_id,
            ["awaiting_sign_in"],
            "signed_in",
            device_flow=None,
            data=json.dumps(data, sort_keys=True),
        )
        if not moved:
            self.engine.drop_session(flow_id)
            return
        flow = queries.get_flow(self.engine.ctx.db, flow_id) or flow
        self.engine.record.audit(
            flow,
            "sign_in.completed",
            "ok",
            entra_upn=identity.upn,
            tenant_id=identity.tenant_id,
            sign_ins=1
            + int(data.get("extra_sign_ins", 0))
            + (1 if (data.get("first_identity") or {}).get("tenant_switch") else 0),
        )
        tenant = (
            f"{blocks.escape(tenant_name)} (`{blocks.escape(identity.tenant_id)}`)"
            if tenant_name
            else f"`{blocks.escape(identity.tenant_id)}`"
        )
        who = blocks.escape(
            f"{identity.name} ({identity.upn})" if identity.name else identity.upn
        )
        self.engine.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(f":key: Signed in as *{who}* in tenant {tenant}.", account=flow["name"]),
            wait=False,
        )
        self.engine.record.render_parent(flow)
        self.engine.record.retire_controls(flow)
        if self.engine.on_signed_in is not None:
            self.engine.on_signed_in(flow_id, identity, session)

    def prefetch(self, flow: dict[str, Any], identity: Identity, session: Session) -> None:
        """Start the next step's reads that need only the sign-in's own token, beside the
        fetch of the other tokens (`SignInEngine.on_token`); never raises."""
        hook = self.engine.on_token
        if hook is None:
            return
        try:
            hook(flow, identity, session)
        except Exception:  # noqa: BLE001 - an early read only saves time; the step reads again
            log.info("flow %s: early read failed", flow["id"], exc_info=True)

    def acceptable(self, flow: dict[str, Any], identity: Identity) -> bool:
        """Refuse personal accounts (unless allowed) and, when required, another's account."""
        flow_id = flow["id"]
        if identity.personal and not self.engine.ctx.config.allow_personal_accounts:
            self.engine.fail(
                flow_id,
                SignInError("personal", "personal Microsoft account"),
                who=blocks.escape(f"{identity.name} ({identity.upn})"),
            )
            return False
        if self.engine.ctx.config.require_email_match:
            email = self.engine.notifier.email_of(flow["requester"])
            if not email or email.lower() != identity.upn.lower():
                self.engine.fail(
                    flow_id,
                    SignInError(
                        "email_mismatch", "signed-in account does not match the Slack profile"
                    ),
                    who=blocks.escape(
                        f"{identity.upn} (your Slack email is {email or 'not visible to the bot'})"
                    ),
                )
                return False
        return True

    def sign_in_again(
        self,
        flow: dict[str, Any],
        identity: Identity,
        session: Session,
        scope: str,
        error: SignInError,
    ) -> None:
        """The tenant wants the person again for `scope` (MFA or consent for that resource
        alone): a further device code, for that resource, to the same person, in the same
        way — a normal step of the flow, shown in the checklist."""
        data = self.engine.record.data(flow)
        data["first_identity"] = data.get("first_identity") or {
            "upn": identity.upn,
            "object_id": identity.object_id,
            "tenant_id": identity.tenant_id,
        }
        data["sign_in_scope"] = scope
        data["extra_sign_ins"] = int(data.get("extra_sign_ins", 0)) + 1
        resource = self.engine.device.resource_name(scope)
        reason = (
            "multi-factor authentication"
            if error.kind == "mfa"
            else ("consent" if error.kind == "consent" else "a fresh sign-in")
        )
        self.engine.sign_in_once_more(
            flow,
            data,
            lambda: self.engine.device.begin(scope, session=session),
            audit=(
                "sign_in.again",
                {
                    "resource": resource,
                    "aadsts": error.aadsts,
                    "correlation_id": error.correlation_id,
                },
            ),
            note=(
                f":closed_lock_with_key: Signed in as {blocks.escape(identity.upn)}, but the tenant "
                f"asks for {reason} to reach {resource}"
                f"{support_suffix(error.aadsts, error.correlation_id)}. One more sign-in is needed."
            ),
            again=resource,
        )

    def tokens_and_tenant_name(
        self,
        session: Session,
        identity: Identity,
        tenants: Callable[[], list[dict[str, Any]]],
    ) -> str | None:
        """Every token the flow needs (silently, each resource side by side), and the tenant's
        display name (None when it can't be read: it is decoration). Raises `_NeedsSignIn`
        when a resource needs the person again, `SignInError` when it refuses otherwise."""
        signin = self.engine.device

        def fetch(scope: str) -> SignInError | None:
            try:
                signin.token(session, scope)
                return None
            except SignInError as exc:
                return exc

        def tenant_name() -> str | None:
            try:
                for tenant in tenants():
                    if str(tenant.get("tenantId", "")).lower() == identity.tenant_id.lower():
                        name = tenant.get("displayName")
                        return str(name) if name else None
                return None
            except Exception:  # noqa: BLE001 - the name is decoration; sign-in already succeeded
                log.info("could not read the tenant's display name", exc_info=True)
                return None

        others = [scope for scope in signin.scopes if scope != signin.sign_in_scope]
        name, errors = both(tenant_name, lambda: [fetch(scope) for scope in others])
        for scope, error in zip(others, errors, strict=True):
            if error is None:
                continue
            if needs_interaction(error):
                raise _NeedsSignIn(scope, error)
            raise error
        return name
