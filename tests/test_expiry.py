"""The expiry scan: called directly with a fixed clock against a real SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from slack_sdk import WebClient
from slack_sdk.models.blocks import Block

from bot import scheduler
from bot.core.config import Config, load_config
from bot.core.crypto import Cipher
from bot.flows import expiry
from bot.flows.accounts import account_views
from bot.flows.root import utcnow
from bot.slack import blocks, ids
from storage import queries
from storage.db import Store, open_store
from tests.fakes.blockkit import block_errors
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import BOT_TOKEN, SlackDouble
from tests.harness import CHANNEL, Bot
from tests.test_renew import approve_next, managed, wait_renew

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """Fake sleep/monotonic pair: records pauses instead of sleeping."""

    def __init__(self) -> None:
        self.t = 0.0
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.t += seconds

    def monotonic(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "veeam-sa.db")
    yield s
    s.close()


@pytest.fixture
def config(slack: SlackDouble, tmp_path: Path) -> Config:
    return load_config(
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": "x",
            "VEEAM_SA_ADMINS": "U0ADMIN",
            "SLACK_API_URL": slack.api_url,
            "VEEAM_SA_DB": str(tmp_path / "veeam-sa.db"),
        },
        dotenv=None,
    )


@pytest.fixture
def client(slack: SlackDouble) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=slack.api_url)


CIPHER = Cipher(Fernet.generate_key().decode())


def add_account(store: Store, name: str, end: datetime, channel: str = "C0OPS") -> int:
    db = store.db
    account_id = queries.insert_account(
        db,
        {
            "name": name,
            "tenant_id": "7f3c1a52-0d1e-4b8e-9b1a-5e2c3d4f6a7b",
            "tenant_name": "Contoso",
            "app_object_id": f"obj-{name}",
            "app_id": f"app-{name}",
            "sp_id": f"sp-{name}",
            "subscriptions": json.dumps(["3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"]),
            "roles": json.dumps({"3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f": ["Contributor"]}),
            "created_by": "U0ADMIN",
            "created_at": "2026-03-01T12:00:00+00:00",
            "channel_id": channel,
            "alert_channel_id": channel,
            "state": "active",
        },
    )
    queries.insert_secret(
        db,
        {
            "account_id": account_id,
            "key_id": f"key-{name}",
            "hint": "abc",
            "end_at": end.isoformat(timespec="seconds"),
            "created_at": "2026-03-01T12:00:00+00:00",
            "ciphertext": CIPHER.encrypt("s3cret"),
            "state": "active",
        },
    )
    return account_id


def run(
    store: Store, client: WebClient, config: Config, now: datetime, clock: Clock | None = None
) -> expiry.ScanResult:
    clock = clock or Clock()
    return expiry.scan(store, client, config, now, sleep=clock.sleep, monotonic=clock.monotonic)


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (timedelta(days=31), None),
        (timedelta(days=30), 30),
        (timedelta(days=29, hours=23), 30),
        (timedelta(days=14), 14),
        (timedelta(days=5), 7),
        (timedelta(hours=20), 1),
        (timedelta(seconds=0), 0),
        (timedelta(days=-3), 0),
    ],
)
def test_threshold_crossed(left: timedelta, expected: int | None) -> None:
    assert expiry.crossed(NOW + left, NOW, (30, 14, 7, 1)) == expected


def test_one_warning_per_threshold_in_one_thread(
    store: Store, client: WebClient, config: Config, slack: SlackDouble
) -> None:
    end = NOW + timedelta(days=31)
    add_account(store, "prod", end)
    assert run(store, client, config, NOW).posted == 0
    assert slack.calls_to("chat.postMessage") == []

    posted = []
    for days in (30, 14, 7, 1):
        now = end - timedelta(days=days)
        assert run(store, client, config, now).posted == 1
        assert (
            run(store, client, config, now + timedelta(hours=1)).posted == 0
        )  # a second scan: quiet
        posted.append(days)
    assert run(store, client, config, end + timedelta(minutes=1)).posted == 1  # expired

    posts = slack.calls_to("chat.postMessage", channel="C0OPS")
    assert len(posts) == 5
    first = posts[0]
    assert first.args.get("thread_ts") is None
    assert "expires in 30 days" in first.args["text"]
    parent_ts = first.response["ts"]
    assert all(p.args.get("thread_ts") == parent_ts for p in posts[1:])
    assert "has expired" in posts[-1].args["text"]
    # the parent always shows the latest state, with its Renew button
    parent = slack.message("C0OPS", parent_ts)
    assert "has expired" in parent["text"]
    assert any(b["type"] == "actions" for b in parent["blocks"])
    text = json.dumps(first.args["blocks"])
    assert (
        "app-prod" in text
        and "7f3c1a52-0d1e-4b8e-9b1a-5e2c3d4f6a7b" in text
        and "<@U0ADMIN>" in text
    )


def test_a_new_process_posts_nothing_new(
    store: Store, client: WebClient, config: Config, slack: SlackDouble
) -> None:
    add_account(store, "prod", NOW + timedelta(days=10))
    assert run(store, client, config, NOW).posted == 1
    fresh = Store(store.path)  # another process's view of the same file
    try:
        assert run(fresh, client, config, NOW).posted == 0
    finally:
        fresh.close()
    assert len(slack.calls_to("chat.postMessage", channel="C0OPS")) == 1


def test_first_seen_at_five_days_gets_only_the_seven_day_warning(
    store: Store, client: WebClient, config: Config, slack: SlackDouble
) -> None:
    add_account(store, "late", NOW + timedelta(days=5))
    result = run(store, client, config, NOW)
    assert [d.threshold for d in result.due] == [7]
    assert result.posted == 1
    assert (
        run(store, client, config, NOW + timedelta(days=1)).posted == 0
    )  # 4 days left: still the 7
    assert run(store, client, config, NOW + timedelta(days=4, hours=1)).posted == 1  # 1-day warning


def test_fifty_due_in_one_channel_make_a_digest(
    store: Store, client: WebClient, config: Config, slack: SlackDouble
) -> None:
    for n in range(50):
        add_account(store, f"acct-{n:02d}", NOW + timedelta(days=3, minutes=n))
    result = run(store, client, config, NOW)
    assert result.digests == 1 and result.posted == 1
    posts = slack.calls_to("chat.postMessage", channel="C0OPS")
    assert len(posts) == 1
    digest = posts[0].args["blocks"]
    buttons = [e for b in digest if b["type"] == "actions" for e in b["elements"]]
    assert len(buttons) == 50
    assert {b["value"] for b in buttons} == {str(a["id"]) for a in store.db.table("accounts").rows}
    [b.to_dict() for b in Block.parse_all(digest)]
    assert run(store, client, config, NOW + timedelta(hours=1)).posted == 0


def test_sixty_due_make_one_digest_that_slack_accepts_and_whose_buttons_renew(
    env: dict[str, str], slack: SlackDouble, ms: MicrosoftDouble
) -> None:
    shift = [timedelta(0)]
    bot = Bot(env, slack, ms, clock=lambda: utcnow() + shift[0])
    try:
        account = managed(bot)
        app = ms.application(app_id=account["app_id"])
        old_key = app.passwords[0].key_id
        secret = queries.active_secrets(bot.db, account["id"])[0]
        end = expiry.parse_time(secret["end_at"])
        for n in range(59):  # due just before the real account, which comes last
            add_account(bot.store, f"due-{n:02d}", end - timedelta(minutes=59 - n))

        shift[0] = (end - timedelta(days=6)) - utcnow()
        result = scheduler.run_scan(bot.services)  # the scheduler's job function
        shift[0] = timedelta(0)
        assert (result.digests, result.posted, result.failed) == (1, 1, 0)
        [post] = slack.calls_to("chat.postMessage", channel=CHANNEL)[-1:]
        assert post.ok and "60 client secrets need renewing" in post.args["text"]
        digest = slack.message(CHANNEL, str(post.response["ts"]))
        assert block_errors(digest["blocks"]) == []
        text = json.dumps(digest["blocks"])
        assert all(f"`due-{n:02d}`" in text for n in range(59)) and "`prod`" in text
        buttons = [
            (block, element)
            for block in digest["blocks"]
            if block["type"] == "actions"
            for element in block["elements"]
        ]
        assert len(buttons) == 60
        assert {e["value"] for _, e in buttons} == {
            str(a["id"]) for a in bot.db.table("accounts").rows
        }
        assert all(ids.RENEW_ACTION.search(e["action_id"]) for _, e in buttons)

        block, renew = next((b, e) for b, e in buttons if e["value"] == str(account["id"]))
        assert block is not buttons[0][0]  # a button in a later group of the digest
        status, _ = bot.click(
            renew["action_id"],
            renew["value"],
            message_ts=digest["ts"],
            block_id=block["block_id"],
            button_text=renew["text"]["text"],
        )
        assert status == 200
        approve_next(bot, 2)
        flow = wait_renew(bot, "done", name="prod")
        assert flow["parent_ts"] == digest["ts"]
        assert [p.key_id for p in app.passwords] != [old_key]
        assert bot.db.table("flows").count_where("kind = 'renew'") == 1
    finally:
        bot.close()


def test_digests_split_where_long_lines_need_more_blocks() -> None:
    long_name = "n" * 255
    items = [
        expiry.Due(
            secret_id=n,
            threshold=7,
            days_left=5,
            end_at=NOW + timedelta(days=5, minutes=n),
            account={
                "id": n,
                "name": f"{long_name[:-4]}{n:04d}",
                "app_id": "3f2e1d0c-4b5a-4c6d-8e7f-9a0b1c2d3e4f",
                "created_by": "U0ADMIN0001",
            },
            hint="abc",
            channel="C0OPS",
        )
        for n in range(expiry.DIGEST_SIZE)
    ]
    pages = blocks.digest_pages(items, expiry.DIGEST_SIZE)
    assert len(pages) > 1 and sum(len(p) for p in pages) == len(items)
    for page in pages:
        payload = blocks.expiry_digest(page, NOW)
        assert block_errors(payload["blocks"]) == []
        text = json.dumps(payload["blocks"])
        assert all(item.account["name"] in text for item in page)  # no line was cut off


def test_posts_to_one_channel_are_paced(store: Store, client: WebClient, config: Config) -> None:
    for n in range(4):
        add_account(store, f"acct-{n}", NOW + timedelta(days=2, minutes=n))
    add_account(store, "elsewhere", NOW + timedelta(days=2), channel="C0OTHER")
    clock = Clock()
    assert run(store, client, config, NOW, clock).posted == 5
    assert len(clock.pauses) == 3  # between the four posts to C0OPS; none for C0OTHER
    assert all(p >= expiry.CHANNEL_GAP_S - 1e-9 for p in clock.pauses)


def test_channels_are_paced_side_by_side(
    store: Store, client: WebClient, config: Config, slack: SlackDouble
) -> None:
    """Slack's limit is per channel: three channels with three warnings each take about two
    gaps of pacing in all (not eight), and no channel gets two posts within a gap."""
    for channel in ("C0ONE", "C0TWO", "C0THREE"):
        for n in range(3):
            add_account(store, f"{channel.lower()}-{n}", NOW + timedelta(days=2, minutes=n), channel=channel)
    clock = Clock()
    assert run(store, client, config, NOW, clock).posted == 9
    assert clock.t == pytest.approx(2 * expiry.CHANNEL_GAP_S, abs=0.05)
    for channel in ("C0ONE", "C0TWO", "C0THREE"):
        posts = [c for c in slack.calls_to("chat.postMessage") if c.args["channel"] == channel]
        assert len(posts) == 3


def test_slack_failure_is_retried_next_scan(
    store: Store, client: WebClient, config: Config, slack: SlackDouble
) -> None:
    add_account(store, "prod", NOW + timedelta(days=6))
    slack.fail("chat.postMessage", error="channel_not_found")
    result = run(store, client, config, NOW)
    assert (result.posted, result.failed) == (0, 1)
    assert run(store, client, config, NOW + timedelta(hours=1)).posted == 1


def test_alert_channel_setting_wins(
    store: Store, client: WebClient, config: Config, slack: SlackDouble
) -> None:
    add_account(store, "prod", NOW + timedelta(days=6), channel="C0CREATE")
    cfg = Config(**{**config.__dict__, "alert_channel": "C0ALERTS"})
    run(store, client, cfg, NOW)
    assert slack.calls_to("chat.postMessage")[0].args["channel"] == "C0ALERTS"


def test_retired_secrets_and_far_expiries_are_ignored(
    store: Store, client: WebClient, config: Config
) -> None:
    add_account(store, "far", NOW + timedelta(days=300))
    retired = add_account(store, "old", NOW - timedelta(days=1))
    queries.set_secret_state(
        store.db, [s["id"] for s in queries.active_secrets(store.db, retired)], "retired"
    )
    assert run(store, client, config, NOW).due == []


@pytest.mark.parametrize("count", [0, 1, 500])
def test_list_renders_within_block_kit_limits(store: Store, count: int) -> None:
    for n in range(count):
        add_account(store, f"account-with-a-long-name-{n:04d}", NOW + timedelta(days=n % 400 - 20))
    views = account_views(store, NOW, (30, 14, 7, 1))
    payload = blocks.account_list(views)
    parsed = [b.to_dict() for b in Block.parse_all(payload["blocks"])]
    assert len(parsed) <= 50
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in parsed)
    if count == 500:
        text = json.dumps(parsed)
        shown = text.count("account-with-a-long-name-")
        assert shown == 500 or f"and {500 - shown} more not shown" in text
        # soonest first: the expired ones lead
        first_section = parsed[1]["text"]["text"]
        assert "expired" in first_section
    if count == 0:
        assert "No managed service accounts" in payload["text"]
