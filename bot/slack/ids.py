"""Slack action and callback ids, in one place.

Block Kit wants an element's `action_id` unique within its block, so buttons that repeat in
one block (a digest's Renew buttons) carry their subject in the id: `renew_action(7)` is
`veeam_sa.renew:7`, matched by `RENEW_ACTION`. The bare `ACTION_RENEW` still matches, for
buttons on messages posted before the suffix existed.
"""

import re

COMMAND = "/veeam-sa"

ACTION_CANCEL_FLOW = "veeam_sa.flow.cancel"
ACTION_OPEN_DEVICE_LOGIN = "veeam_sa.flow.open_device_login"
ACTION_RECHECK = "veeam_sa.create.recheck"
ACTION_CHOOSE_SUBSCRIPTIONS = "veeam_sa.create.subscriptions"
ACTION_CREATE = "veeam_sa.create.confirm"
ACTION_CHOOSE_TENANT = "veeam_sa.create.tenant"
ACTION_RENEW = "veeam_sa.renew"
RENEW_ACTION = re.compile(r"\A" + re.escape(ACTION_RENEW) + r"(?::\d{1,18})?\Z")


def renew_action(account_id: int) -> str:
    """The Renew button's action_id for one account."""
    return f"{ACTION_RENEW}:{int(account_id)}"


ACTION_RETIRE_OLD_SECRET = "veeam_sa.renew.retire_old"
ACTION_PERMISSIONS_RECHECK = "veeam_sa.permissions.recheck"

#: An expiry warning's Snooze buttons (admins): `snooze_action("1d")`, `snooze_action("next")`;
#: the value is `SECRET_ID:OPTION`.
ACTION_SNOOZE = "veeam_sa.alert.snooze"
SNOOZE_ACTION = re.compile(r"\A" + re.escape(ACTION_SNOOZE) + r":(?:1d|next)\Z")


def snooze_action(option: str) -> str:
    """A Snooze button's action_id for one of its options."""
    return f"{ACTION_SNOOZE}:{option}"

#: The Repair button of a drift alert (its value is the drift's row id).
ACTION_REPAIR_DRIFT = "veeam_sa.drift.repair"

#: The create form (a modal): its callback id and its fields (block_id = action_id).
VIEW_CREATE = "veeam_sa.create.form"
FORM_NAME = "name"
FORM_DESCRIPTION = "description"
FORM_SUBSCRIPTIONS = "subscriptions"
FORM_TENANT = "tenant"

#: The App Home's page buttons: `veeam_sa.home.page.prev` / `.next`, the page in the value.
ACTION_HOME_PAGE = "veeam_sa.home.page"
HOME_PAGE_ACTION = re.compile(r"\A" + re.escape(ACTION_HOME_PAGE) + r"\.(?:prev|next)\Z")
