"""Desktop sessions: open inside a grant, relay the RFB stream, record it, end it.

:class:`DesktopGate` is what the console's desktop WebSocket calls
(:mod:`broker.console.desktop`, which has already asked the permission table for
``desktop.open``).  :meth:`DesktopGate.run` then, in this order, and denies at the
first that fails (``session.refused`` naming the reason; the browser's socket is
closed with the message; nothing stays open):

1. the instrument exists, is a desktop (inventory protocol ``vnc`` or ``rdp``) and
   the port is on its list;
2. an active grant names this engineer, that instrument and that port (the same
   question as ``ssh -L``: :meth:`~broker.access.door.AccessPolicy.find_grant`);
3. the broker reaches the port through the hospital's gateway
   (:meth:`~broker.tunnel.connector.InstrumentConnector.open_tcp`) and logs in as
   the VNC client with the stored credential (:func:`~broker.desktop.rfb.client_handshake`),
   or as the RDP client with the stored user and password over TLS, the certificate
   pinned, and waits until the instrument confirms the login (a wrong stored
   password shows the server's own login screen, which is refused as
   ``wrong_credential``, not recorded: :mod:`broker.desktop.rdpclient`; the screen is
   then served to the browser as RFB by :mod:`broker.desktop.rdpbridge`);
4. the recording is created (recorded or refused).

The session is then a :class:`~broker.live.sessions.LiveSession` (kind
``desktop``): revocation, expiry and an approver's terminate end it within the
watcher's interval, warnings reach the page as WebSocket text messages, and a
recording that can no longer be written ends it.  Every server message is
recorded before it is sent to the browser (an extended clipboard message only as
the ``X`` record of its text, if it carries any).  Clipboard messages are dropped
(``file.refused``, ``clipboard_off``) unless the hospital allows them; allowed
ones are ``file.transferred`` with size and SHA-256.  Japanese text crosses as
UTF-8 over RFB's Extended Clipboard (:mod:`broker.desktop.extclip`), offered to
the instrument only when the clipboard is allowed (:meth:`_Relay._extended`).
For RDP the switch is read before the login: the clipboard channel is joined only
when it is on (:mod:`broker.desktop.rdpclip`), and a clipboard PDU of the
instrument that is refused there (malformed, too large, not answered in time) is
``file.refused`` naming why.  The RDP drive is read the same way: only where the
hospital allows it (``drive_allowed``) is the drive channel joined, backed by a
folder of the session's own under ``drives_dir`` that is removed when it ends
(:mod:`broker.desktop.rdpdrive`, :mod:`broker.desktop.drivegate`: each file logged
and recorded, files going in scanned first).  A browser that stops reading for
:data:`SEND_TIMEOUT_S` ends the session (``browser_stalled``).
``session.ended`` carries the recording's size and SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

from audit.emitter import Emitter
from audit.recstore import RecordingStore
from broker.access.door import AccessPolicy
from broker.access.errors import SessionError, Unavailable
from broker.desktop import extclip
from broker.desktop.drivegate import follow as follow_drive
from broker.desktop.drivegate import scan_file
from broker.desktop.extclip import CAPS, PROVIDE, REQUEST
from broker.desktop.keyboards import LAYOUTS, Layout
from broker.desktop.rdpbridge import RdpBridge, server_init
from broker.desktop.rdpclient import (
    LOGON_TIMEOUT_S,
    RdpError,
    RdpSession,
    certificate_fingerprint,
)
from broker.desktop.rdpclient import connect as rdp_connect
from broker.desktop.rdpclip import ClipRefused
from broker.desktop.rdpdrive import DriveDir
from broker.desktop.recording import KEYFRAME_EVERY_S, DesktopRecording, read_records
from broker.desktop.rfb import (
    C_CUT,
    C_ENCODINGS,
    C_PIXEL_FORMAT,
    C_UPDATE_REQUEST,
    EXT_CLIPBOARD,
    HANDSHAKE_TIMEOUT_S,
    S_CUT,
    ClientFramer,
    DesktopError,
    Message,
    Screen,
    ServerFramer,
    ServerInit,
    Stream,
    client_handshake,
    serve_handshake,
)
from broker.desktop.video import ExportError, export_mp4
from broker.live.errors import RecordingError
from broker.live.recorder import RecordingSink
from broker.live.sessions import LiveSession, SessionRegistry
from broker.tunnel.connector import ByteWriter, InstrumentConnector, Origin

log = logging.getLogger(__name__)
SEND_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 15.0
RDP_LOGIN_TIMEOUT_S = 30.0
DESKTOP_PROTOCOLS = frozenset({"vnc", "rdp"})
RDP_SIZE = (1024, 768)  # the RDP desktop asked for (the browser scales it to its window)
CLOSE_ENDED = 4000  # WebSocket close code of an ended session (the reason says why)
CLOSE_REFUSED = 4403


class Browser(Protocol):
    """The engineer's WebSocket as the gate sees it (binary RFB; text: notices)."""

    async def receive(self) -> bytes:
        """The next binary message; ``b""`` once the browser has gone."""
        ...

    async def send(self, data: bytes) -> None: ...

    async def notice(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Who:
    user_id: str
    username: str
    organization: str
    src: str


class Refused(SessionError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DesktopGate:
    """Opens and runs desktop sessions (one broker process; sessions in ``registry``)."""

    def __init__(
        self,
        policy: AccessPolicy,
        connector: InstrumentConnector,
        registry: SessionRegistry,
        emitter: Emitter,
        store: RecordingStore,
        clock: Callable[[], datetime],
        ids: Callable[[], str],
        *,
        max_bytes: int = 512 * 1024 * 1024,
        clipboard_allowed: Callable[[str], bool] = lambda _hospital: False,
        drive_allowed: Callable[[str], bool] = lambda _hospital: False,
        drives_dir: Path | None = None,
        scan_command: tuple[str, ...] = (),
        scan_timeout_s: float = 120.0,
        send_timeout_s: float = SEND_TIMEOUT_S,
        pin_certificate: Callable[[str, str], str | None] | None = None,
        rdp_size: tuple[int, int] = RDP_SIZE,
        rdp_logon_timeout_s: float = LOGON_TIMEOUT_S,
    ) -> None:
        self.policy = policy
        self.connector = connector
        self.registry = registry
        self.emitter = emitter
        self.store = store
        self.sink_for: Callable[[str], RecordingSink] = store.create
        self._relays: dict[str, _Relay | _RdpRelay] = {}
        self.clock = clock
        self.ids = ids
        self.max_bytes = max_bytes
        self.clipboard_allowed = clipboard_allowed
        # RDP: the broker's drive (rdpdr) where the hospital allows it; each session's
        # in drives_dir/<session id>, removed when it ends (no drives_dir: never offered)
        self.drive_allowed = drive_allowed
        self.drives_dir = drives_dir
        self.scan_command = scan_command
        self.scan_timeout_s = scan_timeout_s
        self.send_timeout_s = send_timeout_s
        # RDP: (instrument, TLS certificate fingerprint) -> None, or why it is refused
        self.pin_certificate = pin_certificate
        self.rdp_size = rdp_size
        self.rdp_logon_timeout_s = rdp_logon_timeout_s

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
    ) -> str:
        """Run one desktop session of the engineer ``username`` to its end; its id
        (a refused session has one too, in its ``session.refused``)."""
        sid = self.ids()
        who = _Who(user_id, username, organization, src)
        cols: dict[str, Any] = {
            "ActorUsername": who.username,
            "ActorUserId": who.user_id,
            "ActorUserType": "engineer",
            "ActorOrganization": who.organization or None,
            "SrcIpAddr": who.src or None,
            "TargetHostname": instrument,
            "TargetPortNumber": port,
            "TargetSessionId": sid,
            "NetworkApplicationProtocol": "vnc",
        }
        writer: ByteWriter | None = None
        rdp: RdpSession | None = None
        clipboard = False
        drive: DriveDir | None = None
        try:
            target = await asyncio.to_thread(self.policy.instrument, instrument)
            if target is None:
                raise Refused("no_grant", f"no instrument {instrument} you may reach")
            cols["HospitalId"] = target.hospital_id or None
            cols["GatewayId"] = target.gateway_id or None
            cols["NetworkApplicationProtocol"] = target.protocol
            if target.protocol not in DESKTOP_PROTOCOLS or port not in target.ports:
                raise Refused("not_desktop", f"{instrument} port {port} is not a desktop")
            grant = await asyncio.to_thread(
                self.policy.find_grant, who.user_id, instrument, port, self.clock()
            )
            if grant is None:
                raise Refused("no_grant", f"no active grant names {instrument} port {port} for you")
            cols["GrantId"] = grant.grant_id
            origin = Origin(sid, who.username)
            reader, conn = await asyncio.wait_for(
                self.connector.open_tcp(target, port, origin), CONNECT_TIMEOUT_S
            )
            writer = conn
            upstream = Stream(reader.read)
            if target.protocol == "rdp":
                # read before the login: the clipboard channel is joined only if allowed
                clipboard = await asyncio.to_thread(self.clipboard_allowed, target.hospital_id)
                drive = await self._drive(sid, target.hospital_id)
                rdp = await asyncio.wait_for(
                    self._rdp_login(target, reader, conn, clipboard=clipboard, drive=drive),
                    RDP_LOGIN_TIMEOUT_S,
                )
                init = server_init(rdp, instrument)
            else:
                init = await asyncio.wait_for(
                    client_handshake(upstream, conn.write, target.credential, instrument),
                    HANDSHAKE_TIMEOUT_S,
                )
            header = {
                "version": 1,
                "session": sid,
                "instrument": instrument,
                "port": port,
                "protocol": target.protocol,  # what the instrument spoke (the file is RFB)
                "hospital_id": target.hospital_id,
                "engineer": who.username,
                "started": self.clock().isoformat(),
                "input": target.record_input,
                "width": init.width,
                "height": init.height,
            }
            rec = await asyncio.to_thread(
                DesktopRecording.open,
                f"{sid}.rfb",
                self.sink_for,
                header,
                max_bytes=self.max_bytes,
            )
        except (SessionError, TimeoutError) as exc:
            if rdp is not None:
                await rdp.close()
            if drive is not None:
                await asyncio.to_thread(drive.remove)
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
            reason = getattr(exc, "reason", "instrument_timeout")
            msg = str(exc) or f"{instrument} port {port} did not answer in time"
            self.emit(
                "session.refused",
                EventResult="Failure",
                EventResultDetails=reason,
                EventMessage=msg,
                details={"kind": "desktop"},
                **cols,
            )
            await browser.close(CLOSE_REFUSED, _short(msg))
            return sid
        downstream = Stream(lambda _n: browser.receive())
        live = LiveSession(
            session_id=sid,
            kind="desktop",
            user_id=who.user_id,
            username=who.username,
            instrument=instrument,
            hospital_id=target.hospital_id,
            grant_id=grant.grant_id,
            port=port,
            started=self.clock(),
            src=who.src,
            grant_ends=grant.ends,
            recording=rec.name,
            recorder=rec,
        )
        relay: _Relay | _RdpRelay
        if rdp is not None:
            keyboard = LAYOUTS[target.keyboard_layout]  # a known one: the RDP login took it
            args = (self, live, cols, rec, browser, rdp, target.record_input, clipboard)
            relay = _RdpRelay(*args, keyboard=keyboard, drive=drive)
            relay.bridge.reopen = functools.partial(
                self._rdp_reopen, target, port, origin, clipboard, drive
            )
        else:
            relay = _Relay(self, live, cols, rec, browser, conn, target.record_input)
        live.on_terminate = relay.stop
        live.on_warning = relay.warn
        self._relays[sid] = relay
        self.emit(
            "session.started",
            EventMessage=f"desktop on {instrument}",
            details={"kind": "desktop", "recording": rec.name},
            **cols,
        )
        self.registry.add(live)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reason = "closed"
        message = ""
        try:
            rec.record(b"S", init.encode())
            await asyncio.wait_for(
                serve_handshake(downstream, browser.send, init), HANDSHAKE_TIMEOUT_S
            )
            reason, message = await relay.run(upstream, downstream, Screen.of(init))
        except (SessionError, TimeoutError, EOFError) as exc:
            reason = getattr(exc, "reason", "browser_closed")
            message = str(exc)
        finally:
            self._relays.pop(sid, None)
            self.registry.remove(sid)
            if isinstance(relay, _RdpRelay):
                await relay.bridge.rdp.close()  # the one open now (a resize replaces it)
            elif rdp is not None:
                await rdp.close()
            with contextlib.suppress(Exception):
                conn.close()
            if drive is not None:
                await asyncio.to_thread(drive.remove)  # its files go with the session
        try:
            summary = await asyncio.to_thread(rec.close)
        except RecordingError as exc:
            reason, message = exc.reason, str(exc)
            summary = rec.close()
        if live.ended_reason is not None:
            reason = live.ended_reason
        self.registry.emit(
            "session.ended",
            EventResultDetails=reason,
            EventResult="Success" if reason in ("closed", "browser_closed") else "Partial",
            NetworkDuration=int((loop.time() - started) * 1000),
            RecordingSize=summary.size,
            RecordingSHA256=summary.sha256,
            details={"kind": "desktop", "recording": summary.name},
            **cols,
        )
        text = message or f"session ended: {reason.replace('_', ' ')}"
        with contextlib.suppress(Exception):
            await browser.close(CLOSE_ENDED, _short(text))
        return sid

    def emit(self, type_: str, **cols: Any) -> None:
        self.registry.emit(type_, **cols)

    def clipboard_offered(self, user_id: str, instrument: str, port: int) -> bool:
        """Whether the engineer's desktop page shows its clipboard panel: ``instrument``
        exists, an active grant names this engineer, it and ``port``, and its hospital
        allows the clipboard.  Anything else, or a failure to tell, is False.  This is
        only what the page offers: each session reads the switch again when it opens,
        and the relay alone decides what crosses."""
        try:
            target = self.policy.instrument(instrument)
            if target is None or port not in target.ports:
                return False
            if self.policy.find_grant(user_id, instrument, port, self.clock()) is None:
                return False
            return bool(self.clipboard_allowed(target.hospital_id))
        except Exception:  # the page then says the clipboard is off (fail closed)
            log.warning("could not tell whether %s allows the clipboard", instrument)
            return False

    def drive_offered(self, user_id: str, instrument: str, port: int) -> bool:
        """Whether the engineer's desktop page shows its drive panel: as
        :meth:`clipboard_offered`, for an RDP instrument whose hospital allows the drive
        on a broker that keeps drives.  Anything else, or a failure to tell, is False."""
        if self.drives_dir is None:
            return False
        try:
            target = self.policy.instrument(instrument)
            if target is None or target.protocol != "rdp" or port not in target.ports:
                return False
            if self.policy.find_grant(user_id, instrument, port, self.clock()) is None:
                return False
            return bool(self.drive_allowed(target.hospital_id))
        except Exception:  # the page then says the drive is off (fail closed)
            log.warning("could not tell whether %s allows the drive", instrument)
            return False

    def is_rdp(self, instrument: str) -> bool:
        """Whether ``instrument`` is an RDP one (False: VNC, unknown, or not told)."""
        try:
            target = self.policy.instrument(instrument)
        except Exception:
            return False
        return target is not None and target.protocol == "rdp"

    def drive_for(
        self, user_id: str, instrument: str, port: int
    ) -> tuple[DriveDir | None, dict[str, Any]] | None:
        """The drive of ``user_id``'s own live desktop session on ``instrument`` and
        ``port`` (the newest, if several), with the session's audit columns: None when
        that person has no such session (someone else's is never theirs); the drive
        None when the session has none (VNC, or the hospital keeps the drive off)."""
        for relay in reversed(list(self._relays.values())):
            live = relay.live
            if (live.user_id, live.instrument, live.port) != (user_id, instrument, port):
                continue
            if relay.stopped.done():
                continue
            drive = relay.drive if isinstance(relay, _RdpRelay) else None
            return drive, dict(relay.cols)
        return None

    def sweep_drives(self) -> list[str]:
        """Remove the drive folders no session of this gate holds: those a broker that
        was killed left behind (``drives_dir`` is in the replica's own data directory,
        so a folder there that is not one of this gate's live sessions is nobody's).
        Run at start, before any session; returns the session ids removed."""
        if self.drives_dir is None or not self.drives_dir.is_dir():
            return []
        removed = []
        for entry in sorted(self.drives_dir.iterdir()):
            if entry.name in self._relays:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        if removed:
            log.info("removed %d drive folders of sessions that are not live", len(removed))
        return removed

    async def _drive(self, sid: str, hospital_id: str) -> DriveDir | None:
        """The session's drive if the hospital allows it (read once, before the login),
        else None: the drive channel is then not offered."""
        if self.drives_dir is None:
            return None
        if not await asyncio.to_thread(self.drive_allowed, hospital_id):
            return None
        argv, timeout_s = self.scan_command, self.scan_timeout_s

        async def scan(path: Path) -> bool:
            return await scan_file(argv, timeout_s, path)

        return await asyncio.to_thread(DriveDir, self.drives_dir / sid, scan=scan)

    def drive_of(self, session_id: str) -> DriveDir | None:
        """The drive of the running desktop ``session_id`` (None: none, or no drive)."""
        relay = self._relays.get(session_id)
        return relay.drive if isinstance(relay, _RdpRelay) else None

    async def _rdp_reopen(
        self,
        target: Any,
        port: int,
        origin: Origin,
        clipboard: bool,
        drive: DriveDir | None,
        w: int,
        h: int,
    ) -> RdpSession:
        """A second RDP session of the same instrument at ``w`` x ``h`` (a resize): the
        same tunnel, certificate pin and login checks as the first, and the clipboard
        and drive channels as the first had them (the same drive)."""
        reader, conn = await asyncio.wait_for(
            self.connector.open_tcp(target, port, origin), CONNECT_TIMEOUT_S
        )
        try:
            return await asyncio.wait_for(
                self._rdp_login(target, reader, conn, (w, h), clipboard=clipboard, drive=drive),
                RDP_LOGIN_TIMEOUT_S,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise

    async def _rdp_login(
        self,
        target: Any,
        reader: Any,
        conn: ByteWriter,
        size: tuple[int, int] | None = None,
        *,
        clipboard: bool = False,
        drive: DriveDir | None = None,
    ) -> RdpSession:
        """Log in to an RDP instrument with the stored password (TLS; its certificate
        pinned like an SSH host key: the first one seen is kept, a changed one is
        refused until the hospital accepts it)."""
        pin = self.pin_certificate
        if pin is None:
            raise Refused("tls_unpinned", "RDP desktops are not enabled on this broker")
        if not target.credential or target.credential_is_key or not target.username:
            raise Refused("no_credential", f"{target.name} has no stored RDP user and password")

        async def check(der: bytes) -> None:
            why = await asyncio.to_thread(pin, target.name, certificate_fingerprint(der))
            if why is not None:
                raise RdpError("certificate_changed", why)

        domain, _, user = target.username.rpartition("\\")
        return await rdp_connect(
            reader,
            cast(Any, conn),
            username=user,
            password=target.credential,
            domain=domain,
            width=(size or self.rdp_size)[0],
            height=(size or self.rdp_size)[1],
            check_certificate=check,
            keyboard_layout=target.keyboard_layout,
            logon_timeout_s=self.rdp_logon_timeout_s,
            clipboard=clipboard,
            drive=drive,
        )

    async def follow(self, session_id: str, viewer: Browser) -> bool:
        """Show the running desktop ``session_id`` to ``viewer`` (read-only) until it ends;
        False if no such desktop runs here.

        The viewer gets what the engineer got: the recording so far (flushed, then read
        back from the store: the Zlib and ZRLE streams need every byte before), then each
        new server message.  Its own messages are read and dropped (it cannot type).  A
        viewer that falls behind is dropped (the session goes on)."""
        relay = self._relays.get(session_id)
        if relay is None:
            return False
        q: asyncio.Queue[bytes | None] = asyncio.Queue()
        relay.live.followers.add(q)  # first: nothing after the flush is missed
        try:
            relay.rec.flush()
            size = relay.rec.size
            data = await asyncio.to_thread(self._stored, relay.rec.name, size)
            _header, records = read_records(data)
            server = [d for _ms, kind, d in records if kind == b"S"]
            stream = Stream(lambda _n: viewer.receive())
            init = ServerInit.decode(server[0])
            await asyncio.wait_for(serve_handshake(stream, viewer.send, init), HANDSHAKE_TIMEOUT_S)
            drain = asyncio.ensure_future(_drop_all(viewer))
            try:
                for message in server[1:]:
                    await asyncio.wait_for(viewer.send(message), self.send_timeout_s)
                while (chunk := await q.get()) is not None:
                    await asyncio.wait_for(viewer.send(chunk), self.send_timeout_s)
            finally:
                drain.cancel()
        except (SessionError, TimeoutError, EOFError, ValueError, IndexError) as exc:
            log.info("follower of %s left: %s", session_id, exc)
        finally:
            relay.live.followers.discard(q)
        with contextlib.suppress(Exception):
            await viewer.close(CLOSE_ENDED, "session ended")
        return True

    def export_video(self, data: bytes, out: Path) -> int:
        """Write a desktop recording as an MP4 video (:mod:`broker.desktop.video`); its
        frame count.  Raises :class:`~broker.access.errors.Unavailable` if it cannot."""
        try:
            return export_mp4(data, out)
        except ExportError as exc:
            raise Unavailable(f"the recording cannot be exported: {exc}") from exc

    def _stored(self, name: str, size: int) -> bytes:
        """The first ``size`` bytes of a recording (a store appending in the background
        is waited for, at most 5 s)."""
        for _ in range(50):
            stat = self.store.stat(name)
            if stat is not None and stat.size >= size:
                break
            time.sleep(0.1)
        return self.store.read(name, 0, size)


async def _until_one_ends(
    stopped: asyncio.Future[str], workers: tuple[asyncio.Future[Any], ...], session_id: str
) -> tuple[str, str]:
    """Run a relay's ``workers`` until one ends or ``stopped`` is set; stop the rest.
    Returns why (the end reason) and what the engineer is told (may be empty)."""
    tasks: set[asyncio.Future[Any]] = {*workers, stopped}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await _stop_all(workers)
    if stopped in done:
        why = stopped.result()
        return why, f"session ended: {why.replace('_', ' ')}"
    first = next(iter(done))
    exc = first.exception()
    if exc is None:
        return str(first.result()), ""
    if isinstance(exc, SessionError):
        return exc.reason, str(exc)
    if isinstance(exc, TimeoutError):
        return "browser_stalled", "session ended: the browser stopped reading"
    if isinstance(exc, EOFError | OSError):
        return "closed", ""
    log.error("desktop session %s failed: %r", session_id, exc)
    return "desktop_error", "session ended: internal error"


async def _stop_all(tasks: tuple[asyncio.Future[Any], ...]) -> None:
    """Cancel ``tasks`` and wait until each has stopped (a cancellation that a finishing
    ``wait_for`` swallowed is repeated), so none writes to the recording after it closes."""
    while pending := [t for t in tasks if not t.done()]:
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.1)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # retrieved: the relay has read the outcome it needs


def _short(text: str) -> str:
    """A WebSocket close reason holds at most 123 bytes."""
    data = text.encode("utf-8")[:120]
    return data.decode("utf-8", "ignore")


async def _drop_all(viewer: Browser) -> None:
    """Read and forget a viewer's messages (update requests: it cannot type)."""
    while await viewer.receive():
        pass


class _Relay:
    """Both directions of one running desktop session."""

    def __init__(
        self,
        gate: DesktopGate,
        live: LiveSession,
        cols: dict[str, Any],
        rec: DesktopRecording,
        browser: Browser,
        writer: ByteWriter,
        record_input: bool,
        clipboard: bool | None = None,
    ) -> None:
        self.gate = gate
        self.live = live
        self.cols = cols
        self.rec = rec
        self.browser = browser
        self.writer = writer
        self.record_input = record_input
        self.stopped: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if clipboard is None:
            clipboard = gate.clipboard_allowed(live.hospital_id)
        self.clipboard = clipboard  # the hospital's switch, read once a session
        self.notices: set[asyncio.Future[None]] = set()
        # Extended Clipboard (UTF-8): the browser asked for it (kept only when the
        # clipboard is on), the instrument's server announced it (its caps)
        self.browser_ext = False
        self.server_ext = False

    def stop(self, reason: str) -> None:
        if not self.stopped.done():
            self.stopped.set_result(reason)

    def warn(self, text: str) -> None:
        task = asyncio.ensure_future(self.browser.notice(text))
        self.notices.add(task)
        task.add_done_callback(self.notices.discard)

    async def run(self, upstream: Stream, downstream: Stream, screen: Screen) -> tuple[str, str]:
        up = asyncio.ensure_future(self._up(upstream, ServerFramer(screen)))
        framer = ClientFramer(screen, clipboard=self.clipboard)
        down = asyncio.ensure_future(self._down(downstream, framer))
        keys = asyncio.ensure_future(self._keyframes(screen))
        return await _until_one_ends(self.stopped, (up, down, keys), self.live.session_id)

    async def _up(self, s: Stream, framer: ServerFramer) -> str:
        while True:
            try:
                m = await framer.next(s)
            except EOFError:
                return "instrument_closed"
            if m.clip is not None or m.refused is not None:
                out = self._extended(m, "Outbound")
                if out is None:
                    continue
                if out.clip is not None:  # recorded (X) if it carried text; not an S record:
                    # a view-only noVNC (player, follower) cannot read an extended provide
                    await asyncio.wait_for(self.browser.send(out.data), self.gate.send_timeout_s)
                    continue
                m = out  # the text as a classic ServerCutText: recorded as one
            elif m.cut is not None and not self._clipboard(m, "Outbound"):
                continue
            self.rec.record(b"S", m.data)  # recorded before the browser sees it
            self.live.publish(m.data)  # approvers following it
            await asyncio.wait_for(self.browser.send(m.data), self.gate.send_timeout_s)

    async def _down(self, s: Stream, framer: ClientFramer) -> str:
        while True:
            try:
                m = await framer.next(s)
            except EOFError:
                return "browser_closed"
            if m.clip is not None or m.refused is not None:
                out = self._extended(m, "Inbound")
                if out is None:
                    continue
                m = out
            elif m.cut is not None and not self._clipboard(m, "Inbound"):
                continue
            if m.kind == C_ENCODINGS:
                self.browser_ext = EXT_CLIPBOARD in framer.encodings
            if m.input and self.record_input:
                self.rec.record(b"C", m.data)
            elif m.kind == C_PIXEL_FORMAT:  # how the server's pixels read from now on
                self.rec.record(b"F", m.data)
            self.writer.write(m.data)
            await asyncio.wait_for(self.writer.drain(), self.gate.send_timeout_s)

    async def _keyframes(self, screen: Screen) -> None:
        """Ask for the whole screen now and then: the recording holds keyframes."""
        while True:
            await asyncio.sleep(KEYFRAME_EVERY_S)
            self.writer.write(
                struct.pack(">BBHHHH", C_UPDATE_REQUEST, 0, 0, 0, screen.width, screen.height)
            )

    def _extended(self, m: Message, direction: str) -> Message | None:
        """What an extended clipboard message of one side becomes for the other (None:
        nothing goes).  Text (a provide) is the clipboard transfer, allowed, logged and
        recorded or refused as a classic cut text is (its size and SHA-256 are of the
        UTF-8 text as the user sees it, line ends LF); towards a side that did not
        announce Extended Clipboard it goes as a classic cut text (ISO 8859-1, ``?``
        for what it lacks).  Caps, request, peek and notify cross only with the switch
        on and towards a side that speaks it, naming text alone.  One that does not
        parse is refused (``file.refused``, size and SHA-256 of its bytes)."""
        kind = S_CUT if direction == "Outbound" else C_CUT
        if m.refused is not None:
            why = (m.refused.reason, m.refused.message)
            self._clipboard(Message(m.kind, m.data, cut=m.data[8:]), direction, why)
            return None
        clip = m.clip
        assert clip is not None
        if direction == "Outbound" and clip.action == CAPS and self.clipboard:
            self.server_ext = True
        extended = self.browser_ext if direction == "Outbound" else self.server_ext
        if clip.action == PROVIDE:
            if clip.data is None:
                return None  # no text in it: nothing hoshu relays
            if not self.clipboard:
                self._clipboard(Message(kind, m.data, cut=clip.utf8), direction)
                return None
            if extended:
                out = Message(kind, extclip.message(kind, clip), cut=clip.utf8, clip=clip)
            else:
                latin = clip.data.encode("latin-1", "replace")
                out = Message(kind, struct.pack(">BxxxI", kind, len(latin)) + latin, cut=latin)
            return out if self._clipboard(out, direction) else None
        if not self.clipboard or not extended:
            return None
        if clip.action == REQUEST and not clip.text:
            return None  # a format hoshu does not relay
        return Message(kind, extclip.message(kind, clip), clip=clip)

    def _clipboard(self, m: Message, direction: str, why: tuple[str, str] | None = None) -> bool:
        """Let a clipboard message through (logged, recorded) or refuse it (logged):
        refused when the hospital's switch is off or for ``why`` (reason, message)."""
        text = m.cut or b""
        cols = dict(
            self.cols,
            NetworkDirection=direction,
            TargetFileName="clipboard",
            TargetFileSize=len(text),
            TargetFileSHA256=hashlib.sha256(text).hexdigest(),
        )
        op = "upload" if direction == "Inbound" else "download"
        if why is None and not self.clipboard:
            why = ("clipboard_off", "the hospital's policy keeps the clipboard off")
        if why is not None:
            self.gate.emit(
                "file.refused",
                EventResult="Failure",
                EventResultDetails=why[0],
                EventMessage=why[1],
                details={"tool": "clipboard", "operation": op},
                **cols,
            )
            return False
        self.rec.record(b"X", m.data)
        self.gate.emit("file.transferred", details={"tool": "clipboard", "operation": op}, **cols)
        return True


class _RdpRelay(_Relay):
    """One running RDP desktop: the RDP session's screen served to the browser as RFB
    (:class:`~broker.desktop.rdpbridge.RdpBridge`)."""

    def __init__(
        self,
        gate: DesktopGate,
        live: LiveSession,
        cols: dict[str, Any],
        rec: DesktopRecording,
        browser: Browser,
        rdp: RdpSession,
        record_input: bool,
        clipboard: bool,
        *,
        keyboard: Layout,
        drive: DriveDir | None = None,
    ) -> None:
        super().__init__(gate, live, cols, rec, browser, _NoWriter(), record_input, clipboard)
        self.drive = drive  # the session's drive, joined only when the hospital allows it
        self.bridge = RdpBridge(
            rdp,
            self._send,
            self._client,
            on_server=lambda m: self._clipboard(m, "Outbound"),
            on_refused=self._clip_refused,
            keyboard=keyboard,
            clipboard=clipboard,
            send_clip=self._send_clip,
        )

    async def _send(self, data: bytes) -> None:
        self.rec.record(b"S", data)  # recorded before the browser sees it
        self.live.publish(data)
        await asyncio.wait_for(self.browser.send(data), self.gate.send_timeout_s)

    async def _send_clip(self, data: bytes) -> None:
        """An extended clipboard message to the browser: its text was recorded (``X``)
        when it was allowed; not an ``S`` record (a view-only noVNC cannot read it)."""
        await asyncio.wait_for(self.browser.send(data), self.gate.send_timeout_s)

    def _client(self, m: Message) -> bool:
        if m.refused is not None:  # an extended clipboard message that does not parse
            why = (m.refused.reason, m.refused.message)
            return self._clipboard(Message(m.kind, m.data, cut=m.data[8:]), "Inbound", why)
        if m.clip is not None and m.clip.action == PROVIDE:
            if m.clip.data is None:
                return False  # no text in it
            data = extclip.message(C_CUT, m.clip)
            m = Message(C_CUT, data, cut=m.clip.utf8)  # what is logged and recorded
        elif m.clip is not None:  # the bridge answers caps, notify, request, peek itself
            return self.clipboard
        if m.cut is not None:  # to the instrument's clipboard only if allowed; logged
            if self.clipboard and self.bridge.rdp.clipboard is None:
                why = ("clipboard_unavailable", "the instrument has no RDP clipboard channel")
                return self._clipboard(m, "Inbound", why)
            return self._clipboard(m, "Inbound")
        if m.input and self.record_input:
            self.rec.record(b"C", m.data)
        elif m.kind == C_PIXEL_FORMAT:
            self.rec.record(b"F", m.data)
        return True

    def _clip_refused(self, refused: ClipRefused) -> None:
        """A clipboard PDU of the instrument that the clipboard channel refused."""
        self.gate.emit(
            "file.refused",
            EventResult="Failure",
            EventResultDetails=refused.reason,
            EventMessage=refused.message,
            details={"tool": "clipboard", "operation": "download"},
            **dict(
                self.cols,
                NetworkDirection="Outbound",
                TargetFileName="clipboard",
                TargetFileSize=refused.size,
                TargetFileSHA256=refused.sha256,
            ),
        )

    async def run(self, upstream: Stream, downstream: Stream, screen: Screen) -> tuple[str, str]:
        b = self.bridge
        up = asyncio.ensure_future(b.up())
        down = asyncio.ensure_future(b.down(downstream))
        out = asyncio.ensure_future(b.out())
        keys = asyncio.ensure_future(b.keyframes())
        clip = asyncio.ensure_future(b.clipboard())
        workers: tuple[asyncio.Future[Any], ...] = (up, down, out, keys, clip)
        if self.drive is not None:
            files = follow_drive(self.drive, self.gate.emit, self.cols, self.rec.record)
            workers = (*workers, asyncio.ensure_future(files))
        return await _until_one_ends(self.stopped, workers, self.live.session_id)


class _NoWriter:
    """An RDP relay writes to the instrument through its RDP session, not raw bytes."""

    def write(self, data: bytes) -> None:
        raise RuntimeError("an RDP desktop takes no raw RFB bytes")

    async def drain(self) -> None:
        return None

    def write_eof(self) -> None:
        return None

    def close(self) -> None:
        return None


__all__ = ["Browser", "DesktopError", "DesktopGate"]
