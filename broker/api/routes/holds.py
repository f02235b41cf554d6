"""HTTP routes for shell command lines held for a hospital approver.

A line matching a ``hold`` rule of the hospital waits in its live session
(:mod:`broker.live.holds`) until an approver answers or its deadline passes:

- ``GET /v1/holds`` (``commands.holds``, scope ``read``): the lines waiting that
  the caller may see, as live sessions are seen (the hospital's staff theirs,
  platform staff all, an engineer his own).
- ``POST /v1/holds/{hold_id}/allow`` and ``/refuse`` (``commands.release``, scope
  ``decisions``): an approver of the session's hospital only.  An approver of
  another hospital, the engineer himself, an auditor or an admin is refused
  (403 and an ``admin.refused`` event; the line keeps waiting).  The answer is a
  ``session.command_released`` event written by the relay, naming the approver.

With several replicas (``board``, :mod:`broker.live.clusterholds`) the waiting lines
are read from the database, so every replica lists the cluster's, and an answer is a
conditional update of the row there (the first wins on every replica; answered already
or past the deadline: 409); the replica running the session learns of it within a
change-feed notification.
"""

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from audit.emitter import Emitter
from broker.access.holds import ALLOWED, REFUSED, Held, HoldBoard, answer, waiting
from broker.access.permissions import Principal, may_see_session
from broker.api.deps import Authenticate, refusal_context, require


def build_holds_router(
    get_sessions: Callable[[], Any],
    emitter: Emitter,
    *,
    authenticate: Authenticate | None = None,
    board: Callable[[], HoldBoard | None] = lambda: None,
) -> APIRouter:
    # async routes: a decision resolves the relay's future, safe only from its loop
    router = APIRouter(tags=["sessions"])

    def allowed(action: str) -> Any:
        return Depends(require(action, authenticate=authenticate, emitter=emitter))

    Lister = Annotated[Principal, allowed("commands.holds")]
    Releaser = Annotated[Principal, allowed("commands.release")]

    def live() -> list[Any]:
        reg = get_sessions()
        return list(reg.list()) if reg is not None else []

    def holds() -> list[Held]:
        return waiting(live())

    @router.get("/v1/holds")
    async def list_holds(caller: Lister) -> Any:
        shared = board()
        if shared is not None:  # the cluster's, from the database
            rows = await asyncio.to_thread(shared.waiting)
            return {
                "holds": [
                    h.summary() for h in rows if may_see_session(caller, h.hospital_id, h.user_id)
                ]
            }
        seen = [s for s in live() if may_see_session(caller, s.hospital_id, s.user_id)]
        return {"holds": [h.summary() for h in waiting(seen)]}

    async def decide(request: Request, caller: Principal, hold_id: str, decision: str) -> Any:
        def found(hold: Held) -> None:
            refusal_context(
                request,
                TargetSessionId=hold.session_id,
                TargetHostname=hold.instrument,
                HospitalId=hold.hospital_id or None,
                ObjectType="command_hold",
                Object=hold_id,
            )

        shared = board()
        if shared is not None:  # the row's conditional update, off the event loop
            hold = await asyncio.to_thread(
                lambda: answer(shared.lookup(hold_id), hold_id, decision, caller, found=found)
            )
        else:
            hold = answer(holds(), hold_id, decision, caller, found=found)
        return {**hold.summary(), "decision": decision, "by": caller.username}

    @router.post("/v1/holds/{hold_id}/allow")
    async def allow(hold_id: str, request: Request, caller: Releaser) -> Any:
        return await decide(request, caller, hold_id, ALLOWED)

    @router.post("/v1/holds/{hold_id}/refuse")
    async def refuse(hold_id: str, request: Request, caller: Releaser) -> Any:
        return await decide(request, caller, hold_id, REFUSED)

    return router
