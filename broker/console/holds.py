"""The approver's held commands: shell lines waiting for an answer, allowed or refused.

A line matching a ``hold`` rule of the hospital waits in its live session
(``broker.live.holds``) until an approver answers or its deadline passes.  The page
(``/console/holds``, ``console.holds`` in the permission table: the hospital's
approvers) lists the lines of the caller's hospital waiting on this broker: the
engineer, the instrument, the held line (escaped, as typed), since when and the time
left.  Allow and Refuse are ``commands.release`` answered by
:func:`broker.access.holds.answer`, as ``POST /v1/holds/{id}/allow|refuse`` is: an
approver of the session's hospital only; anyone else gets 403 and the ``admin.refused`` event
naming the hold, and the line keeps waiting.  The answer resolves the hold and the
relay writes ``session.command_released`` naming the approver, as for the API.

With several replicas (``app.state.hold_board``, :mod:`broker.live.clusterholds`) the
page lists the cluster's waiting lines from the database and an answer is the same
conditional update of the row as the API's: the first answer wins on every replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from broker.access.holds import ALLOWED, REFUSED, Held, HoldBoard, answer, may_answer
from broker.access.holds import waiting as waiting_in
from broker.console import i18n
from broker.console.routes import zone_of
from broker.console.web import PREFIX, Session, page, redirect, render, services_of

router = APIRouter(prefix=PREFIX, tags=["console"])

MAX_SHOWN = 200
NOTICES = frozenset({"hold_allowed", "hold_refused"})

ListSession = Annotated[Session, Depends(page("console.holds"))]
ReleaseSession = Annotated[Session, Depends(page("commands.release"))]


class Registry(Protocol):
    def list(self) -> Sequence[Any]: ...


def board_of(request: Request) -> HoldBoard | None:
    """The cluster's held lines (several replicas), or None (one broker)."""
    getter: Callable[[], HoldBoard | None] | None = getattr(request.app.state, "hold_board", None)
    return getter() if getter is not None else None


async def waiting(request: Request) -> list[Held]:
    """The lines waiting on this broker's live sessions, or the cluster's (every
    hospital's)."""
    shared = board_of(request)
    if shared is not None:
        return list(await asyncio.to_thread(shared.waiting))
    getter: Callable[[], Registry | None] | None = getattr(request.app.state, "live_sessions", None)
    reg = getter() if getter is not None else None
    return waiting_in(reg.list() if reg is not None else ())


def _left(hold: Held, now: datetime) -> str:
    seconds = max(0, int((hold.deadline - now).total_seconds()))
    return f"{seconds // 60}:{seconds % 60:02d}"


@router.get("/holds")
async def holds(request: Request, session: ListSession) -> Response:
    """The lines of my hospital waiting for an approver, oldest first."""
    services = services_of(request)
    tz = await asyncio.to_thread(zone_of, services, session)
    now = services.ctx.now()
    found = sorted(
        (h for h in await waiting(request) if may_answer(session.actor, h)), key=lambda h: h.held_at
    )
    rows = [
        {
            "h": h,
            "since": i18n.local_time(h.held_at, tz),
            "left": _left(h, now),
        }
        for h in found[:MAX_SHOWN]
    ]
    done = request.query_params.get("done")
    return render(
        request,
        "holds.html",
        rows=rows,
        tz=str(tz.key),
        notice=done if done in NOTICES else None,
    )


async def _decide(request: Request, session: Session, hold_id: str, decision: str) -> Response:
    def found(hold: Held) -> None:
        columns: dict[str, Any] = getattr(request.state, "refusal_columns", {})
        columns.update(
            {
                "TargetSessionId": hold.session_id,
                "TargetHostname": hold.instrument,
                "ObjectType": "command_hold",
                "Object": hold_id,
            }
        )
        if hold.hospital_id:
            columns["HospitalId"] = hold.hospital_id
        request.state.refusal_columns = columns

    shared = board_of(request)
    if shared is not None:  # the row's conditional update, off the event loop
        await asyncio.to_thread(
            lambda: answer(shared.lookup(hold_id), hold_id, decision, session.actor, found=found)
        )
    else:
        answer(await waiting(request), hold_id, decision, session.actor, found=found)
    return redirect(f"{PREFIX}/holds?done=hold_{decision}")


@router.post("/holds/{hold_id}/allow")
async def allow(hold_id: str, request: Request, session: ReleaseSession) -> Response:
    """Let the held line through, as ``POST /v1/holds/{id}/allow``."""
    return await _decide(request, session, hold_id, ALLOWED)


@router.post("/holds/{hold_id}/refuse")
async def refuse(hold_id: str, request: Request, session: ReleaseSession) -> Response:
    """Keep the held line from the instrument, as ``POST /v1/holds/{id}/refuse``."""
    return await _decide(request, session, hold_id, REFUSED)
