"""The App Home: what each person sees when they open the bot's Home tab, kept fresh.

`opened(user)` publishes the Home of a person who opened it (Slack's `app_home_opened`);
`show(user, page)` publishes a page of it. Whoever opened the Home is remembered (the
newest `MAX_VIEWERS`), and `changed()` — the hook the flows call through their `Context`
when something the Home shows has changed (a flow started, moved on or ended; an account
created or renewed) — re-publishes their Homes once, `delay` seconds after the first change
of a burst: a burst of changes costs one `views.publish` per viewer, and a viewer whose Home
reads the same as last time costs none.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.core.workers import Scheduled
from bot.flows.accounts import account_views
from bot.flows.context import Context
from bot.slack.blocks.home import home_view
from storage import queries

log = logging.getLogger(__name__)

MAX_VIEWERS = 500
DEBOUNCE_S = 2.0


class HomeTab:
    def __init__(
        self, ctx: Context, *, delay: float = DEBOUNCE_S, max_viewers: int = MAX_VIEWERS
    ) -> None:
        self.ctx = ctx
        self.delay = delay
        self.max_viewers = max_viewers
        self._lock = threading.Lock()
        #: Who opened the Home, oldest first, with the page they look at.
        self._viewers: OrderedDict[str, int] = OrderedDict()
        #: The view last published to each viewer (JSON), to skip identical ones.
        self._last: dict[str, str] = {}
        self._pending: Scheduled | None = None

    # -- what the handlers call ------------------------------------------------------------------

    def opened(self, user: str) -> None:
        """`user` opened the Home tab: publish it (the page they looked at last)."""
        with self._lock:
            page = self._viewers.get(user, 0)
        self.show(user, page, force=True)

    def show(
        self, user: str, page: int = 0, *, notice: str | None = None, force: bool = False
    ) -> None:
        """Publish `page` of `user`'s Home, with `notice` above it once."""
        self._remember(user, page)
        self._publish(user, self.render(user, page, notice=notice), force=force or bool(notice))

    def notice(self, user: str, text: str) -> None:
        """Tell `user` something on their Home (the answer to a click there)."""
        with self._lock:
            page = self._viewers.get(user, 0)
        self.show(user, page, notice=text)

    # -- the hook the flows call -------------------------------------------------------------------

    def changed(self) -> None:
        """Something the Home shows has changed: refresh every open Home soon (once)."""
        with self._lock:
            if self._pending is not None or not self._viewers:
                return
            self._pending = self.ctx.workers.call_later(self.delay, self.refresh)

    def refresh(self) -> int:
        """Re-publish every remembered Home that reads differently now; returns how many."""
        with self._lock:
            self._pending = None
            viewers = list(self._viewers.items())
        sent = 0
        for user, page in viewers:
            try:
                view = self.render(user, page)
            except Exception:  # noqa: BLE001 - one Home that cannot be read must not stop the rest
                log.warning("could not render the Home of %s", user, exc_info=True)
                continue
            sent += self._publish(user, view)
        return sent

    # -- reading and publishing ----------------------------------------------------------------

    def render(self, user: str, page: int = 0, *, notice: str | None = None) -> dict[str, Any]:
        """`user`'s Home: every account for those who may list them (Renew for admins), the
        flows in progress (all of them for admins, their own for others)."""
        authz = self.ctx.authz
        is_admin = authz.is_admin(user)
        may_list = is_admin or authz.list_for_everyone
        now = self.ctx.clock()
        config = self.ctx.config
        accounts = account_views(self.ctx.store, now, config.warn_days) if may_list else []
        db = self.ctx.store.db
        flows = queries.open_flows(db) if is_admin else queries.open_flows_of(db, user)
        return home_view(
            is_admin=is_admin,
            may_list=may_list,
            accounts=accounts,
            flows=flows,
            page=page,
            admins=config.admins,
            appliance=self.ctx.appliance is not None,
            now_ts=now.timestamp(),
            notice=notice,
        )

    def _remember(self, user: str, page: int) -> None:
        with self._lock:
            self._viewers[user] = page
            self._viewers.move_to_end(user)
            while len(self._viewers) > self.max_viewers:
                gone, _ = self._viewers.popitem(last=False)
                self._last.pop(gone, None)

    def _publish(self, user: str, view: dict[str, Any], *, force: bool = False) -> int:
        # The "updated" stamp changes every time: compare the rest.
        same = json.dumps(
            {**view, "blocks": view["blocks"][:1] + view["blocks"][2:]}, sort_keys=True
        )
        with self._lock:
            if not force and self._last.get(user) == same:
                return 0
            self._last[user] = same
        try:
            self.ctx.notifier.publish_home(user, view)
        except SlackApiError as exc:
            with self._lock:
                self._last.pop(user, None)
            log.warning("could not publish the Home of %s: %s", user, exc.response.get("error"))
            return 0
        return 1
