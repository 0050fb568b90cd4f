"""Who may do what. Deny by default.

`VEEAM_SA_ADMINS` holds Slack user ids and user-group ids. Group membership comes from
`usergroups.users.list` and is cached for `ttl` seconds; a lookup that fails denies (and
is logged) rather than guessing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.core.errors import NotAuthorised

log = logging.getLogger(__name__)

RULE_ADMINS = "only the bot's admins may do this"
RULE_REQUESTER = "only the person who started this, or an admin, may do this"
#: At most this many admins are named one by one in a refusal.
MAX_NAMED_ADMINS = 10
RULE_REQUESTER_ONLY = "only the person who started this creation may choose its subscriptions"

#: Called on every refusal: (Slack user, action, target, rule). Writes the audit row.
RefusalHook = Callable[[str, str, "str | None", str], object]


class Authorizer:
    def __init__(
        self,
        admins: Iterable[str],
        client: WebClient,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        on_refusal: RefusalHook | None = None,
        list_for_everyone: bool = False,
    ) -> None:
        self._on_refusal = on_refusal
        self.list_for_everyone = list_for_everyone
        admins = tuple(admins)
        self._users = frozenset(a for a in admins if not a.startswith("S"))
        self._groups = tuple(a for a in admins if a.startswith("S"))
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    def _fetch(self, group: str) -> frozenset[str] | None:
        try:
            response = self._client.usergroups_users_list(usergroup=group)
        except (SlackApiError, OSError) as exc:
            error = (
                exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc).__name__
            )
            log.warning("cannot read members of user group %s (%s)", group, error)
            return None
        members = frozenset(response.get("users") or [])
        with self._lock:
            self._cache[group] = (self._clock(), members)
        return members

    def _refresh_later(self, group: str) -> None:
        with self._lock:
            if group in self._refreshing:
                return
            self._refreshing.add(group)

        def refresh() -> None:
            try:
                self._fetch(group)
            finally:
                with self._lock:
                    self._refreshing.discard(group)

        threading.Thread(target=refresh, name="veeam-sa-authz-refresh", daemon=True).start()

    def _members(self, group: str) -> frozenset[str]:
        """The group's members. A stale answer is served while a refresh runs beside it, so
        only the very first lookup of a group waits for Slack; a failed first lookup denies."""
        with self._lock:
            cached = self._cache.get(group)
        if cached is not None:
            if self._clock() - cached[0] >= self._ttl:
                self._refresh_later(group)
            return cached[1]
        return self._fetch(group) or frozenset()

    def warm(self) -> None:
        """Read every admin group once (at start-up, off Slack's ack path)."""
        for group in self._groups:
            self._fetch(group)

    def is_admin(self, user_id: str) -> bool:
        if not user_id:
            return False
        if user_id in self._users:
            return True
        return any(user_id in self._members(group) for group in self._groups)

    def admins_text(self) -> str:
        """Who the admins are, as Slack mentions: people (`<@U…>`) and user groups
        (`<!subteam^S…>`), so a refused person knows whom to ask."""
        people = [f"<@{u}>" for u in sorted(self._users)]
        groups = [f"<!subteam^{g}>" for g in self._groups]
        named = groups + people[:MAX_NAMED_ADMINS]
        if len(people) > MAX_NAMED_ADMINS:
            named.append(f"{len(people) - MAX_NAMED_ADMINS} more")
        if not named:
            return "nobody yet (whoever runs the bot names the admins)"
        return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " or " + named[-1]

    def _who(self, rule: str) -> str:
        return f"{rule}. Ask {self.admins_text()}."

    def refuse(self, user_id: str, rule: str, action: str, target: str | None) -> NotAuthorised:
        """Record the refusal (audit) and return the error to raise."""
        if self._on_refusal is not None:
            try:
                self._on_refusal(user_id, action, target, rule)
            except Exception:  # noqa: BLE001 - a refusal must still be a refusal
                log.warning(
                    "could not audit a refusal of %s for %s", user_id, action, exc_info=True
                )
        return NotAuthorised(rule)

    def require_admin(
        self, user_id: str, action: str = "command", target: str | None = None
    ) -> None:
        if not self.is_admin(user_id):
            raise self.refuse(user_id, self._who(RULE_ADMINS), action, target)

    def require_lister(self, user_id: str) -> None:
        if not self.list_for_everyone and not self.is_admin(user_id):
            raise self.refuse(
                user_id,
                f"only the bot's admins may list the managed accounts. Ask {self.admins_text()}; "
                "whoever runs the bot can also let everyone in the workspace list them.",
                "list",
                None,
            )

    def require_requester_or_admin(
        self, user_id: str, requester: str, action: str = "flow", target: str | None = None
    ) -> None:
        if user_id and user_id == requester:
            return
        if not self.is_admin(user_id):
            rule = (
                f"only <@{requester}>, who started this, or an admin may do this"
                if requester
                else RULE_REQUESTER
            )
            raise self.refuse(user_id, self._who(rule), action, target)

    def require_requester(
        self, user_id: str, requester: str, action: str, target: str | None
    ) -> None:
        if not user_id or user_id != requester:
            rule = (
                f"only <@{requester}>, who started this creation, may choose its subscriptions"
                if requester
                else RULE_REQUESTER_ONLY
            )
            raise self.refuse(user_id, rule + ".", action, target)
