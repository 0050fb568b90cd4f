"""`veeam-sa-bot doctor`: check the configuration and reach Slack, Microsoft and the appliance.

One line per check on stdout, `✓ name: detail` or `✗ name: problem — fix`; the configuration
line is followed by the effective value of every setting, secrets masked. Exit status 0 when
every check passes, 1 when one fails, 2 when the configuration itself does not load.

The doctor changes nothing: it does not create the database or the key file, does not
migrate the schema and does not open the Socket Mode websocket.
"""

from __future__ import annotations

import sys
from typing import TextIO

from bot.core.config import Config
from bot.core.errors import ConfigError
from bot.ops.doctor.local import SETTINGS, check_configuration, check_database, check_key
from bot.ops.doctor.remote import (
    _MS_TLS_FIX,
    check_alert_channel,
    check_connection_mode,
    check_reachable,
    check_sign_in,
    check_slack_token,
    read_manifest_scopes,
    required_scopes,
)
from bot.ops.doctor.result import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    MANIFEST_BOT_SCOPES,
    MANIFEST_PATH,
    Result,
)

__all__ = [
    "MANIFEST_BOT_SCOPES",
    "MANIFEST_PATH",
    "SETTINGS",
    "Result",
    "main",
    "read_manifest_scopes",
    "required_scopes",
    "run_checks",
]

# ------------------------------------------------------------------ entry point


def run_checks(config: Config) -> list[Result]:
    from bot.clients.http import make_http_client
    from bot.slack.client import make_web_client

    results = [check_configuration(config)]
    database_result, database = check_database(config)
    results += [database_result, check_key(config, database)]

    client = make_web_client(config)
    slack = check_slack_token(config, client)
    results += slack.results
    results.append(check_connection_mode(config, client))
    alert = check_alert_channel(config, client, slack)
    if alert is not None:
        results.append(alert)

    with make_http_client(config) as http:
        results.append(check_sign_in(config, http))
        results.append(check_reachable("Microsoft Graph", config.graph_url, http, _MS_TLS_FIX))
        results.append(check_reachable("Azure Resource Manager", config.arm_url, http, _MS_TLS_FIX))
        if config.veeam_url:
            results.append(
                check_reachable(
                    "Veeam appliance",
                    config.veeam_url,
                    http,
                    "check network/proxy/SSL_CERT_FILE: add the appliance's certificate (or "
                    "its CA) to the bundle in SSL_CERT_FILE",
                )
            )
    return results


_ASCII = str.maketrans({"✓": "OK", "✗": "FAIL", "…": "...", "—": "-", "→": "->"})


def _emit(line: str, out: TextIO) -> None:
    try:
        print(line, file=out)
    except UnicodeEncodeError:  # a terminal without UTF-8
        print(line.translate(_ASCII).encode("ascii", "replace").decode("ascii"), file=out)


def main(out: TextIO | None = None) -> int:
    """Run every check, print one line each; return the exit status."""
    from bot.core.config import load_config

    stream = out or sys.stdout
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"veeam-sa-bot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    results = run_checks(config)
    for result in results:
        for line in result.lines():
            _emit(line, stream)
    stream.flush()
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED
