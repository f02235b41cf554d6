"""``ssh -L``: direct-tcpip channels to granted instrument ports only.

The destination host is the instrument named at login (``localhost`` or its
name) or another instrument by name; the port must be in an active grant for
this engineer and on the hospital's list for the instrument.  The broker
connects through the instrument's gateway (``InstrumentConnector.open_tcp``)
and copies bytes with flow control both ways.  Metadata (open, close, bytes
each way, duration) becomes ``forward.opened``/``forward.closed`` events; with
``forward_capture_dir`` set, the raw bytes are kept as well.

Capture files (:class:`Capture`) are created new, mode 0600, never through a
symbolic link and never over an existing file; a forward whose capture file
cannot be created is refused (``forward.refused``, ``capture_failed``).  Each
capture is capped at ``forward_capture_max_bytes``.  The cap fails closed, as
recordings do: bytes that would not fit are not captured and not forwarded,
the forward ends, and ``forward.closed`` says ``capture_full`` (a write error
ends it the same way, ``capture_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import asyncssh

from broker.access.errors import SessionError
from broker.frontdoor.context import ChannelContext
from broker.frontdoor.raw_paths import interactive_banner
from broker.live.errors import RecordingError
from broker.live.sessions import LiveSession
from broker.tunnel.connector import ByteReader, ByteWriter, Origin

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
_HIGH_WATER = 4 * 1024 * 1024


class CaptureFailed(RecordingError):
    reason = "capture_failed"


class Capture:
    """The raw bytes of one forward: ``>``/``<`` + 4-byte length + data, up to a cap."""

    def __init__(self, path: Path, limit: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise CaptureFailed(
                f"the forward cannot be captured ({exc.strerror}); it was not opened"
            ) from exc
        self._fh = os.fdopen(fd, "wb")
        self._limit = limit
        self.size = 0
        self.failure = ""

    def write(self, direction: bytes, data: bytes) -> bool:
        """Capture one chunk; False (nothing written) once the cap or an error is hit."""
        if self.failure:
            return False
        record = direction + len(data).to_bytes(4, "big") + data
        if self.size + len(record) > self._limit:
            self.failure = "capture_full"
            return False
        try:
            self._fh.write(record)
        except OSError:
            self.failure = "capture_failed"
            return False
        self.size += len(record)
        return True

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            self.failure = self.failure or "capture_failed"


class ForwardSession(asyncssh.SSHTCPSession[bytes]):
    """Engineer side of one forward; the instrument side is a byte stream."""

    def __init__(
        self,
        channels: ChannelContext,
        live: LiveSession,
        cols: dict[str, Any],
        reader: ByteReader,
        writer: ByteWriter,
        capture: Capture | None,
    ) -> None:
        self._ch = channels
        self._live = live
        self._cols = cols
        self._reader = reader
        self._writer = writer
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self.src_bytes = 0
        self.dst_bytes = 0
        self._writable = asyncio.Event()
        self._writable.set()
        self._pump: asyncio.Task[None] | None = None
        self._draining = False
        self._drain_task: asyncio.Future[None] | None = None
        self._closed = False
        self._reason = "closed"
        self._capture = capture  # closed in _finish

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self._chan = chan
        self._live.on_terminate = self._terminate
        self._pump = asyncio.ensure_future(self._upstream_to_engineer())

    def _terminate(self, reason: str) -> None:
        self._reason = reason
        if self._chan is not None:
            self._chan.close()

    # engineer -> instrument
    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._capture is not None and not self._capture.write(b">", data):
            self._terminate(self._capture.failure)  # fail closed: not captured, not sent
            return
        self.src_bytes += len(data)
        self._writer.write(data)
        if not self._draining:
            self._draining = True
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            if self._chan is not None:
                self._chan.pause_reading()
            await self._writer.drain()
        except (OSError, asyncssh.Error):
            self._terminate("instrument_closed")
        finally:
            self._draining = False
            if self._chan is not None and not self._closed:
                self._chan.resume_reading()

    def eof_received(self) -> bool:
        with contextlib.suppress(OSError, asyncssh.Error):
            self._writer.write_eof()
        return True  # keep the channel half-open for the reply

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # instrument -> engineer
    async def _upstream_to_engineer(self) -> None:
        assert self._chan is not None
        try:
            first = True
            while data := await self._reader.read(CHUNK):
                if first and interactive_banner(data) is not None:  # sshd on another port
                    self._terminate("interactive_port")
                    return
                first = False
                if self._capture is not None and not self._capture.write(b"<", data):
                    self._terminate(self._capture.failure)
                    return
                self.dst_bytes += len(data)
                self._chan.write(data)
                if not self._writable.is_set():
                    await self._writable.wait()
            self._chan.write_eof()
        except (OSError, asyncssh.Error):
            self._chan.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._pump is not None:
            self._pump.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()
        self._finish()

    def _finish(self) -> None:
        ch = self._ch
        ch.door.sessions.remove(self._live.session_id)
        ch.release()
        result = "Success"
        if self._capture is not None:
            self._capture.close()
            if self._capture.failure:
                self._reason, result = self._capture.failure, "Failure"
        ch.door.emit(
            "forward.closed",
            EventResultDetails=self._reason,
            EventResult=result,
            SrcBytes=self.src_bytes,
            DstBytes=self.dst_bytes,
            NetworkDuration=int((self._loop.time() - self._started) * 1000),
            **self._cols,
        )


async def open_forward(channels: ChannelContext, dest_host: str, dest_port: int) -> ForwardSession:
    """Authorize and connect one forward, or raise ChannelOpenError with the reason."""
    instrument = channels.forward_target(dest_host)
    door = channels.door
    base = channels.cols(instrument, dest_port, NetworkApplicationProtocol="tcp")
    sid = door.ids()
    capture_dir = door.options.forward_capture_dir
    path = capture_dir / f"{sid}.fwd" if capture_dir is not None else None
    capture: Capture | None = None
    try:
        target, grant = await channels.authorize_off_loop(instrument, dest_port)
        if path is not None:
            capture = Capture(path, door.options.forward_capture_max_bytes)
        origin = Origin(sid, channels.engineer.username)
        reader, writer = await door.connector.open_tcp(target, dest_port, origin)
    except SessionError as exc:  # the connector translated every failure
        channels.release()
        if capture is not None and path is not None:  # ours (O_EXCL), and empty
            capture.close()
            path.unlink(missing_ok=True)
        msg = str(exc)
        reason = exc.reason
        door.emit(
            "forward.refused",
            EventResult="Failure",
            EventResultDetails=reason,
            EventMessage=msg,
            **base,
        )
        code = (
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
            if reason in ("no_grant", "interactive_port")
            else asyncssh.OPEN_CONNECT_FAILED
        )
        raise asyncssh.ChannelOpenError(code, msg) from exc
    live = channels.live(sid, "forward", target, grant, dest_port)
    cols = dict(
        base,
        TargetSessionId=sid,
        HospitalId=target.hospital_id or None,
        GatewayId=target.gateway_id or None,
        GrantId=grant.grant_id,
    )
    door.emit("forward.opened", details={"capture": path.name if path else None}, **cols)
    door.sessions.add(live)
    return ForwardSession(channels, live, cols, reader, writer, capture)
