"""Which Entra tenant a creation happens in.

`/veeam-sa create NAME --tenant ID|DOMAIN` names it. After the first sign-in the tenants the
account can reach are read from Azure Resource Manager (`GET /tenants`: the home tenant and
every tenant where the account is a guest); the one named must be among them, else the flow
ends with nothing created. When the token is for another tenant than the one chosen — a
guest's sign-in lands in the home tenant — the person signs in once more against the chosen
tenant's own authority (`{authority host}/{tenant id}`: a token for a tenant comes only from
that tenant's authority). That sign-in must be the same person: a guest has an object id of
its own in each tenant, so MSAL's `home_account_id` is compared instead. From then on the
flow's tokens are the chosen tenant's: subscriptions, checks, the application, its service
principal, secret and roles, and a rollback all happen there, and a restarted bot signs in
against that authority straight away (`data["tenant"]`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slack_sdk.errors import SlackApiError

from bot.clients.graph import GraphClient
from bot.clients.signin import Identity, Session
from bot.core.errors import CommandError, MicrosoftError, SignInError
from bot.core.fanout import both, parallel
from bot.slack import blocks
from bot.slack.blocks.tenants import MAX_TENANT_CHOICES, tenant_chooser, tenant_chosen
from storage import queries

if TYPE_CHECKING:
    from bot.flows.signin import SignInEngine

log = logging.getLogger(__name__)


def match_tenant(tenants: list[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    """The tenant whose id, default domain or one of whose domains is `wanted`."""
    key = wanted.strip().lower()
    for tenant in tenants:
        names = {
            str(tenant.get("tenantId") or "").lower(),
            str(tenant.get("defaultDomain") or "").lower(),
            *(str(d).lower() for d in tenant.get("domains") or []),
        }
        if key in names:
            return tenant
    return None


def describe(tenant: dict[str, Any]) -> str:
    """A tenant as the thread names it: display name, default domain and id (escaped)."""
    name = blocks.escape(tenant.get("displayName") or tenant.get("defaultDomain") or "tenant")
    domain = tenant.get("defaultDomain")
    where = f"{blocks.escape(domain)}, " if domain else ""
    return f"{name} ({where}`{blocks.escape(tenant.get('tenantId'))}`)"


GUEST_NO_APP_RIGHT = (
    "the account is a guest in this tenant, and 'Users can register applications' covers "
    "member users only; ask a tenant admin for the Application Developer role (or "
    "Application Administrator / Cloud Application Administrator)"
)


def app_right(
    policy: bool | None, roles: list[str], guest: bool, no_right: str
) -> tuple[bool | None, str]:
    """May the account register applications in the tenant: its roles, else the tenant
    setting "Users can register applications" — a default permission of member users that
    guests do not have (Entra: compare member and guest default permissions)."""
    if roles:
        return True, "holds " + ", ".join(roles)
    if guest:
        return False, GUEST_NO_APP_RIGHT
    if policy:
        return True, "the tenant lets users register applications"
    if policy is None:
        return None, (
            "could not read the tenant setting and the account holds no application role; "
            "creation will show whether it may"
        )
    return False, no_right


NO_APP_RIGHT_HERE = (
    "the tenant does not let users register applications and the account holds no "
    "application role (Application Developer, Application Administrator, Cloud Application "
    "Administrator)"
)


def same_person(first: dict[str, Any], identity: Identity) -> bool:
    """Whether a further sign-in was made by the person of the first one: the same object in
    the same tenant, or — signing in to another tenant — the same home account."""
    if (first.get("object_id"), first.get("tenant_id")) == (
        identity.object_id,
        identity.tenant_id,
    ):
        return True
    home = first.get("home_account_id")
    return bool(first.get("tenant_switch") and home and home == identity.home_account_id)


class TenantStep:
    """Settles the creation's tenant right after a sign-in (see the module docstring)."""

    def __init__(self, engine: SignInEngine) -> None:
        self.engine = engine

    def settle(
        self,
        flow: dict[str, Any],
        identity: Identity,
        session: Session,
        tenants: Callable[[], list[dict[str, Any]]],
    ) -> bool:
        """True when the flow does not go on from this sign-in: it failed, or it waits for a
        sign-in against the chosen tenant. False: carry on in the signed-in tenant.
        `tenants()` lists the tenants the sign-in reaches (read once per sign-in)."""
        engine = self.engine
        flow_id = flow["id"]
        data = engine.record.data(flow)
        target = data.get("tenant")
        if target:
            if identity.tenant_id.lower() == str(target).lower():
                return False
            engine.fail(
                flow_id,
                SignInError(
                    "tenant",
                    f"The sign-in was for tenant `{blocks.escape(identity.tenant_id)}`, but "
                    f"`{flow['name']}` is in tenant `{blocks.escape(target)}`. Nothing was "
                    "changed.",
                ),
            )
            return True
        wanted = data.get("tenant_request")
        if not wanted and flow.get("account_id"):
            # renewing (or retiring, repairing) an account: in the tenant it lives in
            account = queries.get_account_by_id(engine.ctx.db, int(flow["account_id"]))
            lives = str((account or {}).get("tenant_id") or "")
            if lives and lives.lower() != identity.tenant_id.lower():
                wanted = lives
        if not wanted:
            if flow["kind"] != "create" or flow.get("account_id"):
                return False
            return self._offer(flow, identity, session, data, tenants)
        try:
            reached = tenants()
        except SignInError as exc:
            engine.fail(flow_id, exc)
            return True
        except MicrosoftError as exc:
            engine.fail(
                flow_id,
                SignInError(
                    "tenant",
                    "I could not read the tenants this account can reach "
                    f"({blocks.escape(exc)}), so I cannot tell whether it reaches "
                    f"`{blocks.escape(wanted)}`. Nothing was created; try again.",
                ),
            )
            return True
        found = match_tenant(reached, str(wanted))
        if found is None:
            reachable = ", ".join(describe(t) for t in reached) or "none"
            advice = (
                "Ask an admin of that tenant to invite the account as a guest, or name one of "
                "these with `--tenant`. Nothing was created."
                if flow["kind"] == "create" and not flow.get("account_id")
                else f"`{flow['name']}` lives in that tenant: sign in with an account of it, or "
                "ask its admin to invite yours as a guest. Nothing was changed."
            )
            engine.fail(
                flow_id,
                SignInError(
                    "tenant",
                    f"{blocks.escape(identity.upn)} cannot reach tenant `{blocks.escape(wanted)}`"
                    f" (it reaches: {reachable}). {advice}",
                ),
            )
            return True
        tenant_id = str(found.get("tenantId") or "").lower()
        data["tenant"] = tenant_id
        data["tenant_name"] = found.get("displayName")
        if tenant_id == identity.tenant_id.lower():
            # already signed in there: remember the choice (a restart signs in there too)
            if not queries.transition_flow(
                engine.ctx.db,
                flow_id,
                ["awaiting_sign_in"],
                "awaiting_sign_in",
                data=json.dumps(data, sort_keys=True),
            ):
                engine.drop_session(flow_id)
                return True
            return False
        self._sign_in_there(flow, identity, found, data)
        return True

    # -- the chooser: no --tenant, and the account reaches several ---------------------------

    def _offer(
        self,
        flow: dict[str, Any],
        identity: Identity,
        session: Session,
        data: dict[str, Any],
        listing: Callable[[], list[dict[str, Any]]],
    ) -> bool:
        """Offer the tenants the account reaches when there are several (True), each with
        whether it may register applications there; else carry on at home (False)."""
        engine = self.engine
        flow_id = flow["id"]
        try:
            tenants = [t for t in listing() if t.get("tenantId")]
        except (SignInError, MicrosoftError) as exc:
            # the list only offers a choice: without it the creation stays where it signed in
            log.info("flow %s: could not list the account's tenants: %s", flow_id, exc)
            return False
        if len(tenants) <= 1:
            return False
        home = identity.tenant_id.lower()
        tenants.sort(key=lambda t: (str(t["tenantId"]).lower() != home, str(t.get("displayName"))))
        shown = tenants[:MAX_TENANT_CHOICES]
        choices = parallel(lambda t: self._choice(session, identity, t), shown)
        data["tenant_choices"] = choices
        data["tenant_choices_more"] = len(tenants) - len(shown)
        data["pending_identity"] = {
            "upn": identity.upn,
            "name": identity.name,
            "tenant_id": identity.tenant_id,
            "object_id": identity.object_id,
            "idp": identity.idp,
            "home_account_id": identity.home_account_id,
        }
        if not queries.transition_flow(
            engine.ctx.db,
            flow_id,
            ["awaiting_sign_in"],
            "choosing_tenant",
            device_flow=None,
            data=json.dumps(data, sort_keys=True),
        ):
            engine.drop_session(flow_id)
            return True
        flow = queries.get_flow(engine.ctx.db, flow_id) or flow
        engine.record.audit(
            flow,
            "sign_in.tenant_offered",
            "pending",
            tenants=[c["id"] for c in choices],
            signed_in_tenant=identity.tenant_id,
        )
        engine.record.render_parent(flow)
        engine.record.retire_controls(flow)
        chooser = tenant_chooser(
            flow_id=flow_id,
            requester=flow["requester"],
            name=flow["name"],
            choices=choices,
            more=int(data["tenant_choices_more"]),
        )
        try:
            ts: str | None = engine.notifier.post(
                flow["channel_id"], chooser, thread_ts=flow.get("parent_ts")
            )
        except SlackApiError as exc:
            log.warning("flow %s: could not post the tenant chooser: %s", flow_id, exc)
            ts = None
        if ts:
            current = engine.record.get(flow_id)
            saved = engine.record.data(current)
            saved["tenant_chooser_ts"] = ts
            queries.transition_flow(
                engine.ctx.db,
                flow_id,
                [current["state"]],
                current["state"],
                data=json.dumps(saved, sort_keys=True),
            )
        return True

    def _choice(
        self, session: Session, identity: Identity, tenant: dict[str, Any]
    ) -> dict[str, Any]:
        """A tenant as offered: may the account register applications there? Read with a
        Graph token for that tenant, obtained silently; unknown when the tenant wants the
        person first (the checks after the sign-in there will tell)."""
        engine = self.engine
        config = engine.ctx.config
        tenant_id = str(tenant["tenantId"]).lower()
        home = tenant_id == identity.tenant_id.lower()
        right: bool | None
        try:
            token = (
                engine.device.token(session, config.graph_scope)
                if home
                else engine.device.token_in(session, config.graph_scope, tenant_id)
            )
            graph = GraphClient(config.graph_url, engine.ctx.http, lambda: token)
            policy, roles = both(graph.allowed_to_create_apps, graph.app_registration_roles)
            right, reason = app_right(policy, roles, not home, NO_APP_RIGHT_HERE)
        except (SignInError, MicrosoftError) as exc:
            right = None
            reason = (
                "known after you sign in there"
                if isinstance(exc, SignInError)
                else f"could not be read ({exc})"
            )
        return {
            "id": tenant_id,
            "name": tenant.get("displayName"),
            "domain": tenant.get("defaultDomain"),
            "home": home,
            "right": right,
            "reason": reason,
        }

    def choose(self, flow_id: str, user: str, tenant_id: str) -> str | None:
        """The requester pressed "Create here" on a tenant; returns a refusal text or None."""
        engine = self.engine
        flow = queries.get_flow(engine.ctx.db, flow_id)
        if flow is None:
            return "That creation does not exist (any more)."
        engine.ctx.authz.require_requester(user, flow["requester"], "choose", flow["name"])
        if flow["state"] != "choosing_tenant":
            return f"The creation of `{flow['name']}` is {flow['state']}; nothing to choose."
        data = engine.record.data(flow)
        choice = next(
            (c for c in data.get("tenant_choices", []) if c["id"] == tenant_id.strip().lower()),
            None,
        )
        if choice is None:
            raise CommandError("Pick one of the tenants offered.")
        pending = data.pop("pending_identity", None) or {}
        data["tenant"] = choice["id"]
        data["tenant_name"] = choice.get("name")
        if not queries.transition_flow(
            engine.ctx.db,
            flow_id,
            ["choosing_tenant"],
            "awaiting_sign_in",
            data=json.dumps(data, sort_keys=True),
        ):
            return "The tenant was already chosen."
        flow = queries.get_flow(engine.ctx.db, flow_id) or flow
        if data.get("tenant_chooser_ts"):
            engine.notifier.update(
                flow["channel_id"],
                data["tenant_chooser_ts"],
                tenant_chosen(by=user, choice=choice, name=flow["name"]),
            )
        engine.record.audit(flow, "sign_in.tenant_chosen", "ok", tenant_id=choice["id"], by=user)
        identity = Identity(
            upn=str(pending.get("upn") or ""),
            name=str(pending.get("name") or ""),
            tenant_id=str(pending.get("tenant_id") or ""),
            object_id=str(pending.get("object_id") or ""),
            idp=pending.get("idp"),
            home_account_id=pending.get("home_account_id"),
        )
        session = engine.session(flow_id)
        if choice["home"]:
            if session is None:
                engine.fail(flow_id, SignInError("no_session", "the sign-in session is gone"))
                return None
            engine.ctx.workers.submit(engine.redemption.signed_in, flow, identity, session)
            return None
        tenant = {
            "tenantId": choice["id"],
            "displayName": choice.get("name"),
            "defaultDomain": choice.get("domain"),
        }
        engine.ctx.workers.submit(self._sign_in_there, flow, identity, tenant, data)
        return None

    def _sign_in_there(
        self,
        flow: dict[str, Any],
        identity: Identity,
        tenant: dict[str, Any],
        data: dict[str, Any],
    ) -> None:
        """One more device code, against the chosen tenant's authority, to the same person."""
        engine = self.engine
        tenant_id = data["tenant"]
        data["first_identity"] = {
            "upn": identity.upn,
            "object_id": identity.object_id,
            "tenant_id": identity.tenant_id,
            "home_account_id": identity.home_account_id,
            "tenant_switch": True,
        }
        data.pop("sign_in_scope", None)
        name = tenant.get("displayName") or tenant.get("defaultDomain") or tenant_id
        engine.sign_in_once_more(
            flow,
            data,
            lambda: engine.device.begin(None, tenant=tenant_id),
            audit=(
                "sign_in.tenant",
                {
                    "tenant_id": tenant_id,
                    "signed_in_tenant": identity.tenant_id,
                    "category": tenant.get("tenantCategory"),
                },
            ),
            note=(
                f":twisted_rightwards_arrows: Signed in as {blocks.escape(identity.upn)} in tenant "
                f"`{blocks.escape(identity.tenant_id)}`; `{flow['name']}` is in "
                f"tenant {describe(tenant)}. One more sign-in, to that tenant and with the same "
                "account, is needed."
            ),
            again=f"tenant {blocks.escape(name)}",
        )
