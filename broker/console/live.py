"""The console's live sessions: list, watch the terminal in the browser, terminate.

The console reaches the front door's session registry through :class:`Registry`
(a small Protocol: it imports no SSH package), found at
``app.state.live_sessions`` (a callable set by :mod:`broker.assembly`; ``None``
or no front door means no live session).  The rules are the API's
(:mod:`broker.api.routes.sessions`), asked of the same table and functions:

- list (``console.sessions``): approvers, hospital admins and platform admins;
  the rows are those :func:`~broker.access.permissions.may_see_session` allows
  (a hospital's staff: that hospital's sessions; platform admins: all).
- watch (the page and its byte stream, ``sessions.follow``) and terminate
  (``sessions.terminate``, a POST with the CSRF token): staff of the session's
  hospital and platform admins
  (:func:`~broker.access.permissions.check_session_control`).  Anyone else
  gets 403 and the refusal event (``recording.refused`` for a watch,
  ``admin.refused`` for a terminate) naming the session; it keeps running.
  An unknown or ended session is "not found".

Opening the stream writes ``recording.viewed`` (``Operation`` ``follow``);
terminating writes ``session.terminated`` naming the caller (the registry's).
The page's script (``static/live.js``, served by the broker: CSP
``script-src 'self'``) reads the stream with ``fetch`` and renders it as text.

With several replicas, ``app.state.cluster_sessions`` (a callable giving a
:class:`Cluster`) adds the sessions other replicas run: listed from the database,
watched from their recording in the shared store (about a second behind), ended by a
request the owning replica carries out.  The checks above are made here first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Protocol
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from audit import new_event
from broker.access.errors import NotFound
from broker.access.model import User
from broker.access.permissions import check_session_control, may_see_session
from broker.console import i18n
from broker.console.routes import zone_of
from broker.console.web import PREFIX, Session, harden, page, redirect, render, services_of

router = APIRouter(prefix=PREFIX, tags=["console"])

MAX_SESSIONS_SHOWN = 500
TERMINATE_WAIT_S = 3.0  # how long a terminate waits for the session to be gone
KINDS = frozenset({"shell", "exec", "sftp", "scp", "forward", "desktop"})  # catalog labels


class LiveView(Protocol):
    """One live session as the console shows it (``broker.live.sessions.LiveSession``)."""

    @property
    def session_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def instrument(self) -> str: ...
    @property
    def hospital_id(self) -> str: ...
    @property
    def grant_id(self) -> str: ...
    @property
    def started(self) -> datetime: ...
    @property
    def recording(self) -> str: ...


class Registry(Protocol):
    """What the console needs of the front door's live-session registry."""

    def get(self, session_id: str) -> LiveView | None: ...

    def list(self) -> Sequence[LiveView]: ...

    def follow(self, session_id: str) -> AsyncIterator[bytes]: ...

    def terminate(self, session_id: str, *, by: str, reason: str) -> bool: ...

    async def until_gone(self, session_id: str, timeout_s: float) -> bool: ...


class Cluster(Protocol):
    """Sessions other replicas run (``broker.live.directory.ClusterSessions``)."""

    async def find(self, session_id: str) -> LiveView | None: ...

    async def others(self) -> Sequence[LiveView]: ...

    def follow(self, session_id: str, recording: str) -> AsyncIterator[bytes]: ...

    async def terminate(self, session_id: str, *, by: str, reason: str) -> datetime | None: ...


ListSession = Annotated[Session, Depends(page("console.sessions"))]
FollowSession = Annotated[Session, Depends(page("sessions.follow"))]
TerminateSession = Annotated[Session, Depends(page("sessions.terminate"))]


def registry_of(request: Request) -> Registry | None:
    getter: Callable[[], Registry | None] | None = getattr(request.app.state, "live_sessions", None)
    return getter() if getter is not None else None


def cluster_of(request: Request) -> Cluster | None:
    getter: Callable[[], Cluster | None] | None = getattr(
        request.app.state, "cluster_sessions", None
    )
    return getter() if getter is not None else None


def _columns(s: LiveView) -> dict[str, Any]:
    return {
        "TargetSessionId": s.session_id,
        "TargetHostname": s.instrument,
        "HospitalId": s.hospital_id or None,
        "ObjectType": "session",
        "Object": s.session_id,
    }


async def controlled(
    request: Request, session: Session, session_id: str, action: str
) -> tuple[Registry | None, LiveView]:
    """The live session ``session_id`` if the caller may ``action`` it (with this
    replica's registry, or None: another replica runs it); else raise (refusal columns
    left for the API's one error path, which writes the event)."""
    reg = registry_of(request)
    s = reg.get(session_id) if reg is not None else None
    if s is None and (cluster := cluster_of(request)) is not None:
        found = await cluster.find(session_id)
        if found is not None:
            reg, s = None, found
    if s is None:
        raise NotFound(f"no live session {session_id}")
    columns: dict[str, Any] = getattr(request.state, "refusal_columns", {})
    columns.update({k: v for k, v in _columns(s).items() if v is not None})
    request.state.refusal_columns = columns
    check_session_control(session.actor, s.hospital_id, action)
    return reg, s


def _people(request: Request, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    with services_of(request).ctx.uow() as tx:
        return {
            u.id: f"{u.full_name} ({u.name})" if u.full_name else u.name
            for u in tx.find(User, id=sorted(ids))
        }


def _row(s: LiveView, people: dict[str, str], tz: ZoneInfo) -> dict[str, Any]:
    return {
        "s": s,
        "engineer": people.get(s.user_id, s.username),
        "kind": s.kind if s.kind in KINDS else "other",
        "started": i18n.local_time(s.started, tz),
    }


def _tz(request: Request, session: Session) -> ZoneInfo:
    return zone_of(services_of(request), session)


@router.get("/sessions")
async def sessions(request: Request, session: ListSession) -> Response:
    """Live sessions the caller may see (their hospital's; platform admins: all)."""
    reg = registry_of(request)
    every: list[LiveView] = list(reg.list() if reg is not None else [])
    if (cluster := cluster_of(request)) is not None:
        here = {s.session_id for s in every}
        every += [s for s in await cluster.others() if s.session_id not in here]
    live = [s for s in every if may_see_session(session.actor, s.hospital_id, s.user_id)]
    live = sorted(live, key=lambda s: s.started)[:MAX_SESSIONS_SHOWN]
    tz = await asyncio.to_thread(_tz, request, session)
    people = await asyncio.to_thread(_people, request, {s.user_id for s in live})
    done = request.query_params.get("done")
    return render(
        request,
        "sessions.html",
        rows=[_row(s, people, tz) for s in live],
        notice=done if done == "terminated" else None,
        tz=str(tz.key),
    )


@router.get("/sessions/{session_id}")
async def watch(session_id: str, request: Request, session: FollowSession) -> Response:
    """The watch page: the terminal as it happens (``live.js``) and the terminate form."""
    _reg, s = await controlled(request, session, session_id, "sessions.follow")
    tz = await asyncio.to_thread(_tz, request, session)
    people = await asyncio.to_thread(_people, request, {s.user_id})
    return render(request, "watch.html", row=_row(s, people, tz), tz=str(tz.key))


@router.get("/sessions/{session_id}/stream")
async def stream(session_id: str, request: Request, session: FollowSession) -> Response:
    """The session's terminal output, as it happens, until it ends (read-only)."""
    reg, s = await controlled(request, session, session_id, "sessions.follow")
    cluster = cluster_of(request)
    await asyncio.to_thread(
        services_of(request).ctx.emitter.emit,
        new_event(
            "recording.viewed",
            Operation="follow",
            details={"recording": s.recording or None},
            ActorUsername=session.actor.username,
            ActorUserId=session.actor.user_id,
            **_columns(s),
        ),
    )

    async def body() -> AsyncIterator[bytes]:
        if reg is not None:
            async for chunk in reg.follow(session_id):
                yield chunk
        elif cluster is not None:  # another replica's: its recording as it is stored
            async for chunk in cluster.follow(session_id, s.recording):
                yield chunk

    response = StreamingResponse(
        body(), media_type="application/octet-stream", headers={"X-Accel-Buffering": "no"}
    )
    return harden(response)


@router.post("/sessions/{session_id}/terminate")
async def terminate(session_id: str, request: Request, session: TerminateSession) -> Response:
    """End the session now, as ``POST /v1/sessions/{id}/terminate``."""
    reg, _s = await controlled(request, session, session_id, "sessions.terminate")
    if reg is not None:
        reg.terminate(session_id, by=session.actor.username, reason="approver")
        # the list the approver lands on no longer shows it: a session leaves once its
        # recording is closed and its session.ended written (normally at once)
        await reg.until_gone(session_id, TERMINATE_WAIT_S)
    elif (cluster := cluster_of(request)) is None or (
        await cluster.terminate(session_id, by=session.actor.username, reason="approver") is None
    ):
        raise NotFound(f"no live session {session_id}")
    return redirect(f"{PREFIX}/sessions?done=terminated")
