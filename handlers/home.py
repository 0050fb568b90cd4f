"""The App Home: publish it when someone opens it, and page through it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App

from bot.slack import ids

if TYPE_CHECKING:
    from bot.flows.root import Services

#: A page number: ASCII digits, a few of them.
_PAGE = re.compile(r"[0-9]{1,4}")


def register(app: App, services: Services) -> None:
    @app.event("app_home_opened")
    def on_home_opened(event: dict[str, Any]) -> None:
        # Also sent when the Messages tab is opened; only the Home tab shows a view.
        user = str(event.get("user") or "")
        if event.get("tab") != "home" or not user:
            return
        services.workers.submit(services.home.opened, user)

    @app.action(ids.HOME_PAGE_ACTION)
    def on_page(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        user = str((body.get("user") or {}).get("id", ""))
        value = str(action.get("value") or "")
        page = int(value) if _PAGE.fullmatch(value) else 0
        if user:
            services.workers.submit(services.home.show, user, page)
