"""Live sessions over the API: list, follow read-only, terminate.

Who may do what (deny by default):

- list: platform admins and platform auditors see every live session;
  approvers, hospital admins and auditors of a hospital see that hospital's;
  engineers see their own.  Anyone else gets 403.
- follow (``/stream``): approvers and hospital admins of the session's
  hospital, and platform admins.  The stream is the terminal output only.
- terminate: approvers and hospital admins of the session's hospital, and
  platform admins.  The session ends at once and ``session.terminated``
  names who ended it.

A session the caller may not see answers 404, as an unknown one does.
"""


from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from broker.access.errors import NotFound, PermissionDenied
from broker.access.ports import Actor
from broker.ssh.sessions import LiveSession, SessionRegistry

_WATCHERS = frozenset({"approver", "hospital_admin"})
_HOSPITAL_READERS = frozenset({"approver", "hospital_admin", "auditor"})
_PLATFORM_READERS = frozenset({"platform_admin", "auditor"})


class TerminateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="terminated by an approver", min_length=1, max_length=500)


def may_see(actor: Actor, s: LiveSession) -> bool:
    if actor.org_kind == "platform":
        return bool(actor.roles & _PLATFORM_READERS)
    if actor.org_kind == "hospital":
        return s.hospital_id == actor.org_id and bool(actor.roles & _HOSPITAL_READERS)
    return "engineer" in actor.roles and s.user_id == actor.user_id


def may_control(actor: Actor, s: LiveSession) -> bool:
    if actor.org_kind == "platform":
        return "platform_admin" in actor.roles
    return (actor.org_kind == "hospital" and s.hospital_id == actor.org_id
            and bool(actor.roles & _WATCHERS))


def build_sessions_router(registry: Callable[[], SessionRegistry | None],
                          authenticate: Callable[[Request], Actor]) -> APIRouter:
    """``registry`` returns the front door's registry (None until the door is up)."""
    router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

    def live() -> SessionRegistry:
        reg = registry()
        if reg is None:
            raise NotFound("the SSH front door is not running")
        return reg

    def caller(request: Request) -> Actor:
        actor = authenticate(request)
        request.state.actor = actor
        return actor

    CallerDep = Annotated[Actor, Depends(caller)]

    def visible(actor: Actor, session_id: str) -> LiveSession:
        s = live().get(session_id)
        if s is None or s.ended_reason is not None or not may_see(actor, s):
            raise NotFound(f"no live session {session_id}")
        return s

    @router.get("")
    def list_sessions(actor: CallerDep) -> dict[str, Any]:
        if not actor.roles & (_PLATFORM_READERS | _HOSPITAL_READERS | {"engineer"}):
            raise PermissionDenied("your role does not show live sessions")
        rows = [s.summary() for s in live().list() if may_see(actor, s)]
        return {"sessions": sorted(rows, key=lambda r: str(r["started"]))}

    @router.get("/{session_id}/stream")
    async def follow(session_id: str, actor: CallerDep) -> StreamingResponse:
        s = visible(actor, session_id)
        if not may_control(actor, s):
            raise PermissionDenied("only the hospital's approvers may watch a live session")

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in live().follow(s.session_id):
                yield chunk

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @router.post("/{session_id}/terminate")
    def terminate(session_id: str, body: TerminateIn, actor: CallerDep) -> dict[str, Any]:
        s = visible(actor, session_id)
        if not may_control(actor, s):
            raise PermissionDenied("only the hospital's approvers may end a live session")
        live().terminate(s.session_id, by=actor.username, reason=body.reason)
        return {"session_id": s.session_id, "terminated": True}

    return router
