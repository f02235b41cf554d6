"""Grants: listing, revocation, the emergency path and the clock sweep.

A grant lets one engineer reach the named instruments and ports between
``starts_at`` and ``ends_at``.  Revocation by the hospital's approvers or
admins (or a platform admin) is immediate; ``grant.revoked`` is written
before the revocation commits, and if it cannot be written the grant stays
as it was and the caller gets an error.

Emergency path (GUIDELINES control 19): where the hospital policy allows it,
an engineer with a contract starts a short grant at once.  The request is
flagged, ``emergency.started`` and ``alert.raised`` are written in the same
transaction (no alert, no access), and an approver of the hospital must
review it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.access.auth import account_usable
from broker.access.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from broker.access.estate import contract_covers
from broker.access.history import move
from broker.access.model import (
    AccessRequest,
    Contract,
    Grant,
    GrantStatus,
    RequestStatus,
    Role,
    User,
)
from broker.access.people import is_platform
from broker.access.ports import SYSTEM, Actor, Context, Tx
from broker.access.requests import NewRequest, RequestService, expire, visible_filter

LIVE = (GrantStatus.APPROVED.value, GrantStatus.ACTIVE.value)
VERDICTS = ("accepted", "rejected")


# The one definition of a live grant.  A grant lets its engineer in only while all of:
# its status is live (approved or active) and ``now`` is inside its window
# (:func:`grant_in_window`); its engineer's account is usable; and the vendor's contract
# still covers the instruments used (:func:`contract_holds`).  :func:`grant_holds` is the
# whole rule; the SSH front door, the certificate issuer and the gateways' windows use it.


def grant_in_window(g: Grant, now: datetime) -> bool:
    """The grant's status is live and ``now`` is between its start and its end."""
    return g.status in LIVE and g.starts_at <= now < g.ends_at


def contract_holds(tx: Tx, g: Grant, instruments: list[str], now: datetime) -> bool:
    """A grant works only while the vendor's contract still covers its instruments."""
    contracts = tx.find(Contract, vendor_id=g.vendor_id, hospital_id=g.hospital_id)
    return all(any(contract_covers(c, name, now) for c in contracts) for name in instruments)


def grant_holds(tx: Tx, g: Grant, now: datetime, *, instruments: list[str] | None = None) -> bool:
    """The whole rule: in its window, engineer usable, contract covering ``instruments``
    (default: all of the grant's instruments)."""
    if not grant_in_window(g, now):
        return False
    user = tx.get(User, g.user_id)
    if user is None or not account_usable(user, now):
        return False
    return contract_holds(tx, g, g.instruments if instruments is None else instruments, now)


def latest_grant_end(tx: Tx, user_id: str, now: datetime) -> datetime | None:
    """When the last of the user's live grants ends (``None``: no live grant)."""
    ends = [
        g.ends_at
        for g in tx.find(Grant, user_id=user_id, status=list(LIVE))
        if grant_holds(tx, g, now)
    ]
    return max(ends) if ends else None


@dataclass(frozen=True, slots=True)
class SweepResult:
    expired_requests: int = 0
    activated: int = 0
    expired_grants: int = 0


class GrantService:
    def __init__(self, ctx: Context, requests: RequestService) -> None:
        self.ctx = ctx
        self.requests = requests

    def list_grants(
        self, actor: Actor, *, live_only: bool = False, unreviewed_emergencies: bool = False
    ) -> list[Grant]:
        where: dict[str, Any] = dict(visible_filter(actor))
        if "__self__" in where:
            where = {"user_id": where.pop("__self__")}
        if live_only:
            where["status"] = list(LIVE)
        if unreviewed_emergencies:
            where["emergency"] = True
        with self.ctx.uow() as tx:
            grants = tx.find(Grant, order_by="created_at", **where)
        if unreviewed_emergencies:
            grants = [g for g in grants if g.reviewed_at is None]
        return grants

    def _get(self, actor: Actor, tx_grant: Grant | None, grant_id: str) -> Grant:
        if tx_grant is None or not self.requests._visible(actor, tx_grant):
            raise NotFound(f"no grant {grant_id!r}")
        return tx_grant

    def revoke(self, actor: Actor, grant_id: str, comment: str = "") -> Grant:
        """End a grant now; live sessions under it are ended by the front door."""
        with self.ctx.uow() as tx:
            g = tx.get(Grant, grant_id, for_update=True)
            if g is None:
                raise NotFound(f"no grant {grant_id!r}")
            if not is_platform(actor) and g.hospital_id != actor.org_id:
                raise PermissionDenied("only the grant's hospital may revoke it")
            if g.status not in LIVE:
                raise Conflict(f"the grant is {g.status}", code="illegal_transition")
            g.closed_at, g.closed_by = self.ctx.now(), actor.user_id
            move(self.ctx, tx, g, GrantStatus.REVOKED, actor, comment)
            self.ctx.emit(
                "grant.revoked",
                actor,
                ObjectType="grant",
                Object=g.id,
                GrantId=g.id,
                RequestId=g.request_id,
                HospitalId=g.hospital_id,
                VendorId=g.vendor_id,
                Emergency=g.emergency,
                details={"comment": comment},
            )
            return g

    def end(self, actor: Actor, grant_id: str) -> Grant:
        """The engineer says the work is done: the grant ends early."""
        with self.ctx.uow() as tx:
            g = self._get(actor, tx.get(Grant, grant_id, for_update=True), grant_id)
            if g.user_id != actor.user_id:
                raise PermissionDenied("only the grant's engineer may end it")
            if g.status != GrantStatus.ACTIVE:
                raise Conflict(f"the grant is {g.status}", code="illegal_transition")
            g.closed_at, g.closed_by = self.ctx.now(), actor.user_id
            move(self.ctx, tx, g, GrantStatus.ENDED, actor, "work finished")
            self.ctx.emit(
                "grant.expired",
                actor,
                ObjectType="grant",
                Object=g.id,
                GrantId=g.id,
                HospitalId=g.hospital_id,
                VendorId=g.vendor_id,
                EventResultDetails="ended by the engineer",
            )
            return g

    # --- emergencies ---------------------------------------------------------------
    def start_emergency(self, actor: Actor, new: NewRequest) -> Grant:
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            req, _ = self.requests._prepare(tx, actor, new, emergency=True)
            tx.add(req)
            self.requests._created_event(actor, req)
            move(
                self.ctx,
                tx,
                req,
                RequestStatus.APPROVED,
                SYSTEM,
                "emergency access: approved by hospital policy, review required",
            )
            grant = self.requests.issue_grant(tx, actor, req, now)
            cols: dict[str, Any] = dict(
                ObjectType="grant",
                Object=grant.id,
                GrantId=grant.id,
                RequestId=req.id,
                HospitalId=req.hospital_id,
                VendorId=req.vendor_id,
                Emergency=True,
            )
            self.ctx.emit(
                "emergency.started",
                actor,
                **cols,
                details={
                    "reason": req.reason,
                    "ends": grant.ends_at.isoformat(),
                    "instruments": grant.instruments,
                },
            )
            self.ctx.emit(
                "alert.raised",
                actor,
                **cols,
                details={
                    "alert": "emergency_access",
                    "reason": f"{actor.username} started emergency access to "
                    f"{', '.join(grant.instruments)}: {req.reason}",
                },
            )
            return grant

    def review(self, actor: Actor, grant_id: str, verdict: str, comment: str = "") -> Grant:
        """An approver of the hospital reviews an emergency; rejecting also revokes it."""
        if verdict not in VERDICTS:
            raise InvalidInput("verdict must be accepted or rejected")
        now = self.ctx.now()
        with self.ctx.uow() as tx:
            g = tx.get(Grant, grant_id, for_update=True)
            if g is None:
                raise NotFound(f"no grant {grant_id!r}")
            if not g.emergency:
                raise Conflict("only emergency grants are reviewed")
            if g.hospital_id != actor.org_id or Role.APPROVER not in actor.roles:
                raise PermissionDenied("only approvers of the hospital review emergencies")
            if g.user_id == actor.user_id:
                raise PermissionDenied("nobody reviews their own emergency access")
            if g.reviewed_at is not None:
                raise Conflict("this emergency was already reviewed")
            g.review_verdict, g.reviewed_by, g.reviewed_at = verdict, actor.user_id, now
            g.review_comment = comment[:2000]
            tx.save(g)
            self.ctx.emit(
                "emergency.reviewed",
                actor,
                ObjectType="grant",
                Object=g.id,
                GrantId=g.id,
                RequestId=g.request_id,
                HospitalId=g.hospital_id,
                VendorId=g.vendor_id,
                Emergency=True,
                details={"verdict": verdict, "comment": comment},
            )
            if verdict == "rejected" and g.status in LIVE:
                g.closed_at, g.closed_by = now, actor.user_id
                move(self.ctx, tx, g, GrantStatus.REVOKED, actor, "emergency rejected")
                self.ctx.emit(
                    "grant.revoked",
                    actor,
                    ObjectType="grant",
                    Object=g.id,
                    GrantId=g.id,
                    HospitalId=g.hospital_id,
                    Emergency=True,
                    details={"comment": "emergency rejected on review"},
                )
            return g

    # --- the clock -------------------------------------------------------------------
    def sweep(self) -> SweepResult:
        """Expire stale requests, open due windows, close ended ones (idempotent)."""
        now = self.ctx.now()
        n_req = n_act = n_exp = 0
        with self.ctx.uow() as tx:
            for req in tx.find(
                AccessRequest,
                status=RequestStatus.PENDING.value,
                expires_at__lt=now,
                for_update=True,
            ):
                expire(self.ctx, tx, req)
                n_req += 1
            for g in tx.find(Grant, status=list(LIVE), for_update=True):
                cols: dict[str, Any] = dict(
                    ObjectType="grant",
                    Object=g.id,
                    GrantId=g.id,
                    RequestId=g.request_id,
                    HospitalId=g.hospital_id,
                    VendorId=g.vendor_id,
                    Emergency=g.emergency,
                )
                if g.ends_at <= now:
                    g.closed_at = now
                    move(self.ctx, tx, g, GrantStatus.EXPIRED, None, "window closed")
                    self.ctx.emit("grant.expired", None, **cols)
                    n_exp += 1
                elif g.status == GrantStatus.APPROVED and g.starts_at <= now:
                    move(self.ctx, tx, g, GrantStatus.ACTIVE, None, "window open")
                    self.ctx.emit("grant.activated", None, **cols)
                    n_act += 1
        return SweepResult(n_req, n_act, n_exp)

    def user_of(self, grant: Grant) -> User | None:
        with self.ctx.uow() as tx:
            return tx.get(User, grant.user_id)
