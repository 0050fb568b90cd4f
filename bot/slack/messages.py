"""The one place that turns errors into words for Slack.

Every text here is plain language with what to do next; Microsoft's AADSTS code and
correlation id are appended for support when Microsoft gave them. No secret, token or
device code ever reaches these functions.
"""

from __future__ import annotations

from typing import Any

from bot.core.errors import (
    POLICY_LIFETIME,
    POLICY_NO_SECRETS,
    ApplianceError,
    Cancelled,
    MicrosoftError,
    SignInError,
    UnexpectedError,
    VeeamSAError,
    policy_id,
)
from bot.slack.blocks import escape

SIGN_IN_ADVICE: dict[str, str] = {
    "declined": "The sign-in was declined at Microsoft's prompt. Run `/veeam-sa create` again "
    "if that was a mistake.",
    "expired": "The sign-in code expired before anyone used it (codes last about 15 minutes). "
    "Run the command again for a fresh code.",
    "bad_code": "Microsoft did not recognise the sign-in code. Run the command again for a fresh code.",
    "conditional_access": "A Conditional Access policy in your tenant blocks device-code sign-in "
    "for this account. Ask your Entra admin to allow the device code flow for this app (or to "
    "exclude this account), or use an account the policy does not cover.",
    "conditional_access_device": "A Conditional Access policy requires a managed or compliant "
    "device, which device-code sign-in cannot prove. Ask your Entra admin for an exception, or "
    "sign in from a managed device's browser.",
    "mfa": "Your tenant requires multi-factor authentication for this sign-in. Open the link "
    "again and complete MFA, or ask your admin to register a method for this account.",
    "not_in_tenant": "That account does not belong to the tenant being signed in to (or it is a "
    "personal Microsoft account). Sign in with a work account of the tenant that holds the "
    "subscriptions.",
    "tenant_not_found": "Microsoft does not know the tenant the bot signs in to. Check "
    "VEEAM_SA_TENANT (a tenant id, a verified domain, or 'organizations').",
    "client_not_found": "The sign-in application (VEEAM_SA_CLIENT_ID) does not exist in this "
    "tenant. Ask your Entra admin to consent to it, or configure a client id of your own.",
    "consent": "The sign-in application needs consent in your tenant before it can be used. "
    "Ask your Entra admin to grant consent, then try again.",
    "invalid_scope": "Microsoft refused the requested permissions. This is a configuration "
    "problem: check VEEAM_SA_GRAPH_URL and VEEAM_SA_ARM_URL for your cloud.",
    "unreachable": "Microsoft's sign-in service could not be reached or kept failing. Check the "
    "bot's network access to the authority host, then try again.",
    "personal": "That is a personal Microsoft account. Veeam Backup for Microsoft Azure needs a "
    "work or school account of the tenant that holds your subscriptions: sign in with one of those.",
    "cancelled": "The sign-in was cancelled.",
    "email_mismatch": "The account that signed in is not yours: VEEAM_SA_REQUIRE_EMAIL_MATCH requires the "
    "Microsoft sign-in name to equal your Slack profile's email. Nothing was changed; sign in as yourself.",
    "other_person": "The second sign-in was made with another account than the first. Nothing "
    "was changed; run the command again and sign in both times with the same account.",
    "no_session": "The sign-in session was lost (the bot restarted). Run the command again.",
}


def support_suffix(aadsts: str | None, correlation_id: str | None) -> str:
    parts = []
    if aadsts:
        parts.append(f"error `{aadsts}`")
    if correlation_id:
        parts.append(f"correlation id `{correlation_id}`")
    return f" ({', '.join(parts)})" if parts else ""


def sign_in_failure(error: SignInError) -> str:
    if error.kind == "unexpected":
        return (
            f"Something went wrong on the bot's side during sign-in ({error}); nothing was "
            "changed. Try again; if it keeps happening, give that reference to whoever runs the bot."
        )
    if error.kind == "tenant":  # the tenant choice: the summary is the whole story, escaped
        return str(error) + support_suffix(error.aadsts, error.correlation_id)
    advice = SIGN_IN_ADVICE.get(error.kind)
    if advice is None:
        detail = escape(str(error) or error.error or "unknown error")
        advice = (
            f"Microsoft refused the sign-in: {detail} (`{error.error or 'unknown_error'}`). "
            "Try again; if it keeps happening, give the codes below to your Entra admin."
        )
    return advice + support_suffix(error.aadsts, error.correlation_id)


def secret_policy_note(
    limit: dict[str, Any], wanted_days: int, noun: str = "client secret"
) -> str:
    """Why a client secret (or certificate) lasts less than asked: the tenant's app
    management policy."""
    policy = f" (`{limit['policy']}`)" if limit.get("policy") else ""
    days = int(limit["days"])
    if limit.get("read"):
        return (
            f"The tenant's app management policy{policy} allows {noun}s of at most "
            f"{days} days, so this one lasts {days} days instead of {wanted_days}."
        )
    return (
        f"The tenant's app management policy{policy} refused a {wanted_days}-day {noun}; "
        f"the longest it accepted is {days} days, so this one lasts {days} days."
    )


def microsoft_failure(error: MicrosoftError) -> str:
    policy = policy_id(error)
    named = f" (`{policy}`)" if policy else ""
    if error.code == POLICY_NO_SECRETS:
        return (
            f"The tenant's app management policy{named} does not allow client secrets on "
            "applications. Veeam Backup for Microsoft Azure can sign in with a certificate "
            "instead: create the account with `/veeam-sa create NAME --credential certificate` "
            "(or set `VEEAM_SA_CREDENTIAL=certificate` to make it the default). Otherwise ask a "
            "tenant admin to exempt this application from the policy (or to allow client "
            "secrets), then try again."
        )
    if error.code == POLICY_LIFETIME:
        return (
            f"The tenant's app management policy{named} refused every client secret lifetime the "
            "bot tried, down to one day. Ask a tenant admin which lifetime the policy allows."
        )
    if error.status == 403:
        head = f"{error.service} refused the request: the signed-in account lacks the right ({error.code})."
    elif error.status == 429:
        head = f"{error.service} kept throttling the bot (429) beyond the retry budget."
    elif error.status == 0 or error.status >= 500:
        head = f"{error.service} could not be reached or kept failing ({error.code})."
    else:
        head = f"{error.service} answered {error.status} {error.code}."
    suffix = f" (request id `{error.request_id}`)" if error.request_id else ""
    return head + suffix


def unexpected_failure(error: UnexpectedError) -> str:
    return (
        f"Something unexpected went wrong ({error.kind}). The bot's log has the details under "
        f"reference `{error.reference}`; give it to whoever runs the bot."
    )


def appliance_text(error: ApplianceError) -> str:
    return f"the Veeam appliance refused or could not be reached: {escape(error)}"


def flow_failure(error: VeeamSAError) -> str:
    """Any error that ended a flow step, in words."""
    if isinstance(error, ApplianceError):
        return appliance_text(error)
    if isinstance(error, MicrosoftError):
        return microsoft_failure(error)
    if isinstance(error, SignInError):
        return sign_in_failure(error) if error.kind != "other" else escape(error)
    if isinstance(error, UnexpectedError):
        return unexpected_failure(error)
    if isinstance(error, Cancelled):
        return f"Cancelled by <@{error.by}>."
    return escape(error)
