"""The VBAzure appliance client's transport: sign-in and token renewal, retries with
backoff, problem documents turned into scrubbed `ApplianceError`s. The operations on
service accounts are `bot.clients.vbazure.accounts`; this is the package's overview.

The bot hands a new or renewed client secret straight to the appliance, so the secret never
has to be typed into VBAzure's UI. What the client speaks (REST API v8 / v8.1):

- ``POST /api/oauth2/token`` (form ``grant_type=Password&username=&password=``) gives an
  access token, its lifetime and a refresh token; ``grant_type=Refresh_token`` renews them.
  The access token is renewed 60 s before it expires, and once on a 401; when the refresh
  token is refused the client signs in with the password again.
  The answer names the user's role in ``roleName`` (kept as ``role_name``).
- ``POST /api/{ver}/accounts/azure/service/saveByApp`` and
  ``PUT /api/{ver}/accounts/azure/service/updateByApp/{accountId}`` answer 200 with the
  account id as a JSON string, or 202 with an asynchronous operation.
- ``GET /api/{ver}/accounts/azure/service[/{accountId}]`` answer 200 with the page / the
  account, or 202 with an asynchronous operation whose ``result`` is the page / the account.
  Paging is ``Offset`` / ``Limit`` (query parameters are case-sensitive) over ``results``;
  ``totalCount`` may be null, and then pages are read until a short or empty one. Items
  carry ``accountId``, ``subscriptionIds`` and ``purposes``; the client adds an ``id`` alias.
- An operation (``{"id", "startTime", "status", "result", "error", "_links"}``) is polled
  at ``GET /api/{ver}/operations/{id}`` while its v8.1 ``JobStatus`` is ``Pending``,
  ``Running``, ``RunningWithWarning``, ``RunningWithError`` or ``Canceling``. ``Success``
  and ``Warning`` are done (a warning is logged, not a failure); ``Error``, ``Canceled``,
  ``NeverExecuted``, ``Unknown`` (or anything else) failed, and ``error`` is a problem.

Timeouts, connection errors, 429 and 5xx are retried a bounded number of times with backoff
(``Retry-After`` honoured). ``saveByApp`` is not idempotent: after an answer that may have
been lost (read timeout, 5xx) the client looks for the account by name and application id
before posting again, so a retry never creates a second account.

Errors: every failure is an ``ApplianceError`` (a ``bot.core.errors.VeeamSAError``)::

    VeeamSAError
    └── ApplianceError     the appliance refused, failed or could not be reached
                           (``kind``, ``status``, ``title``, ``detail``)

Its text never carries the request body, the password, a token or a client secret: problem
documents contribute only their ``title``, ``detail``, per-field ``errors`` and ``traceId``,
and those are scrubbed of every secret the call knew about.

TLS: the caller passes an ``httpx.Client`` with certificate verification on (see
``bot.clients.http.make_http_client``; ``SSL_CERT_FILE`` adds a private CA). A verification
failure is reported as such and never retried or bypassed.
"""

from __future__ import annotations

from bot.clients.vbazure.accounts import (
    AccountSettings,
    CertificateUpload,
    VBAzureClient,
    from_config,
)
from bot.clients.vbazure.transport import (
    AZURE_ENVIRONMENTS,
    DEFAULT_API_VERSION,
    DONE_STATES,
    ORIGIN_CERTIFICATE,
    ORIGIN_DEVICE,
    ORIGIN_SECRET,
    RUNNING_STATES,
)
from bot.core.errors import ApplianceError
from bot.core.purposes import AZURE_ACCOUNT_PURPOSES, DEFAULT_PURPOSES

__all__ = [
    "AZURE_ACCOUNT_PURPOSES",
    "AZURE_ENVIRONMENTS",
    "DEFAULT_API_VERSION",
    "DEFAULT_PURPOSES",
    "DONE_STATES",
    "ORIGIN_CERTIFICATE",
    "ORIGIN_DEVICE",
    "ORIGIN_SECRET",
    "RUNNING_STATES",
    "ApplianceError",
    "AccountSettings",
    "CertificateUpload",
    "VBAzureClient",
    "from_config",
]
