"""Block Kit builders: pure functions from data to message payloads.

Each builder returns `{"text": ..., "blocks": [...]}` — `text` is the notification and
screen-reader fallback. Nothing here talks to Slack or the database. By concern: `common`
(pieces every message uses), `create`, `expiry` (warnings, renewal, retirement), `accounts`
(list and show), `permissions` (Veeam's permission check).
"""

from __future__ import annotations

from bot.slack.blocks.accounts import (
    LIST_MAX_BLOCKS,
    LIST_PER_SECTION,
    account_detail,
    account_list,
)
from bot.slack.blocks.common import (
    MAX_BUTTON_TEXT,
    MAX_SECTION_TEXT,
    STEP_ICONS,
    STEP_LABELS,
    STEP_WORDS,
    Payload,
    checklist,
    error_message,
    escape,
    help_message,
    note,
    plural,
    refusal_message,
    slack_date,
    slack_time,
)
from bot.slack.blocks.create import (
    CHECK_ICONS,
    MAX_OPTIONS,
    code_delivery_note,
    code_message_closed,
    create_parent,
    device_code_message,
    next_steps,
    portal_app_url,
    prerequisites_message,
    sign_in_label,
    subscription_chooser,
)
from bot.slack.blocks.expiry import (
    DIGEST_BUTTONS,
    DIGEST_LINES,
    MAX_MESSAGE_BLOCKS,
    digest_pages,
    expiry_digest,
    expiry_warning,
    mentions,
    renew_parent,
    renewal_done,
    renewed_alert,
    renewed_keep_old,
    requester_dm,
    retire_parent,
    retired_old,
    retiring_reminder,
)
from bot.slack.blocks.health import DRIFT_TITLES, REPAIR_PLANS, drift_alert, health_line
from bot.slack.blocks.permissions import permissions_message, permissions_unknown

__all__ = [
    "DRIFT_TITLES",
    "REPAIR_PLANS",
    "drift_alert",
    "health_line",
    "CHECK_ICONS",
    "DIGEST_BUTTONS",
    "DIGEST_LINES",
    "LIST_MAX_BLOCKS",
    "LIST_PER_SECTION",
    "MAX_BUTTON_TEXT",
    "MAX_MESSAGE_BLOCKS",
    "MAX_OPTIONS",
    "MAX_SECTION_TEXT",
    "Payload",
    "STEP_ICONS",
    "STEP_LABELS",
    "STEP_WORDS",
    "account_detail",
    "account_list",
    "checklist",
    "code_delivery_note",
    "code_message_closed",
    "create_parent",
    "device_code_message",
    "digest_pages",
    "error_message",
    "escape",
    "expiry_digest",
    "expiry_warning",
    "help_message",
    "permissions_message",
    "permissions_unknown",
    "mentions",
    "requester_dm",
    "note",
    "plural",
    "next_steps",
    "portal_app_url",
    "prerequisites_message",
    "refusal_message",
    "renew_parent",
    "renewal_done",
    "renewed_alert",
    "renewed_keep_old",
    "retire_parent",
    "retired_old",
    "retiring_reminder",
    "sign_in_label",
    "slack_date",
    "slack_time",
    "subscription_chooser",
]
