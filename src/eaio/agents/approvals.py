"""The agent's only way to change the building: a write policy per point class, and the Actuator.

Every write an agent wants (the planner's setback, or a model's ``*__write_point`` call) goes to
``Actuator.request``. The first ``ApprovalRule`` that matches the point (id glob, kind, Brick
class; from the server's own ``list_points``) decides:

- ``auto``: the server's write tool is called at once, so its guard, bounds and audit apply;
- ``approve``: the server checks the write with ``dry_run`` (a request it would refuse is not
  queued for a person to approve), then it waits in the records for ``eaio approve ID`` /
  ``eaio reject ID``; after ``expiry_s`` it is refused as expired: conditions change;
- ``deny``: refused, and recorded.

Every request is a row in the records (the queue and the history are one table).
"""

from __future__ import annotations

import fnmatch
import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from ..config import ApprovalRule, SiteConfig
from ..errors import EaioError, ValidationFailed
from ..models import utcnow
from .host import SEP
from .records import ApprovalRow, Records

if TYPE_CHECKING:
    from .runtime import ToolHost

__all__ = [
    "APPROVAL_EXPIRY_S",
    "Actuator",
    "ApprovalPolicy",
    "Policy",
    "execute_approval",
    "execute_approved",
    "hand_to_agent",
    "is_expired",
    "known_approval",
    "reject_approval",
]

log = logging.getLogger(__name__)

Policy = Literal["auto", "approve", "deny"]
# An hour: a setback approved the next morning would act on a building that has moved on.
APPROVAL_EXPIRY_S = 3600.0


class ApprovalPolicy:
    """The configured rules; ``decide(point)`` takes a point as ``list_points`` describes it."""

    def __init__(self, rules: Sequence[ApprovalRule], default: Policy = "approve") -> None:
        self.rules = list(rules)
        self.default: Policy = default

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> ApprovalPolicy:
        return cls(cfg.agent.approvals, cfg.agent.default_approval)

    def decide(self, point: dict[str, Any] | None, *, point_id: str | None = None) -> Policy:
        """The policy for a write to ``point`` (None: a point no server lists, or a tool without one)."""
        info = point or {}
        pid = str(info.get("id") or point_id or "")
        for rule in self.rules:
            if rule.points and not any(fnmatch.fnmatchcase(pid, g) for g in rule.points):
                continue
            if rule.kinds and info.get("kind") not in {k.value for k in rule.kinds}:
                continue
            if rule.brick and info.get("brick") not in rule.brick:
                continue
            return rule.policy
        return self.default


class Actuator:
    """``await actuator.request(tool, arguments)``: G's write_hook, and the planner's way to write."""

    def __init__(
        self,
        host: ToolHost,
        records: Records,
        policy: ApprovalPolicy,
        *,
        points: dict[str, dict[str, Any]] | None = None,
        expiry_s: float = APPROVAL_EXPIRY_S,
    ) -> None:
        self.host = host
        self.records = records
        self.policy = policy
        self.expiry_s = expiry_s
        # Point metadata by id, from list_points: filled by the planner's discovery, or on demand.
        self.points: dict[str, dict[str, Any]] = dict(points or {})
        self.requests: list[ApprovalRow] = []  # this actuator's requests, oldest first (the workflow reads them)

    async def request(
        self, tool: str, arguments: dict[str, Any], *, decision_id: str | None = None
    ) -> dict[str, Any]:
        """Ask for a write. auto: the tool's result; approve: ``{"status": "pending_approval", ...}``;
        deny: ``{"status": "denied", ...}``; a refused or failed call: ``{"status": "error", "code", ...}``."""
        args = dict(arguments)
        point_id = args.get("point_id")
        reason = str(args.get("reason") or "")
        if args.get("dry_run") is True:
            # A dry run changes nothing and is the server's own check: no policy is needed for it.
            return await self._call(tool, args)
        meta = await self._point(tool, point_id) if isinstance(point_id, str) else None
        policy = self.policy.decide(meta, point_id=point_id if isinstance(point_id, str) else None)
        row = ApprovalRow(id=uuid.uuid4().hex[:12], tool=tool, point_id=point_id, arguments=args, reason=reason,
                          decision_id=decision_id, policy=policy, status="pending")
        if policy == "deny":
            why = f"writes to {point_id or tool} are denied by the approval policy"
            self._keep(row.model_copy(update={"status": "denied", "decided": utcnow(), "note": why}))
            return {"status": "denied", "approval_id": row.id, "reason": why}
        if policy == "approve":
            waiting = self._waiting(tool, point_id, args.get("value"))
            if waiting is not None:
                # The same write is already queued: asking a person twice adds nothing.
                return {"status": "pending_approval", "approval_id": waiting.id, "point_id": point_id,
                        "value": args.get("value"), "message": f"already queued as {waiting.id}"}
            check = await self._call(tool, {**args, "dry_run": True})
            if check.get("status") == "error":
                # The server would refuse it: nobody should be asked to approve it.
                self._keep(row.model_copy(update={"status": "refused", "decided": utcnow(),
                                                  "note": f"{check['code']}: {check['message']}"}))
                return check | {"approval_id": row.id}
            self._keep(row)
            return {"status": "pending_approval", "approval_id": row.id, "point_id": point_id,
                    "value": args.get("value"), "message": f"queued: `eaio approve {row.id}` or `eaio reject {row.id}`"}
        result = await self._call(tool, args)
        failed = result.get("status") == "error"
        self._keep(row.model_copy(update={
            "status": "failed" if failed else "executed", "decided": utcnow(), "result": result,
            "note": f"{result['code']}: {result['message']}" if failed else "automatic (policy auto)",
        }))
        return result | {"approval_id": row.id}

    # -- internals ----------------------------------------------------------------------------
    def _waiting(self, tool: str, point_id: Any, value: Any) -> ApprovalRow | None:
        for row in self.records.list_approvals("pending"):
            same = row.tool == tool and row.point_id == point_id and row.value == value
            if same and not is_expired(row, self.expiry_s):
                return row
        return None

    def _keep(self, row: ApprovalRow) -> None:
        self.records.add_approval(row)
        self.requests.append(row)
        log.info("write %s %s=%r: %s (%s)", row.id, row.point_id, row.value, row.status, row.policy)

    async def _call(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        return await _call(self.host, tool, args)

    async def _point(self, tool: str, point_id: str) -> dict[str, Any] | None:
        """The point as its server lists it (cached); None when the server does not know it."""
        if point_id not in self.points and SEP in tool:
            server = tool.split(SEP, 1)[0]
            try:
                listed = await self.host.call_tool(f"{server}{SEP}list_points", {})
            except EaioError as err:
                log.warning("cannot list %s's points for the approval policy: %s", server, err)
                return None
            for p in listed.get("points", []):
                self.points.setdefault(str(p.get("id")), p)
        return self.points.get(point_id)


def is_expired(row: ApprovalRow, expiry_s: float = APPROVAL_EXPIRY_S) -> bool:
    return utcnow() - row.created > timedelta(seconds=expiry_s)


async def _call(host: ToolHost, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """The tool's result; a refusal or failure as ``{"status": "error", "code", "message"}``."""
    try:
        return await host.call_tool(tool, args)
    except EaioError as err:
        return {"status": "error", "code": err.code, "message": err.message}


def known_approval(records: Records, approval_id: str) -> ApprovalRow:
    """The request with this id. ValidationFailed (unknown_approval) when there is none."""
    row = records.get_approval(approval_id)
    if row is None:
        raise ValidationFailed(f"no approval with id '{approval_id}' (see `eaio approvals`)", code="unknown_approval")
    return row


def _pending(records: Records, approval_id: str, expiry_s: float) -> ApprovalRow:
    row = known_approval(records, approval_id)
    if row.status != "pending":
        raise ValidationFailed(f"approval {approval_id} is {row.status}, not pending", code="not_pending")
    if is_expired(row, expiry_s):
        age_min = (utcnow() - row.created).total_seconds() / 60
        note = f"expired: queued {age_min:.0f} min ago, past the {expiry_s / 60:.0f} min limit; conditions change"
        records.settle_approval(row.id, "expired", note=note)
        raise ValidationFailed(f"approval {approval_id} {note}", code="expired")
    return row


async def execute_approval(
    host: ToolHost, records: Records, approval_id: str, *, who: str = "operator",
    expiry_s: float = APPROVAL_EXPIRY_S,
) -> ApprovalRow:
    """``eaio approve ID``: run the queued write through the server (its guard, bounds and audit),
    record the result. Raises ValidationFailed (unknown id, not pending, expired)."""
    row = _pending(records, approval_id, expiry_s)
    return await _execute(host, records, row, who=who, only_if="pending")


def hand_to_agent(records: Records, approval_id: str, *, who: str = "operator",
                  expiry_s: float = APPROVAL_EXPIRY_S) -> ApprovalRow:
    """``eaio approve ID`` of a temporary write when the servers are the agent's stdio children.

    A server restores its temporary writes when it stops, so a write made through a server that
    ``eaio approve`` starts and stops would be undone a moment later. The request is marked
    ``approved`` instead, and the running agent, whose servers live as long as it does, writes it
    (``execute_approved``) within a few seconds."""
    row = _pending(records, approval_id, expiry_s)
    return _settle(records, row.id, "approved", note=f"approved by {who}; the running agent writes it", by=who)


async def execute_approved(
    host: ToolHost, records: Records, *, expiry_s: float = APPROVAL_EXPIRY_S
) -> list[ApprovalRow]:
    """The agent's part of ``hand_to_agent``: write every request approved for it, oldest first."""
    done = []
    for row in reversed(records.list_approvals("approved")):
        if is_expired(row, expiry_s):
            records.settle_approval(row.id, "expired", note=f"{row.note}; expired before the agent could write it",
                                    only_if="approved")
            continue
        who = row.decided_by or "operator"
        done.append(await _execute(host, records, row, who=who, only_if="approved"))
    return done


async def _execute(host: ToolHost, records: Records, row: ApprovalRow, *, who: str, only_if: str) -> ApprovalRow:
    args = dict(row.arguments)
    args["reason"] = (f"{row.reason} " if row.reason else "") + f"(approved by {who}, request {row.id})"
    result = await _call(host, row.tool, args)
    failed = result.get("status") == "error"
    note = f"approved by {who}" + (f"; {result['code']}: {result['message']}" if failed else "")
    return _settle(records, row.id, "failed" if failed else "executed", note=note, result=result,
                   only_if=only_if, by=who)


def reject_approval(
    records: Records, approval_id: str, *, reason: str = "", who: str = "operator",
    expiry_s: float = APPROVAL_EXPIRY_S,
) -> ApprovalRow:
    """``eaio reject ID``: the write never happens. Raises ValidationFailed (unknown id, not pending)."""
    row = _pending(records, approval_id, expiry_s)
    note = f"rejected by {who}" + (f": {reason}" if reason else "")
    return _settle(records, row.id, "rejected", note=note, by=who)


def _settle(records: Records, approval_id: str, status: str, **how: Any) -> ApprovalRow:
    """Settle the request (``how``: Records.settle_approval's keywords) and return it as settled;
    ValidationFailed (not_pending) when another process settled it first."""
    if not records.settle_approval(approval_id, status, **how):
        raise ValidationFailed(f"approval {approval_id} was settled meanwhile by someone else", code="not_pending")
    settled = records.get_approval(approval_id)
    assert settled is not None
    return settled
