"""Slack action and callback ids, in one place."""

COMMAND = "/veeam-sa"

ACTION_CANCEL_FLOW = "veeam_sa.flow.cancel"
ACTION_OPEN_DEVICE_LOGIN = "veeam_sa.flow.open_device_login"
ACTION_RECHECK = "veeam_sa.create.recheck"
ACTION_CHOOSE_SUBSCRIPTIONS = "veeam_sa.create.subscriptions"
ACTION_CREATE = "veeam_sa.create.confirm"
ACTION_RENEW = "veeam_sa.renew"
ACTION_RETIRE_OLD_SECRET = "veeam_sa.renew.retire_old"
