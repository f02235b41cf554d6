"""Access requests and approver decisions.

Allowed: an engineer whose vendor holds an active contract for every named
instrument (all of one hospital) asks for ports those instruments expose, for
a duration and at hours the hospital's policy allows.  Approvers of that
hospital — never the requester, never another hospital's approver — approve
or deny; a policy may require two distinct approvers.  When enough approvals
are in, the request becomes ``approved`` and a grant is issued whose clock
starts at approval or the scheduled start, whichever is later.

Denied: everything else, with :class:`PermissionDenied` (role, hospital,
contract), :class:`PolicyViolation` (duration, hours, file transfer),
:class:`IllegalTransition` (deciding a request that is no longer pending).
Enforced events (``request.approved``, ``grant.created``) are written before
the change commits; if the audit log refuses them the change is rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.access import rules
from broker.access.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from broker.access.estate import EstateService, contract_covers
from broker.access.history import move
from broker.access.model import (
    AccessRequest,
    Contract,
    Decision,
    Grant,
    GrantStatus,
    Instrument,
    OrgKind,
    RequestStatus,
    Role,
    Transition,
    User,
)
from broker.access.people import sees_all
from broker.access.ports import Actor, Context, Tx

MAX_SCHEDULE_AHEAD = timedelta(days=90)
START_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class NewRequest:
    instruments: list[str]
    duration_s: int
    reason: str
    ports: list[int] = field(default_factory=list)
    file_transfer: bool = False
    ticket: str = ""
    work_plan: str = ""
    start_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RequestView:
    request: AccessRequest
    decisions: list[Decision]
    history: list[Transition]
    grant: Grant | None


def visible_filter(actor: Actor) -> dict[str, str]:
    """Which requests/grants a caller may see, as store filters (empty = all)."""
    if sees_all(actor):
        return {}
    if actor.org_kind == OrgKind.VENDOR:
        if Role.AUDITOR in actor.roles:
            return {"vendor_id": actor.org_id}
        return {"__self__": actor.user_id}
    return {"hospital_id": actor.org_id}


def chain(transitions: list[Transition]) -> list[Transition]:
    """Order one subject's transitions by following states (times may be equal)."""
    by_from = {t.from_state: t for t in transitions}
    start = next((t for t in transitions if t.from_state in ("", "pending")), None)
    out: list[Transition] = []
    while start is not None and start not in out:
        out.append(start)
        start = by_from.get(start.to_state)
    return out + sorted((t for t in transitions if t not in out), key=lambda t: t.at)


def expire(ctx: Context, tx: Tx, req: AccessRequest) -> None:
    """A pending request that got no decision in time: ``expired``, and
    ``request.expired`` written (by the system, not a person)."""
    move(ctx, tx, req, RequestStatus.EXPIRED, None, "no decision in time")
    ctx.emit(
        "request.expired",
        None,
        ObjectType="request",
        Object=req.id,
        RequestId=req.id,
        HospitalId=req.hospital_id,
        VendorId=req.vendor_id,
    )


class RequestService:
    def __init__(self, ctx: Context, estate: EstateService) -> None:
        self.ctx = ctx
        self.estate = estate

    # --- creating ---------------------------------------------------------------
    def _prepare(
        self, tx: Tx, actor: Actor, new: NewRequest, *, emergency: bool
    ) -> tuple[AccessRequest, list[Instrument]]:
        now = self.ctx.now()
        if actor.org_kind != OrgKind.VENDOR or Role.ENGINEER not in actor.roles:
            raise PermissionDenied("only vendor engineers request access")
        if not new.instruments or len(new.instruments) > 20:
            raise InvalidInput("name 1 to 20 instruments")
        if not new.reason.strip():
            raise InvalidInput("a reason is required")
        insts: list[Instrument] = []
        for name in dict.fromkeys(new.instruments):
            inst = tx.one(Instrument, name=name)
            if inst is None or not inst.active:
                raise NotFound(f"no instrument {name!r}")
            contracts = tx.find(Contract, vendor_id=actor.org_id, hospital_id=inst.hospital_id)
            if not any(contract_covers(c, name, now) for c in contracts):
                raise PermissionDenied(f"your organisation has no active contract for {name}")
            insts.append(inst)
        hospital_id = insts[0].hospital_id
        if any(i.hospital_id != hospital_id for i in insts):
            raise InvalidInput("one request covers instruments of one hospital")
        offered = {p for i in insts for p in [*i.ports, i.ssh_port]}
        ports = sorted(set(new.ports)) or sorted({i.ssh_port for i in insts})
        bad = [p for p in ports if p not in offered]
        if bad:
            raise InvalidInput(f"ports not offered by these instruments: {bad}")
        start = new.start_at
        if emergency:
            start = None
        elif start is not None:
            if start < now - START_TOLERANCE:
                raise InvalidInput("the scheduled start is in the past")
            if start > now + MAX_SCHEDULE_AHEAD:
                raise InvalidInput("the scheduled start is too far ahead")
            start = max(start, now)
        policy = self.estate.policy_in(tx, hospital_id, now)
        rules.check_request_against_policy(
            policy,
            duration_s=new.duration_s,
            file_transfer=new.file_transfer,
            start=start or now,
            emergency=emergency,
        )
        expires = now + timedelta(seconds=policy.request_ttl_s)
        if start is not None:
            expires = min(expires, start + timedelta(seconds=new.duration_s))
        req = AccessRequest(
            id=self.ctx.new_id(),
            requester_id=actor.user_id,
            vendor_id=actor.org_id,
            hospital_id=hospital_id,
            instruments=[i.name for i in insts],
            ports=ports,
            file_transfer=new.file_transfer,
            reason=new.reason.strip()[:2000],
            ticket=new.ticket[:200],
            work_plan=new.work_plan[:20000],
            start_at=start,
            duration_s=new.duration_s,
            created_at=now,
            expires_at=expires,
            approvals_required=rules.approvals_required(policy, insts),
            emergency=emergency,
        )
        return req, insts

    def _created_event(self, actor: Actor, req: AccessRequest) -> None:
        self.ctx.emit(
            "request.created",
            actor,
            ObjectType="request",
            Object=req.id,
            RequestId=req.id,
            HospitalId=req.hospital_id,
            VendorId=req.vendor_id,
            Emergency=req.emergency,
            details={
                "instruments": req.instruments,
                "ports": req.ports,
                "file_transfer": req.file_transfer,
                "reason": req.reason,
                "ticket": req.ticket,
                "work_plan": req.work_plan,
                "start": req.start_at.isoformat() if req.start_at else "on approval",
                "duration_s": req.duration_s,
            },
        )

    def create(self, actor: Actor, new: NewRequest) -> AccessRequest:
        with self.ctx.uow() as tx:
            req, _ = self._prepare(tx, actor, new, emergency=False)
            tx.add(req)
            self._created_event(actor, req)
            return req

    # --- reading -------------------------------------------------------------------
    def _visible(self, actor: Actor, req: AccessRequest | Grant) -> bool:
        f = visible_filter(actor)
        if not f:
            return True
        if "__self__" in f:
            owner = req.requester_id if isinstance(req, AccessRequest) else req.user_id
            return owner == actor.user_id
        key, value = next(iter(f.items()))
        return bool(getattr(req, key) == value)

    def _get(
        self, tx: Tx, actor: Actor, request_id: str, *, lock: bool = False, deciding: bool = False
    ) -> AccessRequest:
        """Load a request the caller may see; approvers deciding get a 403 (not 404)
        for another hospital's request, so the refusal is audited as such."""
        req = tx.get(AccessRequest, request_id, for_update=lock)
        if req is None or not (deciding or self._visible(actor, req)):
            raise NotFound(f"no request {request_id!r}")
        return req

    def list_requests(
        self, actor: Actor, status: str | None = None, limit: int = 200
    ) -> list[AccessRequest]:
        if status is not None and status not in RequestStatus.__members__.values():
            raise InvalidInput(f"unknown status {status!r}")
        where: dict[str, Any] = dict(visible_filter(actor))
        if "__self__" in where:
            where = {"requester_id": where.pop("__self__")}
        if status:
            where["status"] = status
        with self.ctx.uow() as tx:
            return list(
                reversed(
                    tx.find(AccessRequest, order_by="-created_at", limit=min(limit, 1000), **where)
                )
            )

    def show(self, actor: Actor, request_id: str) -> RequestView:
        with self.ctx.uow() as tx:
            req = self._get(tx, actor, request_id)
            grant = tx.get(Grant, req.grant_id) if req.grant_id else None
            history = chain(tx.find(Transition, subject_kind="request", subject_id=req.id))
            if grant is not None:
                history += chain(tx.find(Transition, subject_kind="grant", subject_id=grant.id))
            decisions = tx.find(Decision, request_id=req.id, order_by="at")
            return RequestView(req, decisions, sorted(history, key=lambda t: t.at), grant)

    # --- deciding ----------------------------------------------------------------
    def _expire_if_due(self, request_id: str) -> None:
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            req = tx.get(AccessRequest, request_id, for_update=True)
            if req is not None and req.status == RequestStatus.PENDING and req.expires_at <= now:
                expire(self.ctx, tx, req)

    def _decide_checks(self, tx: Tx, actor: Actor, req: AccessRequest) -> list[Decision]:
        if req.status != RequestStatus.PENDING:
            raise Conflict(f"the request is {req.status}, not pending", code="illegal_transition")
        approver = tx.get(User, actor.user_id)
        if approver is None:
            raise NotFound("no such user")
        decisions = tx.find(Decision, request_id=req.id)
        rules.check_can_decide(req, approver, actor.org_id, decisions)
        return decisions

    def approve(self, actor: Actor, request_id: str, comment: str = "") -> RequestView:
        self._expire_if_due(request_id)
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            req = self._get(tx, actor, request_id, lock=True, deciding=True)
            decisions = self._decide_checks(tx, actor, req)
            d = Decision(self.ctx.new_id(), req.id, actor.user_id, "approve", now, comment[:2000])
            tx.add(d)
            count = rules.distinct_approvals([*decisions, d])
            self.ctx.emit(
                "request.approved",
                actor,
                ObjectType="request",
                Object=req.id,
                RequestId=req.id,
                HospitalId=req.hospital_id,
                VendorId=req.vendor_id,
                details={
                    "comment": comment,
                    "approvals": count,
                    "approvals_required": req.approvals_required,
                },
            )
            if count >= req.approvals_required:
                starts, _ = rules.grant_window(req, now)
                policy = self.estate.policy_in(tx, req.hospital_id, now)
                rules.check_request_against_policy(
                    policy,
                    duration_s=req.duration_s,
                    file_transfer=req.file_transfer,
                    start=starts,
                    emergency=False,
                )
                move(self.ctx, tx, req, RequestStatus.APPROVED, actor, comment)
                self.issue_grant(tx, actor, req, now)
        return self.show(actor, request_id)

    def issue_grant(self, tx: Tx, actor: Actor, req: AccessRequest, now: datetime) -> Grant:
        starts, ends = rules.grant_window(req, now)
        grant = Grant(
            self.ctx.new_id(),
            req.id,
            req.requester_id,
            req.hospital_id,
            req.vendor_id,
            req.instruments,
            req.ports,
            req.file_transfer,
            starts,
            ends,
            now,
            emergency=req.emergency,
            ticket=req.ticket,
        )
        tx.add(grant)
        tx.add(
            Transition(
                self.ctx.new_id(), "grant", grant.id, "", GrantStatus.APPROVED, now, actor.user_id
            )
        )
        req.decided_at = now
        req.grant_id = grant.id
        tx.save(req)
        requester = tx.get(User, req.requester_id)
        self.ctx.emit(
            "grant.created",
            actor,
            ObjectType="grant",
            Object=grant.id,
            GrantId=grant.id,
            RequestId=req.id,
            HospitalId=req.hospital_id,
            VendorId=req.vendor_id,
            Emergency=req.emergency,
            TargetUsername=requester.name if requester else None,
            details={
                "instruments": grant.instruments,
                "ports": grant.ports,
                "file_transfer": grant.file_transfer,
                "starts": starts.isoformat(),
                "ends": ends.isoformat(),
                "work_plan": req.work_plan,
                "ticket": req.ticket,
            },
        )
        if starts <= now:
            move(self.ctx, tx, grant, GrantStatus.ACTIVE, actor, "window open")
            self.ctx.emit(
                "grant.activated",
                actor,
                ObjectType="grant",
                Object=grant.id,
                GrantId=grant.id,
                RequestId=req.id,
                HospitalId=req.hospital_id,
                Emergency=req.emergency,
            )
        return grant

    def deny(self, actor: Actor, request_id: str, comment: str = "") -> RequestView:
        self._expire_if_due(request_id)
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            req = self._get(tx, actor, request_id, lock=True, deciding=True)
            self._decide_checks(tx, actor, req)
            tx.add(Decision(self.ctx.new_id(), req.id, actor.user_id, "deny", now, comment[:2000]))
            req.decided_at = now
            move(self.ctx, tx, req, RequestStatus.DENIED, actor, comment)
            self.ctx.emit(
                "request.denied",
                actor,
                ObjectType="request",
                Object=req.id,
                RequestId=req.id,
                HospitalId=req.hospital_id,
                VendorId=req.vendor_id,
                details={"comment": comment},
            )
        return self.show(actor, request_id)

    def cancel(self, actor: Actor, request_id: str) -> RequestView:
        self._expire_if_due(request_id)
        with self.ctx.uow() as tx:
            req = self._get(tx, actor, request_id, lock=True)
            if req.requester_id != actor.user_id:
                raise PermissionDenied("only the requester may cancel a request")
            move(self.ctx, tx, req, RequestStatus.CANCELLED, actor, "withdrawn")
            self.ctx.emit(
                "request.cancelled",
                actor,
                ObjectType="request",
                Object=req.id,
                RequestId=req.id,
                HospitalId=req.hospital_id,
                VendorId=req.vendor_id,
            )
        return self.show(actor, request_id)
