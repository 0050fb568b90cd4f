"""The domain's errors, in one tree.

    VeeamSAError                      base: every error the bot reports on purpose
    ├── ConfigError                   a missing or malformed setting (stops start-up)
    ├── StorageError                  the database cannot be opened, migrated or written
    ├── CommandError                  a slash command the bot cannot act on (bad grammar, bad name)
    ├── NotAuthorised                 the Slack user may not do this
    ├── SignInError                   the Microsoft device-code sign-in failed
    │                                 (carries the AADSTS code and correlation id)
    ├── MicrosoftError                Graph / ARM answered with an error or was unreachable
    │   ├── Throttled                 429 (carries Retry-After)
    │   └── Unreachable               timeouts, connection errors, 5xx after retries
    ├── ApplianceError                the VBAzure appliance refused, failed or was unreachable
    ├── PermissionListError           a list of the permissions VBAzure needs cannot be used
    ├── Cancelled                     someone cancelled a flow while a step was running
    └── UnexpectedError               anything else a flow step raised (a bug, a truncated
                                      answer, a failed write): carries the log's reference

`bot.slack.messages` is the one place that turns these into Slack text. Messages never carry a
secret, token or device code: the constructors take only what is safe to show.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import uuid


class VeeamSAError(Exception):
    """Base of every error the bot raises on purpose."""


class ConfigError(VeeamSAError):
    """A setting is missing or malformed; the message names it and says how to fix it."""

    def __init__(self, variable: str, problem: str, fix: str = "") -> None:
        self.variable = variable
        self.problem = problem
        self.fix = fix
        text = f"{variable} {problem}"
        if fix:
            text += f": {fix}"
        super().__init__(text)


class PermissionListError(VeeamSAError):
    """A list of the Azure permissions VBAzure needs (the appliance's export or the list the
    bot ships) cannot be made into a least-privilege role; the message says why."""


class StorageError(VeeamSAError):
    """The database cannot be opened, migrated or written."""


DATABASE_UNAVAILABLE = (
    "The bot cannot write its database right now (it is locked or read-only). Nothing was changed; "
    "try again in a moment, or ask the operator to check VEEAM_SA_DB."
)


class CommandError(VeeamSAError):
    """A slash command the bot cannot act on; the message is shown to the user as is."""


class NotAuthorised(VeeamSAError):
    """The Slack user may not do this; `rule` names the rule that refused."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        super().__init__(rule)


class SignInError(VeeamSAError):
    """A device-code sign-in failed (Microsoft error, expiry, cancel, network)."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        aadsts: str | None = None,
        correlation_id: str | None = None,
        error: str | None = None,
    ) -> None:
        self.kind = kind
        self.aadsts = aadsts
        self.correlation_id = correlation_id
        self.error = error
        super().__init__(message)


class MicrosoftError(VeeamSAError):
    """Graph or ARM answered with an error."""

    def __init__(
        self,
        service: str,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
    ) -> None:
        self.service = service
        self.status = status
        self.code = code
        self.request_id = request_id
        super().__init__(f"{service} {status} {code}: {message}")


class Throttled(MicrosoftError):
    """Microsoft answered 429; `retry_after` is in seconds."""

    def __init__(
        self, service: str, retry_after: float, message: str = "Too many requests"
    ) -> None:
        self.retry_after = retry_after
        super().__init__(service, 429, "TooManyRequests", message)


class Unreachable(MicrosoftError):
    """A timeout, connection error or repeated 5xx."""

    def __init__(self, service: str, message: str, status: int = 0) -> None:
        super().__init__(service, status, "Unreachable", message)


class ApplianceError(VeeamSAError):
    """The VBAzure appliance refused, failed, or could not be reached.

    ``errors`` holds a problem document's per-field messages (``{field: [text, …]}``) and
    ``trace_id`` its ``traceId``, both scrubbed like the text.

    ``kind`` is one of ``credentials`` (sign-in refused), ``mfa`` (the user has MFA on),
    ``forbidden`` (403), ``not_found`` (404), ``problem`` (another 4xx problem document),
    ``unreachable`` (timeouts, connection errors, 429 / 5xx after the retries), ``tls``
    (certificate verification failed), ``operation`` (an asynchronous operation ended in
    ``Error`` / ``Canceled`` / …) and ``timeout`` (an operation did not finish in time).
    ``retryable`` marks failures a later attempt may cure.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "problem",
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        errors: dict[str, list[str]] | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.kind = kind
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or {}
        self.trace_id = trace_id
        self.retryable = retryable
        self.retry_after = retry_after
        super().__init__(message)


class Cancelled(VeeamSAError):
    """A flow was cancelled while one of its steps ran; it stops at the next step boundary."""

    def __init__(self, by: str) -> None:
        self.by = by
        super().__init__(f"cancelled by {by}")


class UnexpectedError(VeeamSAError):
    """A flow step raised something the bot did not expect. `reference` ties the message in
    Slack to the traceback in the log; the message never carries the exception's text (it
    may echo data)."""

    def __init__(self, reference: str, kind: str) -> None:
        self.reference = reference
        self.kind = kind
        super().__init__(f"unexpected {kind} (reference {reference})")


#: Graph's refusals of a client secret by an app management policy. Graph refuses a secret
#: the policy does not allow; it never shortens one.
POLICY_LIFETIME = "CredentialInvalidLifetimeAsPerAppPolicy"
POLICY_NO_SECRETS = "CredentialTypeNotAllowedAsPerAppPolicy"
_POLICY_ID = re.compile(r"policy '([0-9A-Fa-f-]{36})'")


def policy_id(error: MicrosoftError) -> str | None:
    """The app management policy an `addPassword` refusal names."""
    found = _POLICY_ID.search(str(error))
    return found.group(1).lower() if found else None


def error_label(error: VeeamSAError) -> str:
    """A short, low-cardinality label of an error for the flow row (and its metric)."""
    detail = getattr(error, "code", None) or getattr(error, "kind", None) or ""
    return f"{type(error).__name__}:{detail}"[:200]


def as_flow_error(exc: BaseException, flow_id: str) -> VeeamSAError:
    """The error a flow step ended with, as a domain error: a `VeeamSAError` as it is;
    anything else is logged with its traceback under a fresh reference and becomes an
    `UnexpectedError` that names only the reference and a kind (its text may echo data)."""
    if isinstance(exc, VeeamSAError):
        return exc
    reference = uuid.uuid4().hex[:12]
    if isinstance(exc, json.JSONDecodeError | KeyError | TypeError | ValueError | IndexError):
        kind = "an answer the bot could not read"
    elif isinstance(exc, sqlite3.Error | OSError):
        kind = "the bot's database or disk failed"
    elif type(exc).__name__ == "SlackApiError":  # slack_sdk's, without importing it here
        response = getattr(exc, "response", None)
        code = response.get("error") if response is not None else None
        kind = f"Slack refused a message ({code or 'unknown error'})"
    else:
        kind = type(exc).__name__
    logging.getLogger("bot.flows").error(
        "flow %s: unexpected %s (reference %s)",
        flow_id,
        type(exc).__name__,
        reference,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return UnexpectedError(reference, kind)
