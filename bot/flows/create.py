"""The create journey's first step: record the request (the ack path: database only).

Handlers call `begin()` (a fast database write, safe on the ack path) and then
`workers.submit(signin.start, id)`: the sign-in (`bot.flows.signin`) and provisioning
(`bot.flows.provision`) follow on the worker pool.
"""

from __future__ import annotations

from bot.core import permissions
from bot.core.errors import CommandError, PermissionListError
from bot.flows.context import Context
from bot.flows.record import Record
from bot.slack.grammar import Command
from storage import queries


class CreateFlow:
    def __init__(self, ctx: Context, record: Record) -> None:
        self.ctx = ctx
        self.record = record

    def begin(self, *, requester: str, channel_id: str, command: Command) -> str:
        """Record a new create flow; refuse a name that is managed or already in flight."""
        assert command.name is not None
        mode = command.roles or self.ctx.config.role_mode
        if mode == "least-privilege" and self.ctx.appliance is None:
            try:  # without an appliance the bot's own list must cover the purposes
                permissions.shipped(self.ctx.config.veeam_purposes)
            except PermissionListError as exc:
                raise CommandError(
                    f"A least-privilege account cannot be made here: {exc}."
                ) from None
        with self.ctx.store.quick() as db, db.atomic():
            existing = queries.get_account(db, command.name)
            if existing is not None and existing["state"] == "active":
                raise CommandError(
                    f"`{command.name}` is already a managed service account. "
                    f"To get it a new secret, use `/veeam-sa renew {command.name}`."
                )
            if existing is not None:
                raise CommandError(
                    f"`{command.name}` has an unfinished creation ({existing['state']}); "
                    f"`/veeam-sa show {command.name}` says what exists. Pick another name, or remove "
                    f"application `{existing.get('app_id')}` in Entra first."
                )
            running = queries.open_flow_for_name(db, command.name)
            if running is not None:
                raise CommandError(
                    f"A flow for `{command.name}` is already in progress (started by "
                    f"<@{running['requester']}>). Wait for it, or cancel it with `/veeam-sa cancel`; "
                    f"to renew an existing account use `/veeam-sa renew {command.name}`."
                )
            flow_id = self.record.new_flow(
                db,
                kind="create",
                name=command.name,
                requester=requester,
                channel_id=channel_id,
                data={
                    "subscriptions": list(command.subscriptions),
                    "description": command.description,
                    "credential": command.credential or self.ctx.config.credential,
                    "roles_mode": mode,
                    "steps": {"sign_in": "running"},
                    **(
                        {"management_group": {"id": command.management_group}}
                        if command.management_group
                        else {}
                    ),
                    **({"tenant_request": command.tenant} if command.tenant else {}),
                },
                detail={
                    "subscriptions": list(command.subscriptions),
                    "roles": mode,
                    **(
                        {"management_group": command.management_group}
                        if command.management_group
                        else {}
                    ),
                    **({"tenant": command.tenant} if command.tenant else {}),
                },
            )
        return flow_id
