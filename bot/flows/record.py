"""A flow's record: its row, its steps, its audit trail and its parent message.

Every flow kind keeps the same record: the `flows` row (state, `data` with the step
checklist), audit rows, and the parent message in Slack that shows the checklist.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from bot.slack import blocks
from storage import queries

if TYPE_CHECKING:
    from bot.flows.context import Context


#: Steps a creation shows only when it takes them (an appliance, a second sign-in).
OPTIONAL_STEPS = ("handoff", "sign_in_again", "confirm")


class Record:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.notifier = ctx.notifier

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    def get(self, flow_id: str) -> dict[str, Any]:
        flow = queries.get_flow(self._db, flow_id)
        assert flow is not None
        return flow

    def new_flow(
        self,
        db: Any,
        *,
        kind: str,
        name: str,
        requester: str,
        channel_id: str | None,
        data: dict[str, Any],
        account_id: int | None = None,
        parent_ts: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> str:
        """Insert a new flow row in `starting` and its `KIND.requested` audit row; returns
        its id. The caller holds the transaction and has checked what may be begun."""
        flow_id = uuid.uuid4().hex
        now = queries.utcnow_iso(self.ctx.clock())
        row: dict[str, Any] = {
            "id": flow_id,
            "kind": kind,
            "state": "starting",
            "name": name,
            "requester": requester,
            "channel_id": channel_id,
            "data": json.dumps(data, sort_keys=True),
            "created_at": now,
            "updated_at": now,
        }
        if account_id is not None:
            row["account_id"] = account_id
            row["parent_ts"] = parent_ts
        queries.insert_flow(db, row)
        queries.add_audit(
            db,
            actor=requester,
            action=f"{kind}.requested",
            target=name,
            outcome="accepted",
            detail={"flow": flow_id, **(detail or {})},
        )
        self.ctx.changed()
        return flow_id

    @staticmethod
    def data(flow: dict[str, Any]) -> dict[str, Any]:
        return json.loads(flow.get("data") or "{}")

    def save_data(self, flow_id: str, data: dict[str, Any]) -> None:
        queries.update_flow(self._db, flow_id, data=json.dumps(data, sort_keys=True))

    def parent_payload(
        self, flow: dict[str, Any], outcome: str | None = None, summary: list[str] | None = None
    ) -> dict[str, Any] | None:
        """The flow's parent message; None for a renewal that lives in an alert's thread."""
        data = self.data(flow)
        if flow["kind"] == "repair":  # lives in its drift alert's thread
            return None
        if flow["kind"] in ("renew", "retire"):
            if not data.get("own_parent"):
                return None
            parent = blocks.renew_parent if flow["kind"] == "renew" else blocks.retire_parent
            return parent(name=flow["name"], requester=flow["requester"], outcome=outcome)
        return blocks.create_parent(
            name=flow["name"],
            requester=flow["requester"],
            subscriptions=data.get("subscriptions", []),
            description=data.get("description"),
            steps=data.get("steps", {}),
            outcome=outcome,
            summary=summary,
            management_group=(data.get("management_group") or {}).get("id"),
        )

    def render_parent(
        self, flow: dict[str, Any], outcome: str | None = None, summary: list[str] | None = None
    ) -> None:
        self.ctx.changed()
        if not flow.get("parent_ts"):
            return
        payload = self.parent_payload(flow, outcome, summary)
        if payload is not None:
            final = outcome is not None or summary is not None
            self.notifier.update_latest(flow["channel_id"], flow["parent_ts"], payload, wait=final)

    def set_step(
        self,
        flow_id: str,
        step: str,
        status: str,
        outcome: str | None = None,
        render: bool = True,
    ) -> dict[str, Any]:
        flow = queries.get_flow(self._db, flow_id)
        assert flow is not None
        data = self.data(flow)
        data.setdefault("steps", {})[step] = status
        self.save_data(flow_id, data)
        flow["data"] = json.dumps(data)
        if render:
            self.render_parent(flow, outcome)
        return flow

    def finish_steps(
        self,
        flow_id: str,
        *,
        running: str,
        rolled_back: bool = False,
        outcome: str | None = None,
    ) -> None:
        """The checklist as the flow ends: a step that was running becomes `running` (failed,
        skipped); steps never reached are skipped; steps that succeeded stay done, unless
        their work was `rolled_back`. Then the parent is shown with `outcome`."""
        flow = self.get(flow_id)
        data = self.data(flow)
        steps = data.setdefault("steps", {})
        for key in blocks.STEP_LABELS:
            status = steps.get(key)
            if status == "running":
                steps[key] = running
            elif status is None and flow["kind"] == "create" and key not in OPTIONAL_STEPS:
                steps[key] = "skipped"
            elif status == "done" and rolled_back and key not in ("sign_in", "sign_in_again", "checks"):
                steps[key] = "rolled_back"
        self.save_data(flow_id, data)
        flow["data"] = json.dumps(data)
        self.render_parent(flow, outcome)
        self.retire_controls(flow)

    def retire_controls(self, flow: dict[str, Any]) -> None:
        """Buttons that can no longer do anything go: the prerequisites' Recheck once the
        creation has ended, and the sign-in code's message (with Cancel) once sign-in is
        over, where Slack lets the bot edit it (a direct message; an ephemeral one is
        replaced when its Cancel is pressed)."""
        data = self.data(flow)
        state = flow["state"]
        prereq = data.get("prereq")
        if prereq and prereq.get("blocked") and data.get("prereq_ts") and state != "blocked":
            closed = {
                "cancelled": "Closed: the creation was cancelled.",
                "expired": "Closed: nobody rechecked for a day.",
            }.get(state, f"Closed: the creation is {state.replace('_', ' ')}.")
            self.notifier.update(
                flow["channel_id"],
                data["prereq_ts"],
                blocks.prerequisites_message(
                    flow_id=flow["id"], name=flow["name"], closed=closed, **prereq
                ),
            )
        code = data.get("code_dm")
        if code and state not in ("starting", "awaiting_sign_in") and not code.get("closed"):
            code_state = state if state in ("cancelled", "expired", "failed") else "signed_in"
            self.notifier.update(
                code["channel"],
                code["ts"],
                blocks.code_message_closed(
                    name=flow["name"],
                    purpose=str(code.get("purpose") or "create"),
                    state=code_state,
                ),
            )
            code["closed"] = True
            self.save_data(flow["id"], data)

    def audit(self, flow: dict[str, Any], action: str, outcome: str, **detail: Any) -> None:
        queries.add_audit(
            self._db,
            actor=flow["requester"],
            action=action,
            target=flow.get("name"),
            outcome=outcome,
            detail={"flow": flow["id"], **detail},
            correlation_id=detail.get("correlation_id"),
        )

    def say(self, flow: dict[str, Any], text: str) -> None:
        self.notifier.thread(
            flow["channel_id"], flow.get("parent_ts"), blocks.note(text, account=flow.get("name"))
        )

    def leftover_text(self, flow: dict[str, Any]) -> str:
        if flow["kind"] != "create":
            return "The current secret is unchanged."
        account = (
            queries.get_account_by_id(self._db, flow["account_id"])
            if flow.get("account_id")
            else None
        )
        if account is None or account["state"] == "rolled_back":
            return "Nothing was created."
        custom = json.loads(account.get("custom_role") or "null")
        role = (
            f" So may be its custom role `{custom.get('name')}` (`{custom.get('id')}`): remove its "
            "assignments, then the role, in Access control (IAM)."
            if isinstance(custom, dict)
            else ""
        )
        return (
            f"The application created before the interruption (`{account['app_id']}`) is still in the "
            "tenant; delete it in the Entra admin center if you don't want it." + role
        )
