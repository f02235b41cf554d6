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

The page has a drive panel only for an RDP instrument whose hospital allows the drive
(:meth:`Gate.drive_offered`; a VNC desktop has no drive and shows nothing of it, an RDP
one with the drive off a line saying so).  Its routes are the permission table's
``desktop.drive`` (engineers after a full sign-in), and then only for the caller's own
live desktop session on that instrument and port (:meth:`Gate.drive_for`; anyone
else's, or one that ended, is ``file.refused`` ``drive_not_live``, 404):

- ``GET /console/desktop/{name}/drive?port=N`` the drive's files (name, size, time);
- ``POST`` the same path: a file put on the drive, the body the file's bytes as
  ``application/octet-stream`` (at most :data:`DRIVE_UPLOAD_MAX`, streamed, 413 past
  it), its name percent-encoded UTF-8 in ``X-Hoshu-File-Name``, the CSRF token in
  ``X-Hoshu-CSRF`` (checked as the forms' is, and the Origin too).  The drive stages it,
  passes it to the scan hook, and logs it (``file.transferred`` ``Inbound``);
- ``GET .../drive/file?port=N&name=…`` one file's bytes, always an attachment
  (``file.transferred`` ``Outbound``, operation ``download``, ``to`` ``engineer``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import stat
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from audit import new_event
from audit.recording import RecordingFileError
from audit.recstore import RecordingStore, check_name
from broker.access.errors import (
    AccessError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from broker.access.permissions import (
    authorize,
    check_session_control,
    may_read_recording,
    refusal_event,
)
from broker.access.ports import Actor
from broker.console.live import registry_of
from broker.console.web import (
    PREFIX,
    Session,
    csrf_for,
    harden,
    page,
    raw_body,
    render,
    services_of,
)

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
DRIVE_ACTION = "desktop.drive"
DRIVE_UPLOAD_MAX = 64 * 1024 * 1024  # one file put on a desktop's drive from the page
DRIVE_UPLOAD_PATH = PREFIX + r"/desktop/[^/]+/drive"  # BodyLimit leaves its body to us
DRIVE_UPLOAD_TIMEOUT_S = 600.0  # the whole body, at ~110 kB/s at worst
NAME_HEADER = "x-hoshu-file-name"
CHUNK = 256 * 1024

OpenSession = Annotated[Session, Depends(page(ACTION))]
FollowSession = Annotated[Session, Depends(page("sessions.follow"))]
ReadSession = Annotated[Session, Depends(page("recordings.read"))]
DriveSession = Annotated[Session, Depends(page(DRIVE_ACTION))]


class Browser(Protocol):
    async def receive(self) -> bytes: ...
    async def send(self, data: bytes) -> None: ...
    async def notice(self, text: str) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...


class Drive(Protocol):
    """``broker.desktop.rdpdrive.DriveDir`` as the console sees it."""

    @property
    def root(self) -> Path: ...

    def files(self) -> list[tuple[str, int]]: ...

    def clean_name(self, raw: str) -> str: ...

    def file_path(self, rel: str) -> Path: ...

    async def put(self, name: str, data: bytes) -> bool: ...


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

    def drive_offered(self, user_id: str, instrument: str, port: int) -> bool: ...

    def is_rdp(self, instrument: str) -> bool: ...

    def drive_for(
        self, user_id: str, instrument: str, port: int
    ) -> tuple[Drive | None, dict[str, Any]] | None: ...

    def emit(self, type_: str, **cols: Any) -> None: ...

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
    who = session.actor.user_id
    clipboard = await asyncio.to_thread(gate.clipboard_offered, who, name, port)
    drive = await asyncio.to_thread(gate.drive_offered, who, name, port)
    rdp = drive or await asyncio.to_thread(gate.is_rdp, name)
    return render(
        request,
        "desktop.html",
        instrument=name,
        port=port,
        clipboard=clipboard,
        drive=drive,
        rdp=rdp,
        drive_max_mib=DRIVE_UPLOAD_MAX >> 20,
    )


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


# --- the RDP drive of the engineer's own live desktop ----------------------------------


def _drive_refused(
    gate: Gate, cols: dict[str, Any], reason: str, message: str, op: str, name: str = ""
) -> None:
    gate.emit(
        "file.refused",
        EventResult="Failure",
        EventResultDetails=reason,
        EventMessage=message,
        details={"tool": "drive", "operation": op, "via": "console"},
        **dict(cols, TargetFileName=name[:80] or None),
    )


async def _own_drive(
    request: Request, session: Session, name: str, port: int, op: str
) -> tuple[Gate, Drive, dict[str, Any]]:
    """The caller's own live desktop's drive on ``name`` and ``port`` (else refused)."""
    gate = gate_of(request.app)
    if gate is None:
        raise Unavailable("desktop sessions are not available on this broker")
    actor = session.actor
    found = await asyncio.to_thread(gate.drive_for, actor.user_id, name, port)
    if found is None:
        cols = {
            "ActorUsername": actor.username,
            "ActorUserId": actor.user_id,
            "TargetHostname": name,
            "TargetPortNumber": port,
            "SrcIpAddr": request.client.host if request.client else None,
        }
        msg = f"no live desktop of yours on {name} port {port} has a drive"
        await asyncio.to_thread(_drive_refused, gate, cols, "drive_not_live", msg, op)
        raise NotFound(msg, code="drive_not_live")
    drive, cols = found
    if drive is None:  # the error path logs it (file.refused, as the table's refusals)
        keep = ("TargetHostname", "TargetPortNumber", "TargetSessionId", "HospitalId")
        request.state.refusal_columns = {k: cols[k] for k in keep if cols.get(k)}
        raise PermissionDenied(f"the drive is off for {name}", code="drive_off")
    return gate, drive, cols


def _listing(drive: Drive) -> list[dict[str, Any]]:
    out = []
    for rel, size in drive.files():
        try:
            mtime = os.lstat(drive.root / rel).st_mtime
        except OSError:
            continue  # gone since it was listed
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
        out.append({"name": rel, "size": size, "time": at})
    return out


@router.get("/desktop/{name}/drive")
async def drive_files(name: str, port: int, request: Request, session: DriveSession) -> Response:
    """The files on the caller's own live desktop's drive, as JSON."""
    _gate, drive, _cols = await _own_drive(request, session, name, port, "list")
    files = await asyncio.to_thread(_listing, drive)
    return harden(JSONResponse({"files": files}))


async def _read_upload(request: Request) -> bytes | None:
    """The body, at most :data:`DRIVE_UPLOAD_MAX` bytes within the deadline (None: too
    large).  A body that does not arrive in time raises TimeoutError."""
    body = bytearray()
    async with asyncio.timeout(DRIVE_UPLOAD_TIMEOUT_S):
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > DRIVE_UPLOAD_MAX:
                return None
    return bytes(body)


@router.post("/desktop/{name}/drive")
async def drive_upload(name: str, port: int, request: Request, session: DriveSession) -> Response:
    """A file from the engineer's computer put on the drive (scanned first)."""
    gate, drive, cols = await _own_drive(request, session, name, port, "upload")
    raw = request.headers.get(NAME_HEADER, "")
    try:
        if not raw_body(request):
            raise ValueError("the file must be sent as application/octet-stream")
        file_name = drive.clean_name(unquote(raw, errors="strict"))
    except ValueError as exc:  # UnicodeDecodeError too
        msg = "the file's name is not UTF-8" if isinstance(exc, UnicodeError) else str(exc)
        await asyncio.to_thread(_drive_refused, gate, cols, "drive_bad_name", msg, "upload", raw)
        return harden(JSONResponse(_error("drive_bad_name", msg), status_code=422))
    try:
        data = await _read_upload(request)
    except TimeoutError:
        msg = "the file did not arrive in time"
        await asyncio.to_thread(
            _drive_refused, gate, cols, "request_timeout", msg, "upload", file_name
        )
        return harden(JSONResponse(_error("request_timeout", msg), status_code=408))
    if data is None:
        msg = f"a file put on the drive from this page is at most {DRIVE_UPLOAD_MAX >> 20} MiB"
        await asyncio.to_thread(
            _drive_refused, gate, cols, "drive_too_large", msg, "upload", file_name
        )
        return harden(JSONResponse(_error("body_too_large", msg), status_code=413))
    if not await drive.put(file_name, data):  # its own event says why (full, scan, …)
        msg = f"{file_name} was not put on the drive (the drive is full, or the scan rejected it)"
        return harden(JSONResponse(_error("drive_refused", msg), status_code=409))
    return harden(JSONResponse({"name": file_name, "size": len(data)}))


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _open_file(drive: Drive, rel: str) -> tuple[int, int, str]:
    """An open descriptor of the drive's regular file ``rel``, its size and SHA-256."""
    path = drive.file_path(rel)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{rel[:80]!r} is not a file")
        sha = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, CHUNK):
            sha.update(chunk)
            size += len(chunk)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd, size, sha.hexdigest()


async def _stream(fd: int, size: int) -> AsyncIterator[bytes]:
    try:
        left = size
        while left > 0:
            chunk = await asyncio.to_thread(os.read, fd, min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


@router.get("/desktop/{name}/drive/file")
async def drive_download(
    name: str, port: int, file: str, request: Request, session: DriveSession
) -> Response:
    """One file of the drive for the engineer's computer, always as an attachment."""
    gate, drive, cols = await _own_drive(request, session, name, port, "download")
    try:
        fd, size, sha = await asyncio.to_thread(_open_file, drive, file)
    except (ValueError, OSError) as exc:
        bad = isinstance(exc, ValueError)
        msg = str(exc) if bad else f"no file {file[:80]!r} on the drive"
        reason = "drive_bad_name" if bad else "drive_no_file"
        await asyncio.to_thread(_drive_refused, gate, cols, reason, msg, "download", file)
        raise NotFound(msg, code=reason) from exc
    shown = unicodedata.normalize("NFC", file)
    leaf = shown.rsplit("/", 1)[-1]
    await asyncio.to_thread(
        gate.emit,
        "file.transferred",
        details={"tool": "drive", "operation": "download", "to": "engineer", "via": "console"},
        **dict(
            cols,
            NetworkDirection="Outbound",
            TargetFileName=shown,
            TargetFileSize=size,
            TargetFileSHA256=sha,
        ),
    )
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", leaf)[:80] or "file"
    disposition = f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(leaf)}"
    headers = {"Content-Disposition": disposition, "Content-Length": str(size)}
    response = StreamingResponse(
        _stream(fd, size), media_type="application/octet-stream", headers=headers
    )
    return harden(response)


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
