"""HTTP routes for live sessions: list, follow read-only, terminate.

``build_sessions_router`` returns an ``APIRouter`` that the broker process
includes (:func:`broker.assembly.attach_front_door`); it reaches the sessions
through :class:`broker.api.services.LiveSessions` only.  Who may do what
is the permission table (:mod:`broker.access.permissions`), asked through
:func:`broker.api.deps.require` like every other route, token scope included:

- list (``sessions.list``, scope ``read``): a hospital's approvers, hospital
  admins and auditors see that hospital's sessions; platform admins and
  auditors see all; an engineer sees their own.
- follow (``GET /v1/sessions/{id}/stream``, the terminal output as it happens;
  ``sessions.follow``) and terminate (``POST /v1/sessions/{id}/terminate``;
  ``sessions.terminate``): approvers and hospital admins of the session's
  hospital, and platform admins, with a token allowing ``decisions`` (a full
  sign-in).  An enrolment-only or read-only token is refused.

Every refusal is a 403 and an event (``recording.refused`` for a follow,
``admin.refused`` for a terminate), written by :mod:`broker.api.errors`; the
session keeps running.  A session the caller may not see is "not found".  A
follow is logged as ``recording.viewed``; a termination as
``session.terminated`` naming the caller.

With several replicas (``cluster``: :class:`broker.api.services.ClusterSessions`) the
sessions other replicas run are listed too (their rows in the database), followed from
their recording in the shared store, and terminated by a request the owning replica
carries out (the same events, written there).  The checks are the same, made here on
the session's row before anything is asked of the owner.
"""

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from audit import new_event
from audit.emitter import Emitter
from broker.access.errors import NotFound
from broker.access.permissions import Principal, check_session_control, may_see_session
from broker.api.deps import Authenticate, refusal_context, require
from broker.api.services import ClusterSessions, LiveSessions, LiveSessionView


def build_sessions_router(
    get_sessions: Callable[[], LiveSessions | None],
    emitter: Emitter,
    *,
    authenticate: Authenticate | None = None,
    cluster: Callable[[], ClusterSessions | None] | None = None,
) -> APIRouter:
    # async routes: they run on the event loop that owns the sessions (terminate
    # resolves the relay's futures, which is only safe from that loop)
    router = APIRouter(tags=["sessions"])

    def allowed(action: str) -> Any:
        return Depends(require(action, authenticate=authenticate, emitter=emitter))

    Lister = Annotated[Principal, allowed("sessions.list")]
    Follower = Annotated[Principal, allowed("sessions.follow")]
    Terminator = Annotated[Principal, allowed("sessions.terminate")]

    def others() -> ClusterSessions | None:
        return cluster() if cluster is not None else None

    async def controlled(
        request: Request, caller: Principal, session_id: str, action: str
    ) -> tuple[LiveSessions | None, LiveSessionView]:
        """The session (here: with its registry; another replica's: with None)."""
        reg = get_sessions()
        s = reg.get(session_id) if reg else None
        if s is None and (remote := others()) is not None:
            found = await remote.find(session_id)
            if found is not None:
                reg, s = None, found
        if s is None:
            raise NotFound(f"no live session {session_id}")
        refusal_context(request, **cols(s))
        if not may_see_session(caller, s.hospital_id, s.user_id) and action == "sessions.follow":
            raise NotFound(f"no live session {session_id}")
        # terminating is a decision: refused (and audited) even when not visible
        check_session_control(caller, s.hospital_id, action)
        return reg, s

    def cols(s: LiveSessionView) -> dict[str, Any]:
        return {
            "TargetSessionId": s.session_id,
            "TargetHostname": s.instrument,
            "HospitalId": s.hospital_id or None,
            "ObjectType": "session",
            "Object": s.session_id,
        }

    def actor(c: Principal) -> dict[str, Any]:
        return {"ActorUsername": c.username, "ActorUserId": c.user_id}

    @router.get("/v1/sessions")
    async def list_sessions(caller: Lister) -> Any:
        reg = get_sessions()
        live: list[LiveSessionView] = list(reg.list() if reg else [])
        if (remote := others()) is not None:
            here = {s.session_id for s in live}
            live += [s for s in await remote.others() if s.session_id not in here]
        rows = [s.summary() for s in live if may_see_session(caller, s.hospital_id, s.user_id)]
        return {"sessions": rows}

    @router.get("/v1/sessions/{session_id}/stream")
    async def follow(session_id: str, request: Request, caller: Follower) -> Any:
        reg, s = await controlled(request, caller, session_id, "sessions.follow")
        remote = others()
        emitter.emit(
            new_event(
                "recording.viewed",
                Operation="follow",
                details={"recording": s.recording or None},
                **actor(caller),
                **cols(s),
            )
        )

        async def body() -> AsyncIterator[bytes]:
            if reg is not None:
                async for chunk in reg.follow(session_id):
                    yield chunk
            elif remote is not None:  # another replica's: its recording as it is stored
                async for chunk in remote.follow(session_id, s.recording):
                    yield chunk

        return StreamingResponse(body(), media_type="application/octet-stream")

    @router.post("/v1/sessions/{session_id}/terminate")
    async def terminate(session_id: str, request: Request, caller: Terminator) -> Any:
        reg, _s = await controlled(request, caller, session_id, "sessions.terminate")
        if reg is not None:
            reg.terminate(session_id, by=caller.username, reason="approver")
            return {"session_id": session_id, "terminated": True}
        remote = others()
        asked = (
            await remote.terminate(session_id, by=caller.username, reason="approver")
            if remote is not None
            else None
        )
        if asked is None:
            raise NotFound(f"no live session {session_id}")
        # another replica runs it: it was asked (and ends it within about a second)
        return {"session_id": session_id, "terminated": True, "asked_at": asked.isoformat()}

    return router
