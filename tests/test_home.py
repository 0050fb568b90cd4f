"""The App Home: published when opened, re-published (debounced) when something changes,
paged within Block Kit's 100 blocks, Renew working from it, and what others may see."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.flows import appliance
from bot.flows.home import HomeTab
from bot.slack import ids
from bot.slack.blocks.home import PER_PAGE, home_view
from storage import queries
from tests.fakes.blockkit import view_errors
from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import app_home_opened_event, event_callback_payload
from tests.fakes.vbazure import VBAzureDouble
from tests.harness import ADMIN, OTHER, Bot
from tests.test_appliance_flow import created, vb, vbot  # noqa: F401 - fixtures
from tests.test_provision import sign_in
from tests.test_renew import approve_next, renew_flow, wait_renew

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


def texts(view: dict[str, Any] | None) -> str:
    """Everything a person reads on a view, in one string."""
    assert view is not None
    return json.dumps(view["blocks"], ensure_ascii=False)


def buttons(view: dict[str, Any] | None) -> list[dict[str, Any]]:
    assert view is not None
    found = []
    for block in view["blocks"]:
        if block.get("accessory", {}).get("type") == "button":
            found.append(block["accessory"])
        for element in block.get("elements", []) if block["type"] == "actions" else []:
            found.append(element)
    return found


def wait_home(slack: SlackDouble, user: str, fragment: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = slack.home(user)
        if view is not None and fragment in texts(view):
            return view
        time.sleep(0.02)
    raise AssertionError(f"the Home of {user} never showed {fragment!r}: {slack.home(user)}")


def seed_accounts(bot: Bot, count: int) -> None:
    """`count` managed accounts straight into the database, one secret each."""
    now = datetime.now(UTC)
    for n in range(count):
        account_id = queries.insert_account(
            bot.db,
            {
                "name": f"acct-{n:03d}",
                "state": "active",
                "app_id": f"00000000-0000-0000-0000-{n:012d}",
                "app_object_id": f"10000000-0000-0000-0000-{n:012d}",
                "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                "created_by": ADMIN,
                "channel_id": "C0OPS",
                "subscriptions": json.dumps([SUB]),
                "roles": "{}",
                "created_at": now.isoformat(),
            },
        )
        queries.insert_secret(
            bot.db,
            {
                "account_id": account_id,
                "key_id": f"20000000-0000-0000-0000-{n:012d}",
                "hint": "abc",
                "state": "active",
                "end_at": (now + timedelta(days=10 + n)).isoformat(),
                "created_at": now.isoformat(),
            },
        )


def test_home_is_published_on_open_and_again_after_a_change(bot: Bot, slack: SlackDouble) -> None:
    bot.services.home.delay = 0.05
    bot.open_home(ADMIN)
    first = wait_home(slack, ADMIN, "No managed service accounts yet")
    assert first["type"] == "home" and not view_errors({"type": "home", "blocks": first["blocks"]})

    # A creation starts, waits for its requester, and ends: the open Home follows.
    sign_in(bot, f"create prod --subscription {SUB}")
    bot.wait_state("prod", "done", timeout=30)
    home = wait_home(slack, ADMIN, "*`prod`* — :large_green_circle: valid")
    assert "secret expires <!date^" in texts(home) and "Nothing is in progress" in texts(home)
    renew = [
        b
        for b in buttons(home)
        if b["action_id"] == ids.renew_action(bot.flow("prod")["account_id"])
    ]
    assert len(renew) == 1 and renew[0]["text"]["text"] == "Renew"
    published = slack.calls_to("views.publish", user_id=ADMIN)
    assert all(c.ok for c in published)
    # Debounced: the whole creation (a dozen steps) cost a handful of publishes, not one a step.
    assert 2 <= len(published) <= 6, len(published)
    # Someone who never opened the Home gets none.
    assert slack.calls_to("views.publish", user_id=OTHER) == []


def test_renew_from_the_home(bot: Bot, slack: SlackDouble) -> None:
    bot.services.home.delay = 0.05
    sign_in(bot, f"create prod --subscription {SUB}")
    bot.wait_state("prod", "done", timeout=30)
    account_id = bot.flow("prod")["account_id"]
    bot.open_home(ADMIN)
    wait_home(slack, ADMIN, "*`prod`*")

    status, _ = bot.click_home(ids.renew_action(account_id), str(account_id))
    assert status == 200
    flow = wait_renew(bot, "awaiting_sign_in")
    assert flow["requester"] == ADMIN and flow["channel_id"] == "C0OPS"
    # The clicker hears where it goes, on the Home; the Home lists the renewal as waiting.
    wait_home(slack, ADMIN, "Renewing `prod`")
    wait_home(slack, ADMIN, f"waiting for <@{ADMIN}> to sign in")
    approve_next(bot, 2)
    wait_renew(bot, "done")
    home = wait_home(slack, ADMIN, "Nothing is in progress")
    assert renew_flow(bot)["state"] == "done"

    # A click on an account that is gone is answered on the Home and starts nothing.
    before = len(list(bot.db.table("flows").rows))
    bot.click_home(ids.renew_action(999), "999")
    wait_home(slack, ADMIN, "not managed by this bot")
    assert len(list(bot.db.table("flows").rows)) == before
    assert home["type"] == "home"


def test_others_see_what_they_may(bot: Bot, slack: SlackDouble) -> None:
    seed_accounts(bot, 2)
    bot.open_home(OTHER)
    home = wait_home(slack, OTHER, "for the bot's admins")
    assert "acct-000" not in texts(home) and f"<@{ADMIN}>" in texts(home)
    assert buttons(home) == []

    bot.services.authz.list_for_everyone = True
    bot.open_home(OTHER)
    home = wait_home(slack, OTHER, "acct-001")
    assert buttons(home) == []  # may list, may not renew


def test_paging_stays_within_the_block_limit(bot: Bot, slack: SlackDouble) -> None:
    total = 2 * PER_PAGE + 5
    seed_accounts(bot, total)
    bot.open_home(ADMIN)
    home = wait_home(slack, ADMIN, "Page 1 of 3")
    assert len(home["blocks"]) <= 100
    assert "acct-000" in texts(home) and f"acct-{PER_PAGE:03d}" not in texts(home)
    assert [
        b["action_id"] for b in buttons(home) if b["action_id"].startswith(ids.ACTION_HOME_PAGE)
    ] == [f"{ids.ACTION_HOME_PAGE}.next"]
    bot.click_home(f"{ids.ACTION_HOME_PAGE}.next", "1")
    home = wait_home(slack, ADMIN, "Page 2 of 3")
    assert f"acct-{PER_PAGE:03d}" in texts(home) and "acct-000" not in texts(home)
    bot.click_home(f"{ids.ACTION_HOME_PAGE}.next", "2")
    home = wait_home(slack, ADMIN, "Page 3 of 3")
    assert f"acct-{total - 1:03d}" in texts(home)
    assert [
        b["text"]["text"] for b in buttons(home) if b["action_id"].startswith(ids.ACTION_HOME_PAGE)
    ] == ["◀ Previous"]
    # A forged page number shows the last page, not an error.
    bot.click_home(f"{ids.ACTION_HOME_PAGE}.prev", "9999")
    wait_home(slack, ADMIN, "Page 3 of 3")


def test_the_largest_home_is_valid_block_kit() -> None:
    accounts = [
        {
            "id": n,
            "name": "n" * 255,
            "state": "active",
            "status": "expired",
            "end_ts": 1.9e9,
            "end_at": "2030-01-01T00:00:00+00:00",
            "appliance_flag": "Veeam reports " + "X" * 300,
        }
        for n in range(PER_PAGE * 2)
    ]
    flows = [
        {
            "name": "f" * 255,
            "kind": "create",
            "state": "awaiting_sign_in",
            "requester": ADMIN,
            "created_at": "2026-12-02T08:00:00+00:00",
        }
        for _ in range(200)
    ]
    view = home_view(
        is_admin=True,
        may_list=True,
        accounts=accounts,
        flows=flows,
        page=1,
        admins=(ADMIN,),
        appliance=True,
        now_ts=1.8e9,
        notice="x" * 5000,
    )
    assert view_errors(view) == []
    assert len(view["blocks"]) <= 100


class _Workers:
    """Runs what `call_later` is given only when told to: the debounce without a clock."""

    def __init__(self) -> None:
        self.later: list[Any] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> Any:
        self.later.append((fn, args))
        return object()

    def run(self) -> None:
        jobs, self.later = self.later, []
        for fn, args in jobs:
            fn(*args)


def test_a_burst_of_changes_is_one_publish_per_viewer(bot: Bot, slack: SlackDouble) -> None:
    workers = _Workers()
    ctx = bot.services.context
    real = ctx.workers
    try:
        ctx.workers = workers  # type: ignore[assignment]
        home = HomeTab(ctx)
        home.changed()
        assert workers.later == []  # nobody opened the Home: nothing to refresh
        home.opened(ADMIN)
        home.opened(OTHER)
        mark = slack.mark()
        for _ in range(50):
            home.changed()
        assert len(workers.later) == 1
        workers.run()
        assert slack.calls[mark:] == []  # nothing changed: no publish
        seed_accounts(bot, 1)
        for _ in range(50):
            home.changed()
        workers.run()
        sent = [c.args["user_id"] for c in slack.calls[mark:] if c.method == "views.publish"]
        assert sent == [ADMIN]  # OTHER may not list accounts: their Home reads the same
    finally:
        ctx.workers = real


def test_home_opened_over_socket_mode(bot: Bot, slack: SlackDouble) -> None:
    with slack.socket_mode(bot.app):
        messages_tab = app_home_opened_event(ADMIN, tab="messages")
        slack.socket_send("events_api", event_callback_payload(messages_tab))
        slack.socket_send("events_api", event_callback_payload(app_home_opened_event(ADMIN)))
        call = slack.wait_for("views.publish", user_id=ADMIN)
    assert call.ok and len(slack.calls_to("views.publish")) == 1  # not for the Messages tab


def test_the_home_shows_what_the_appliance_reports(
    vbot: Bot,  # noqa: F811
    vb: VBAzureDouble,  # noqa: F811
    slack: SlackDouble,
) -> None:
    vbot.services.home.delay = 0.05
    account = created(vbot)
    vbot.open_home(ADMIN)
    wait_home(slack, ADMIN, "*`prod`*")
    assert appliance.refresh(vbot.services.context, datetime.now(UTC)) == 1
    wait_home(slack, ADMIN, "Veeam: Valid")
    # The appliance finds the secret expired: the next scan shows it on the open Home.
    vb.set_cloud_state(account["appliance_id"], "ExpiredClientSecret")
    appliance.refresh(vbot.services.context, datetime.now(UTC))
    wait_home(slack, ADMIN, ":warning: Veeam reports ExpiredClientSecret")


def test_the_home_shows_health_and_the_kind_of_credential(
    bot: Bot, slack: SlackDouble
) -> None:
    bot.services.home.delay = 0.05
    sign_in(bot, f"create prod --subscription {SUB} --credential certificate")
    bot.wait_state("prod", "done", timeout=30)
    bot.open_home(ADMIN)
    home = wait_home(slack, ADMIN, "*`prod`*")
    assert "certificate expires" in texts(home)
    # the health check's word reaches the open Home without reopening it
    bot.services.health.run()
    home = wait_home(slack, ADMIN, "healthy (checked")
    assert view_errors(home) == []
    account = bot.db.table("accounts").get(bot.flow("prod")["account_id"])
    bot.ms.remove_certificate_out_of_band(account["app_id"])
    bot.services.health.run()
    home = wait_home(slack, ADMIN, "drift: ")
    assert view_errors(home) == []
