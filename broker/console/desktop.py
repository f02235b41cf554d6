"""The console's desktop sessions: a VNC desktop in the browser, and its recording played.

The broker is the VNC client (:mod:`broker.desktop`, found through
``app.state.desktop_gate``: a callable returning a :class:`Gate`, or ``None``:
then the pages answer 503).  The browser runs noVNC (npm ``@novnc/novnc``,
pinned in package-lock.json, its ES modules served from ``node_modules`` under
``/console/static/novnc/``), driven by our ``static/desktop.js``; it speaks RFB
with security type None to the broker over a WebSocket, and never sees the
instrument's password.

- ``GET /console/desktop/{name}?port=N`` the page, and
  ``WS /console/desktop/{name}/ws?port=N&csrf=…`` the stream: the permission
  table's ``desktop.open`` (engineers after a full password+TOTP sign-in, as
  ``ssh.forward``; anyone else is refused).  The WebSocket handshake must
  carry the console's own ``Origin`` and the session's CSRF token (``csrf`` query
  value: a browser cannot add headers to a WebSocket); a wrong or missing one is
  refused before anything is opened (``session.refused``, ``csrf_failed``).  The
  grant, the instrument and the recording are the gate's checks.
- ``GET /console/desktop-live/{session_id}`` and its WebSocket ``.../ws``: an
  approver follows a running desktop (read-only), as a terminal is followed:
  ``sessions.follow`` and :func:`~broker.access.permissions.check_session_control`
  (staff of the session's hospital, platform admins); ``recording.viewed``
  (``follow``); a refusal is ``recording.refused``.  The page has the terminate form.
- ``GET /console/desktop-recordings/{session_id}`` the player page and
  ``.../data`` its bytes: ``recordings.read`` (approvers and auditors) and
  :func:`~broker.access.permissions.may_read_recording` for the recording's
  hospital; each read is ``recording.viewed``.  The player feeds the recorded
  server messages to noVNC at the recorded pace (speed ×1, ×2, ×4, ×8; seeking
  replays from the start, fast, to the chosen time).

The engineer's page has a clipboard panel only when the gate says the hospital allows
the clipboard (:meth:`Gate.clipboard_offered`): the instrument's latest copied text
(noVNC's ``clipboard`` event), a button to copy it to the engineer's own clipboard,
and a field whose text is sent to the instrument's clipboard (``clipboardPasteFrom``).
What crosses is still the gate's decision, session by session.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from audit import new_event
from audit.recording import RecordingFileError
from audit.recstore import RecordingStore, check_name
from broker.access.errors import AccessError, NotFound, PermissionDenied, Unavailable
from broker.access.permissions import (
    authorize,
    check_session_control,
    may_read_recording,
    refusal_event,
)
from broker.access.ports import Actor
from broker.console.live import registry_of
from broker.console.web import PREFIX, Session, csrf_for, harden, page, render, services_of

router = APIRouter(prefix=PREFIX, tags=["console"])

ACTION = "desktop.open"  # engineers after a full sign-in, as ssh -L (ssh.forward)
OURS = {
    "desktop.js": "text/javascript; charset=utf-8",
    "desktop.css": "text/css; charset=utf-8",
}
NOVNC_DIR = Path(__file__).resolve().parents[2] / "node_modules" / "@novnc" / "novnc"
_NOVNC_PATH = re.compile(r"(core|vendor)(/[A-Za-z0-9_.-]+){1,4}\.js")
MAX_PLAY_BYTES = 256 * 1024 * 1024
_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")

OpenSession = Annotated[Session, Depends(page(ACTION))]
FollowSession = Annotated[Session, Depends(page("sessions.follow"))]
ReadSession = Annotated[Session, Depends(page("recordings.read"))]


class Browser(Protocol):
    async def receive(self) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    async def notice(self, text: str) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...


class Gate(Protocol):
    """``broker.desktop.session.DesktopGate`` as the console sees it."""

    async def run(
        self,
        browser: Browser,
        *,
        user_id: str,
        username: str,
        instrument: str,
        port: int,
        src: str = "",
        organization: str = "",
    ) -> str: ...

    async def follow(self, session_id: str, viewer: Browser) -> bool: ...

    def clipboard_offered(self, user_id: str, instrument: str, port: int) -> bool: ...

    def export_video(self, data: bytes, out: Path) -> int: ...


def gate_of(app: Any) -> Gate | None:
    getter: Callable[[], Gate | None] | None = getattr(app.state, "desktop_gate", None)
    return getter() if getter is not None else None


def store_of(request: Request) -> RecordingStore:
    store: RecordingStore | None = getattr(request.app.state, "desktop_recordings", None)
    if store is None:
        raise Unavailable("desktop recordings are not available on this broker")
    return store


@router.get("/desktop/{name}")
async def desktop_page(name: str, port: int, request: Request, session: OpenSession) -> Response:
    """The desktop page: noVNC's screen, the session's notices, the connection state,
    the text field, and the clipboard panel when the hospital allows the clipboard (for
    an instrument and port the engineer holds a grant to; else a line saying it is off)."""
    gate = gate_of(request.app)
    if gate is None:
        raise Unavailable("desktop sessions are not available on this broker")
    clipboard = await asyncio.to_thread(gate.clipboard_offered, session.actor.user_id, name, port)
    return render(request, "desktop.html", instrument=name, port=port, clipboard=clipboard)


class _Socket:
    """The engineer's WebSocket for the gate: binary RFB in and out, notices as text."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def receive(self) -> bytes:
        while True:
            try:
                msg = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return b""
            if msg["type"] == "websocket.disconnect":
                return b""
            data = msg.get("bytes")
            if data:
                return bytes(data)

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def notice(self, text: str) -> None:
        await self.ws.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            await self.ws.close(code, reason)


def _origin_ok(ws: WebSocket) -> bool:
    origin = ws.headers.get("origin")
    if not origin:
        return False  # browsers always send one; without it nothing vouches for the page
    settings = getattr(ws.app.state, "settings", None)
    public = urlsplit(getattr(settings, "public_api_url", "") or "")
    own = {f"http://{ws.url.netloc}", f"https://{ws.url.netloc}"}
    if public.scheme and public.netloc:
        own.add(f"{public.scheme}://{public.netloc}")
    return origin in own


def _cookie(ws: WebSocket) -> str:
    for name in ("__Host-hoshu_session", "hoshu_session"):
        if token := ws.cookies.get(name):
            return token
    return ""


async def _ws_caller(
    websocket: WebSocket, action: str, cols: dict[str, Any]
) -> tuple[Actor, Gate] | None:
    """The signed-in caller of a desktop WebSocket, allowed ``action``, with the gate; or
    None after refusing the handshake (the refusal event written, nothing opened)."""
    services = services_of(websocket)  # type: ignore[arg-type]
    ip = websocket.client.host if websocket.client else None
    cols["SrcIpAddr"] = ip
    token = _cookie(websocket)
    try:
        if not token:
            raise PermissionDenied("sign in first", code="signed_out")
        actor = services.auth.authenticate(token, ip)
        cols.update(ActorUsername=actor.username, ActorUserId=actor.user_id)
        if not _origin_ok(websocket):
            raise PermissionDenied("this desktop was opened from another site", code="csrf_failed")
        sent = websocket.query_params.get("csrf", "")
        if not hmac.compare_digest(sent.encode(), csrf_for(token).encode()):
            raise PermissionDenied("the desktop's CSRF token is wrong", code="csrf_failed")
        authorize(actor, action)
        gate = gate_of(websocket.app)
        if gate is None:
            raise Unavailable("desktop sessions are not available on this broker")
        if action == "sessions.follow":
            _followed(websocket, actor, cols)
    except AccessError as exc:
        details = {"kind": "desktop"} if action == ACTION else {}
        await asyncio.to_thread(
            services.ctx.emitter.emit,
            new_event(
                refusal_event(action),
                EventResult="Failure",
                EventResultDetails=exc.code,
                EventMessage=exc.message,
                details=details or None,
                **cols,
            ),
        )
        await websocket.close(code=1008)
        return None
    return actor, gate


@router.websocket("/desktop/{name}/ws")
async def desktop_socket(name: str, port: int, websocket: WebSocket) -> None:
    """The desktop's RFB stream (see the module docstring for who may open it)."""
    cols: dict[str, Any] = {
        "TargetHostname": name,
        "TargetPortNumber": port,
        "NetworkApplicationProtocol": "vnc",
    }
    caller = await _ws_caller(websocket, ACTION, cols)
    if caller is None:
        return
    actor, gate = caller
    await websocket.accept()
    await gate.run(
        _Socket(websocket),
        user_id=actor.user_id,
        username=actor.username,
        instrument=name,
        port=port,
        src=str(cols.get("SrcIpAddr") or ""),
    )


# --- following a running desktop (approvers) ------------------------------------------


def _followed(conn: Any, actor: Actor, cols: dict[str, Any]) -> None:
    """The live desktop named in the path, if ``actor`` may follow it (else raise)."""
    session_id = conn.path_params["session_id"]
    reg = registry_of(conn)
    s = reg.get(session_id) if reg is not None else None
    if reg is None or s is None or s.kind != "desktop":
        raise NotFound(f"no live desktop session {session_id}")
    cols.update(TargetSessionId=session_id, TargetHostname=s.instrument)
    cols["HospitalId"] = s.hospital_id or None
    check_session_control(actor, s.hospital_id, "sessions.follow")


@router.get("/desktop-live/{session_id}")
async def follow_page(session_id: str, request: Request, session: FollowSession) -> Response:
    """An approver's view of a running desktop (read-only), with the terminate form."""
    columns: dict[str, Any] = getattr(request.state, "refusal_columns", {})
    _followed(request, session.actor, columns)
    request.state.refusal_columns = columns
    return render(request, "desktop_follow.html", session_id=session_id)


@router.websocket("/desktop-live/{session_id}/ws")
async def follow_socket(session_id: str, websocket: WebSocket) -> None:
    """The running desktop's screen for an approver (``recording.viewed``, ``follow``)."""
    cols: dict[str, Any] = {"ObjectType": "session", "Object": session_id}
    caller = await _ws_caller(websocket, "sessions.follow", cols)
    if caller is None:
        return
    _actor, gate = caller
    await asyncio.to_thread(
        services_of(websocket).ctx.emitter.emit,  # type: ignore[arg-type]
        new_event(
            "recording.viewed",
            Operation="follow",
            details={"recording": f"{session_id}.rfb"},
            **cols,
        ),
    )
    await websocket.accept()
    if not await gate.follow(session_id, _Socket(websocket)):
        await websocket.close(4404, "the session has ended")


# --- playback ------------------------------------------------------------------------


def _recording(request: Request, session: Session, session_id: str) -> tuple[str, bytes]:
    """The recording of ``session_id`` if the caller may read it (else raise)."""
    if not _SID.fullmatch(session_id):
        raise NotFound("no such recording")
    name = check_name(f"{session_id}.rfb")
    store = store_of(request)
    try:
        head = store.read(name, 0, 4096)
    except RecordingFileError as exc:
        raise NotFound("no such recording") from exc
    hospital = _header_field(head, "hospital_id")
    columns: dict[str, Any] = getattr(request.state, "refusal_columns", {})
    columns.update({"TargetSessionId": session_id, "ObjectType": "recording", "Object": name})
    request.state.refusal_columns = columns
    if not may_read_recording(session.actor, hospital or None):
        raise PermissionDenied("this recording belongs to another hospital")
    return hospital, store.read(name, 0, MAX_PLAY_BYTES)


def _header_field(head: bytes, key: str) -> str:
    try:
        line = head.split(b"\n", 2)[1]
        value = json.loads(line).get(key, "")
    except (IndexError, ValueError):
        return ""
    return value if isinstance(value, str) else ""


@router.get("/desktop-recordings/{session_id}")
async def player(session_id: str, request: Request, session: ReadSession) -> Response:
    """The player page of one desktop recording."""
    await asyncio.to_thread(_recording, request, session, session_id)
    return render(request, "desktop_player.html", session_id=session_id)


@router.get("/desktop-recordings/{session_id}/data")
async def recording_data(session_id: str, request: Request, session: ReadSession) -> Response:
    """The recording's bytes (``recording.viewed``)."""
    hospital, data = await asyncio.to_thread(_recording, request, session, session_id)
    await asyncio.to_thread(
        services_of(request).ctx.emitter.emit,
        new_event(
            "recording.viewed",
            Operation="replay",
            details={"recording": f"{session_id}.rfb"},
            ActorUsername=session.actor.username,
            ActorUserId=session.actor.user_id,
            TargetSessionId=session_id,
            HospitalId=hospital or None,
            ObjectType="recording",
            Object=f"{session_id}.rfb",
        ),
    )
    return harden(Response(data, media_type="application/octet-stream"))


def _video(request: Request, session: Session, session_id: str) -> tuple[str, bytes]:
    hospital, data = _recording(request, session, session_id)
    gate = gate_of(request.app)
    if gate is None:
        raise Unavailable("desktop sessions are not available on this broker")
    with tempfile.TemporaryDirectory(prefix="hoshu-video-") as tmp:
        out = Path(tmp) / f"{session_id}.mp4"
        gate.export_video(data, out)
        return hospital, out.read_bytes()


@router.get("/desktop-recordings/{session_id}/video")
async def recording_video(session_id: str, request: Request, session: ReadSession) -> Response:
    """The recording as an MP4 video (H.264, through ffmpeg) for a report; ``recording.viewed``
    (``export``)."""
    hospital, video = await asyncio.to_thread(_video, request, session, session_id)
    await asyncio.to_thread(
        services_of(request).ctx.emitter.emit,
        new_event(
            "recording.viewed",
            Operation="export",
            details={"recording": f"{session_id}.rfb"},
            ActorUsername=session.actor.username,
            ActorUserId=session.actor.user_id,
            TargetSessionId=session_id,
            HospitalId=hospital or None,
            ObjectType="recording",
            Object=f"{session_id}.rfb",
        ),
    )
    headers = {"Content-Disposition": f'attachment; filename="{session_id}.mp4"'}
    return harden(Response(video, media_type="video/mp4", headers=headers))


# --- files ---------------------------------------------------------------------------


@router.get("/static/desktop/{name}")
def our_static(name: str) -> Response:
    """The desktop pages' own script and style sheet."""
    if name not in OURS:
        raise NotFound("no such file")
    path = Path(__file__).parent / "static" / name
    return harden(Response(path.read_bytes(), media_type=OURS[name]), store=True)


@router.get("/static/novnc/{path:path}")
def novnc_static(path: str) -> Response:
    """noVNC's ES modules, from the pinned npm package (``core/`` and ``vendor/`` only)."""
    if not _NOVNC_PATH.fullmatch(path) or ".." in path:
        raise NotFound("no such file")
    try:
        data = (NOVNC_DIR / path).read_bytes()
    except OSError as exc:
        raise NotFound("no such file") from exc
    response = Response(
        data,
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=86400"},
    )
    return harden(response, store=True)
