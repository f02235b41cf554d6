"""HTTP routes for live sessions: list, follow read-only, terminate.

``build_sessions_router`` returns an ``APIRouter`` that the broker process
includes (``build_runtime(..., extra_routers=[...])``).  Who may do what:

- list: a hospital's approvers, hospital admins and auditors see that
  hospital's sessions; platform admins and auditors see all; an engineer sees
  their own.
- follow (``GET /v1/sessions/{id}/stream``, the terminal output as it
  happens) and terminate (``POST /v1/sessions/{id}/terminate``): approvers and
  hospital admins of the session's hospital, and platform admins.

Everything else is refused (403, ``recording.refused`` for a refused follow);
a session the caller may not see is "not found".  A follow is logged as
``recording.viewed``; a termination as ``session.terminated`` naming the caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from audit import new_event
from audit.emitter import Emitter
from broker.ssh.sessions import LiveSession, SessionRegistry

_HOSPITAL_CONTROL = frozenset({"approver", "hospital_admin"})
_HOSPITAL_READ = _HOSPITAL_CONTROL | {"auditor"}
_PLATFORM_READ = frozenset({"platform_admin", "auditor"})


class Caller(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def org_id(self) -> str: ...
    @property
    def org_kind(self) -> str: ...
    @property
    def roles(self) -> frozenset[str]: ...


def may_see(c: Caller, s: LiveSession) -> bool:
    if c.org_kind == "platform" and c.roles & _PLATFORM_READ:
        return True
    if c.org_kind == "hospital" and c.roles & _HOSPITAL_READ:
        return c.org_id == s.hospital_id
    return c.user_id == s.user_id


def may_control(c: Caller, s: LiveSession) -> bool:
    if c.org_kind == "platform" and "platform_admin" in c.roles:
        return True
    return c.org_kind == "hospital" and bool(c.roles & _HOSPITAL_CONTROL) \
        and c.org_id == s.hospital_id


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _default_authenticate(request: Request) -> Caller:
    from broker.api.deps import bearer, client_ip

    services = request.app.state.services
    caller: Caller = services.auth.authenticate(bearer(request), client_ip(request))
    return caller


def build_sessions_router(
    get_sessions: Callable[[], SessionRegistry | None],
    emitter: Emitter,
    *,
    authenticate: Callable[[Request], Caller] = _default_authenticate,
) -> APIRouter:
    # async routes: they run on the event loop that owns the sessions (terminate
    # resolves the relay's futures, which is only safe from that loop)
    router = APIRouter(tags=["sessions"])

    def registry() -> SessionRegistry | None:
        return get_sessions()

    def cols(c: Caller, s: LiveSession) -> dict[str, Any]:
        return {"ActorUsername": c.username, "ActorUserId": c.user_id,
                "TargetSessionId": s.session_id, "TargetHostname": s.instrument,
                "HospitalId": s.hospital_id or None, "ObjectType": "session",
                "Object": s.session_id}

    @router.get("/v1/sessions")
    async def list_sessions(request: Request) -> Any:
        caller = authenticate(request)
        reg = registry()
        rows = [s.summary() for s in (reg.list() if reg else []) if may_see(caller, s)]
        return {"sessions": rows}

    @router.get("/v1/sessions/{session_id}/stream")
    async def follow(session_id: str, request: Request) -> Any:
        caller = authenticate(request)
        reg = registry()
        s = reg.get(session_id) if reg else None
        if reg is None or s is None or not may_see(caller, s):
            return _error(404, "not_found", f"no live session {session_id}")
        if not may_control(caller, s):
            emitter.emit(new_event("recording.refused", EventResult="Failure",
                                   details={"reason": "not an approver of this hospital"},
                                   **cols(caller, s)))
            return _error(403, "permission_denied",
                          "only approvers of the session's hospital may follow it")
        emitter.emit(new_event("recording.viewed", Operation="follow",
                               details={"recording": s.recording or None},
                               **cols(caller, s)))

        async def body() -> AsyncIterator[bytes]:
            async for chunk in reg.follow(session_id):
                yield chunk

        return StreamingResponse(body(), media_type="application/octet-stream")

    @router.post("/v1/sessions/{session_id}/terminate")
    async def terminate(session_id: str, request: Request) -> Any:
        caller = authenticate(request)
        reg = registry()
        s = reg.get(session_id) if reg else None
        if reg is None or s is None or not may_see(caller, s):
            return _error(404, "not_found", f"no live session {session_id}")
        if not may_control(caller, s):
            return _error(403, "permission_denied",
                          "only approvers of the session's hospital may terminate it")
        reg.terminate(session_id, by=caller.username, reason="approver")
        return {"session_id": session_id, "terminated": True}

    return router
