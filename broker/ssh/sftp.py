"""SFTP and scp through the broker, only when the grant allows file transfer.

The engineer's SFTP (and scp, which asyncssh serves through the same
interface) ends at the broker; :class:`ProxySFTPServer` performs each
operation on the instrument through the broker's own SFTP client.  Files are
spooled at the broker so that each transfer is hashed whole and, for files
going into the hospital, the scan hook sees the complete file *before* any
byte reaches the instrument.  Each file is a ``file.transferred`` event (name,
direction, size, SHA-256) or a ``file.refused`` event (scan rejection).

Deny by default: without ``file_transfer`` in an active grant every operation
fails with "permission denied" and the reason, and ``file.refused`` is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, cast

import asyncssh
from asyncssh import SFTPAttrs, SFTPName

from broker.ssh.errors import FrontDoorError

if TYPE_CHECKING:
    from broker.ssh.channels import Channels
    from broker.ssh.sessions import LiveSession

log = logging.getLogger(__name__)
CHUNK = 256 * 1024


@dataclass(eq=False)
class _Spool:
    path: bytes
    pflags: int
    attrs: SFTPAttrs
    fh: IO[bytes]
    inbound: bool
    set_attrs: list[SFTPAttrs] = field(default_factory=list)
    size: int = 0
    sha256: str = ""


def _tell(chan: asyncssh.SSHServerChannel[bytes], message: str) -> None:
    """Show ``message`` on the engineer's terminal (sftp and scp print the stderr stream)."""
    try:
        chan.write_stderr(f"hoshu: {message}\n".encode())
    except (OSError, asyncssh.Error):
        pass


class DeniedSFTPServer(asyncssh.SFTPServer):
    """Answers every request with the reason file transfer is refused."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], message: str) -> None:
        super().__init__(chan)
        self._message = message
        _tell(chan, message)

    def _deny(self, *_args: Any, **_kw: Any) -> Any:
        raise asyncssh.SFTPPermissionDenied(self._message)

    def exit(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self.channel.exit(1)

    realpath = stat = lstat = open = scandir = mkdir = remove = rename = _deny
    setstat = rmdir = readlink = symlink = posix_rename = statvfs = _deny


class ProxySFTPServer(asyncssh.SFTPServer):
    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        channels: Channels,
        upstream: asyncssh.SFTPClient,
        live: LiveSession,
        cols: dict[str, Any],
        tool: str,
    ) -> None:
        super().__init__(chan)
        self._ch = channels
        self._up = upstream
        self._live = live
        self._cols = cols
        self._tool = tool
        live.on_terminate = lambda _reason: chan.close()

    # --- files ------------------------------------------------------------------
    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> _Spool:
        inbound = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND))
        fh = tempfile.TemporaryFile(prefix="hoshu-spool-")  # closed in close()
        spool = _Spool(path, pflags, attrs, fh, inbound)
        if not inbound:
            try:
                await self._download(spool)
            except BaseException:
                fh.close()
                raise
        return spool

    async def _download(self, spool: _Spool) -> None:
        h = hashlib.sha256()
        limit = self._ch.door.options.max_file_bytes
        async with self._up.open(spool.path, "rb") as src:
            while data := cast(bytes, await src.read(CHUNK)):
                spool.size += len(data)
                if spool.size > limit:
                    raise asyncssh.SFTPFailure("file too large for the broker")
                h.update(data)
                spool.fh.write(data)
        spool.fh.flush()
        spool.sha256 = h.hexdigest()

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        assert isinstance(file_obj, _Spool)
        return os.pread(file_obj.fh.fileno(), size, offset)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        assert isinstance(file_obj, _Spool)
        if not file_obj.inbound:
            raise asyncssh.SFTPPermissionDenied("file not open for writing")
        if offset + len(data) > self._ch.door.options.max_file_bytes:
            raise asyncssh.SFTPFailure("file too large for the broker")
        return os.pwrite(file_obj.fh.fileno(), data, offset)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        assert isinstance(file_obj, _Spool)
        if file_obj.inbound:
            return SFTPAttrs(size=os.fstat(file_obj.fh.fileno()).st_size)
        return await self._up.stat(file_obj.path)

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        assert isinstance(file_obj, _Spool)
        if file_obj.inbound:
            file_obj.set_attrs.append(attrs)
        else:
            await self._up.setstat(file_obj.path, attrs)

    async def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, _Spool)
        try:
            if file_obj.inbound:
                await self._upload(file_obj)
            else:
                self._event("file.transferred", file_obj, "Outbound", None)
        finally:
            file_obj.fh.close()

    async def _upload(self, spool: _Spool) -> None:
        fd = spool.fh.fileno()
        spool.size = os.fstat(fd).st_size
        h = hashlib.sha256()
        for off in range(0, spool.size, CHUNK):
            h.update(os.pread(fd, CHUNK, off))
        spool.sha256 = h.hexdigest()
        scan = await self._scan(spool)
        if scan is not None and scan != "clean":
            self._event("file.refused", spool, "Inbound", scan)
            msg = f"{os.fsdecode(spool.path)} was rejected by the hospital's file scan"
            _tell(self.channel, msg)
            raise asyncssh.SFTPPermissionDenied(msg)
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
        dst = await self._up.open(spool.path, flags, spool.attrs, encoding=None)
        try:
            for off in range(0, spool.size, CHUNK):
                await dst.write(os.pread(fd, CHUNK, off), off)
        finally:
            await dst.close()
        for attrs in spool.set_attrs:
            await self._up.setstat(spool.path, attrs)
        self._event("file.transferred", spool, "Inbound", scan)

    async def _scan(self, spool: _Spool) -> str | None:
        """Run the scan hook on the spooled file; "clean", "rejected", or None (no hook)."""
        argv = self._ch.door.options.scan_command
        if not argv:
            return None
        spool.fh.flush()
        fd = spool.fh.fileno()
        proc = await asyncio.create_subprocess_exec(
            *argv, f"/dev/fd/{fd}", pass_fds=(fd,), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            rc = await asyncio.wait_for(proc.wait(), self._ch.door.options.scan_timeout_s)
        except TimeoutError:
            proc.kill()
            return "rejected"
        return "clean" if rc == 0 else "rejected"

    def _event(self, type_: str, spool: _Spool, direction: str, scan: str | None) -> None:
        self._ch.door.emit(
            type_, EventResult="Success" if type_ == "file.transferred" else "Failure",
            NetworkDirection=direction, TargetFileName=os.fsdecode(spool.path),
            TargetFileSize=spool.size, TargetFileSHA256=spool.sha256,
            details={"tool": self._tool, "scan": scan}, **self._cols,
        )

    # --- names and directories --------------------------------------------------
    async def realpath(self, path: bytes) -> bytes:
        result: bytes = await self._up.realpath(path or b".")
        return result

    async def stat(self, path: bytes) -> SFTPAttrs:
        return await self._up.stat(path)

    async def lstat(self, path: bytes) -> SFTPAttrs:
        return await self._up.lstat(path)

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self._up.setstat(path, attrs)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        async for name in self._up.scandir(path):
            yield name

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self._up.mkdir(path, attrs)

    async def rmdir(self, path: bytes) -> None:
        await self._up.rmdir(path)

    async def remove(self, path: bytes) -> None:
        await self._up.remove(path)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._up.rename(oldpath, newpath)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._up.posix_rename(oldpath, newpath)

    async def readlink(self, path: bytes) -> bytes:
        result: bytes = await self._up.readlink(path)
        return result

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        await self._up.symlink(oldpath, newpath)

    def exit(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self.channel.exit(0)  # scp checks the exit status of its ssh
        door = self._ch.door
        door.sessions.remove(self._live.session_id)
        self._ch.release()
        self._up.exit()
        door.emit("session.ended", EventResultDetails=self._live.ended_reason or "exited",
                  details={"kind": self._tool}, **self._cols)


async def make_sftp_server(
    channels: Channels, chan: asyncssh.SSHServerChannel[bytes]
) -> asyncssh.SFTPServer:
    """The SFTP server for one channel: a proxy when granted, else a refusal."""
    command = chan.get_command() or ""
    tool = "scp" if command.startswith("scp ") else "sftp"
    instrument = channels.login.instrument
    door = channels.door
    try:
        target, grant = channels.authorize(instrument, None, files=True)
        conn = await channels.link.ssh(target)
        upstream = await conn.start_sftp_client(path_encoding=None)
    except (FrontDoorError, OSError, asyncssh.Error) as exc:
        msg = str(exc) if isinstance(exc, FrontDoorError) else "the instrument refused SFTP"
        door.emit("file.refused", EventResult="Failure",
                  EventResultDetails=getattr(exc, "reason", "instrument_error"),
                  EventMessage=msg, details={"tool": tool}, **channels.cols(instrument))
        channels.release()
        return DeniedSFTPServer(chan, msg)
    sid = door.ids()
    live = channels.live(sid, tool, target, grant, target.ssh_port)
    cols = channels.cols(target.name, target.ssh_port, TargetSessionId=sid,
                         HospitalId=target.hospital_id or None,
                         GatewayId=target.gateway_id or None, GrantId=grant.grant_id,
                         NetworkApplicationProtocol=tool)
    door.emit("session.started", EventMessage=f"{tool} on {target.name}",
              details={"kind": tool, "command": command or None}, **cols)
    door.sessions.add(live)
    return ProxySFTPServer(chan, channels, upstream, live, cols, tool)
