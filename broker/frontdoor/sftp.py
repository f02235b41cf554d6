"""SFTP and scp through the broker, only when the grant allows file transfer.

The engineer's SFTP (and scp, which asyncssh serves through the same
interface) ends at the broker; :class:`ProxySFTPServer` performs each
operation on the instrument through the broker's own SFTP client.  Files are
spooled at the broker (:mod:`broker.frontdoor.spool`) so that each transfer is
hashed whole and, for files going into the hospital, the scan hook sees the
complete file *before* any byte reaches the instrument.  Each file is a
``file.transferred`` event (name, direction, size, SHA-256) or a
``file.refused`` event (scan rejection, spool limit, access ended).

An upload lands on the instrument only when the client closes the file
explicitly while the session and its grant are live (checked at that moment).
A terminated session throws its spools away; a connection that drops, or a
client that ends its channel with a file still open, lands nothing.  The file
is written to a temporary name beside the target and renamed over it only when
complete, so an interrupted upload never truncates the file already there.

Changes to the instrument's files (remove, rename, symlink, setstat, mkdir,
rmdir) are ``file.changed`` events with an ``operation`` detail, successful or
not (:mod:`broker.frontdoor.sftp_changes`).

Deny by default: without ``file_transfer`` in an active grant every operation
fails with "permission denied" and the reason, and ``file.refused`` is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import posixpath
from typing import TYPE_CHECKING, Any, cast

import asyncssh
from asyncssh import SFTPAttrs

from broker.access.errors import SessionError
from broker.frontdoor.context import ChannelContext
from broker.frontdoor.sftp_changes import ChangeOps, DeniedSFTPServer, Refuser, tell
from broker.frontdoor.spool import SessionSpools, Spool, SpoolFull

if TYPE_CHECKING:
    from broker.live.sessions import LiveSession

log = logging.getLogger(__name__)
CHUNK = 256 * 1024


class TransferSession(asyncssh.SSHServerProcess[bytes]):
    """The session object of an engineer's session channel (shell, exec, sftp, scp).

    It is asyncssh's process session; it also notes when the client sends EOF,
    because a file still open then was never closed by the client and must not
    land on the instrument.
    """

    def __init__(self, channels: ChannelContext, run: Any) -> None:
        super().__init__(run, self._sftp, 3, True)
        self._channels = channels
        self.client_eof = False

    def _sftp(self, chan: Any) -> Any:
        return make_sftp_server(self._channels, chan, self)

    def eof_received(self) -> bool:
        self.client_eof = True
        return bool(super().eof_received())


class _NotLanding(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ProxySFTPServer(ChangeOps):
    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        channels: ChannelContext,
        upstream: asyncssh.SFTPClient,
        live: LiveSession,
        cols: dict[str, Any],
        tool: str,
        session: TransferSession | None,
    ) -> None:
        super().__init__(chan, channels, upstream, cols, tool)
        self._live = live
        self._session = session
        opts = channels.door.options
        assert opts.spool_dir is not None  # start_front_door fills it in
        self._spools = SessionSpools(
            opts.spool_dir,
            channels.door.spools,
            per_session=opts.max_session_spool_bytes,
            per_file=opts.max_file_bytes,
        )
        self._parts = 0
        live.on_terminate = self._terminate

    def _terminate(self, _reason: str) -> None:
        """Access ended: nothing still spooled may land; close the engineer's channel."""
        self._spools.discard_all()
        self.channel.close()

    def live_check(self, *, ask_policy: bool = True) -> None:
        """Raise _NotLanding unless the session, its channel and its grant are live now.

        ``ask_policy=False`` skips the store (between chunks of one file: the
        watcher and the checks before and after the copy cover the grant).
        """
        if self._live.ended_reason is not None:
            raise _NotLanding(
                "session_ended",
                f"the session has ended ({self._live.ended_reason.replace('_', ' ')})",
            )
        if self.channel.is_closing() or (self._session is not None and self._session.client_eof):
            raise _NotLanding("not_closed", "the client went away without closing the file")
        if not ask_policy:
            return
        try:
            self._ch.authorize(self._live.instrument, None, files=True)
        except SessionError as exc:
            raise _NotLanding(exc.reason, str(exc)) from exc

    async def live_check_off_loop(self) -> None:
        """:meth:`live_check`, the grant read on the database pool (off the event loop)."""
        self.live_check(ask_policy=False)
        try:
            await self._ch.authorize_off_loop(self._live.instrument, None, files=True)
        except SessionError as exc:
            raise _NotLanding(exc.reason, str(exc)) from exc

    # --- files ------------------------------------------------------------------
    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> Spool:
        inbound = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND))
        try:
            spool = self._spools.create(path, pflags, attrs, inbound)
        except OSError as exc:
            log.error("cannot create a spool file: %s", exc)
            raise asyncssh.SFTPFailure("the broker cannot spool the file") from exc
        if not inbound:
            try:
                await self._download(spool)
            except BaseException:
                self._spools.discard(spool)
                raise
        return spool

    async def _download(self, spool: Spool) -> None:
        h = hashlib.sha256()
        async with self._up.open(spool.path, "rb") as src:
            while data := cast(bytes, await src.read(CHUNK)):
                self._charge(spool, spool.size + len(data), "Outbound")
                h.update(data)
                spool.fh.write(data)
        spool.fh.flush()
        spool.sha256 = h.hexdigest()

    def _charge(self, spool: Spool, high: int, direction: str) -> None:
        try:
            self._spools.charge(spool, high)
        except SpoolFull as exc:
            if not spool.refused:
                spool.refused = exc.reason
                self._file_event(
                    "file.refused", spool, direction, None, reason=exc.reason, message=str(exc)
                )
                tell(self.channel, f"{os.fsdecode(spool.path)}: {exc}")
            raise asyncssh.SFTPFailure(str(exc)) from exc

    def _spool(self, file_obj: object) -> Spool:
        assert isinstance(file_obj, Spool)
        if file_obj not in self._spools.open:
            raise asyncssh.SFTPFailure("the session has ended; the file was discarded")
        return file_obj

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        return os.pread(self._spool(file_obj).fh.fileno(), size, offset)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        spool = self._spool(file_obj)
        if not spool.inbound:
            raise asyncssh.SFTPPermissionDenied("file not open for writing")
        if spool.refused:
            raise asyncssh.SFTPFailure("the broker refused this file earlier; start again")
        self._charge(spool, max(spool.size, offset + len(data)), "Inbound")
        return os.pwrite(spool.fh.fileno(), data, offset)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        spool = self._spool(file_obj)
        if spool.inbound:
            return SFTPAttrs(size=os.fstat(spool.fh.fileno()).st_size)
        return await self._up.stat(spool.path)

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        spool = self._spool(file_obj)
        if spool.inbound:
            spool.set_attrs.append(attrs)  # applied (and logged) when the file lands
        else:
            await self.setstat(spool.path, attrs)

    async def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, Spool)
        spool = file_obj
        try:
            if not spool.inbound:
                if not spool.refused:
                    self._file_event("file.transferred", spool, "Outbound", None)
                return
            if spool.refused:
                self._fail("the broker refused this file; nothing was written")
                return
            try:
                if spool not in self._spools.open:
                    raise _NotLanding("session_ended", "the session has ended")
                await self.live_check_off_loop()
                await self._upload(spool)
            except _NotLanding as exc:
                msg = f"{os.fsdecode(spool.path)} was not written to the instrument: {exc}"
                self._file_event(
                    "file.refused", spool, "Inbound", None, reason=exc.reason, message=msg
                )
                tell(self.channel, msg)
                self._fail(msg)
        finally:
            self._spools.discard(spool)

    def _fail(self, message: str) -> None:
        """Answer a CLOSE with a failure, if the client is still there to read it.

        When asyncssh closes the handles of a channel that went away, an
        exception would stop its clean-up (and the session would never end).
        """
        if not (
            self.channel.is_closing() or (self._session is not None and self._session.client_eof)
        ):
            raise asyncssh.SFTPFailure(message)

    async def _upload(self, spool: Spool) -> None:
        fd = spool.fh.fileno()
        size = os.fstat(fd).st_size
        h = hashlib.sha256()
        for off in range(0, size, CHUNK):
            h.update(os.pread(fd, CHUNK, off))
        spool.sha256 = h.hexdigest()
        scan = await self._scan(spool)
        if scan is not None and scan != "clean":
            msg = f"{os.fsdecode(spool.path)} was rejected by the hospital's file scan"
            self._file_event(
                "file.refused", spool, "Inbound", scan, reason="scan_rejected", message=msg
            )
            tell(self.channel, msg)
            raise asyncssh.SFTPPermissionDenied(msg)
        await self.live_check_off_loop()  # the scan may take long: ask again
        await self._land(spool, size)
        for attrs in spool.set_attrs:
            await self.setstat(spool.path, attrs)
        self._file_event("file.transferred", spool, "Inbound", scan)

    async def _land(self, spool: Spool, size: int) -> None:
        """Write the spool beside the target, then rename it over the target.

        The target is never opened for truncation: until the rename the file
        already there is untouched, and an upload cut short leaves it as it was.
        A target that is a symbolic link is written through (after the spool
        is complete), so that the link stays a link.
        """
        fd = spool.fh.fileno()
        attrs = spool.attrs
        direct = False
        try:
            st = await self._up.lstat(spool.path)
            direct = st.type == asyncssh.FILEXFER_TYPE_SYMLINK
            if st.permissions is not None:
                attrs = SFTPAttrs(permissions=st.permissions & 0o7777)  # keep the target's mode
        except asyncssh.SFTPNoSuchFile:
            pass
        if direct:
            flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
            await self._write_file(spool.path, flags, attrs, fd, size)
            return
        self._parts += 1
        head, tail = posixpath.split(spool.path)
        part = posixpath.join(
            head, b".%s.hoshu-%s-%d.part" % (tail, self._live.session_id.encode(), self._parts)
        )
        flags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
        try:
            await self._write_file(part, flags, attrs, fd, size)
            await self.live_check_off_loop()
            try:
                await self._up.posix_rename(part, spool.path)
            except asyncssh.SFTPOpUnsupported:
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await self._up.remove(spool.path)
                await self._up.rename(part, spool.path)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._up.remove(part)
            raise

    async def _write_file(
        self, path: bytes, flags: int, attrs: SFTPAttrs, fd: int, size: int
    ) -> None:
        dst = await self._up.open(path, flags, attrs, encoding=None)
        try:
            for off in range(0, size, CHUNK):
                self.live_check(ask_policy=False)
                await dst.write(os.pread(fd, CHUNK, off), off)
        finally:
            with contextlib.suppress(OSError, asyncssh.Error):
                await dst.close()

    async def _scan(self, spool: Spool) -> str | None:
        """Run the scan hook on the spooled file; "clean", "rejected", or None (no hook)."""
        argv = self._ch.door.options.scan_command
        if not argv:
            return None
        spool.fh.flush()
        fd = spool.fh.fileno()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            f"/dev/fd/{fd}",
            pass_fds=(fd,),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            rc = await asyncio.wait_for(proc.wait(), self._ch.door.options.scan_timeout_s)
        except TimeoutError:
            proc.kill()
            return "rejected"
        return "clean" if rc == 0 else "rejected"

    def _file_event(
        self,
        type_: str,
        spool: Spool,
        direction: str,
        scan: str | None,
        *,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        self._ch.door.emit(
            type_,
            EventResult="Success" if type_ == "file.transferred" else "Failure",
            EventResultDetails=reason,
            EventMessage=message,
            NetworkDirection=direction,
            TargetFileName=os.fsdecode(spool.path),
            TargetFileSize=spool.size,
            TargetFileSHA256=spool.sha256 or None,
            details={
                "tool": self._tool,
                "scan": scan,
                "operation": "upload" if direction == "Inbound" else "download",
            },
            **self._cols,
        )

    def exit(self) -> None:
        self._spools.discard_all()
        with contextlib.suppress(OSError, asyncssh.Error):
            self.channel.exit(0)  # scp checks the exit status of its ssh
        door = self._ch.door
        door.sessions.remove(self._live.session_id)
        self._ch.release()
        self._up.exit()
        door.emit(
            "session.ended",
            EventResultDetails=self._live.ended_reason or "exited",
            details={"kind": self._tool},
            **self._cols,
        )


async def make_sftp_server(
    channels: ChannelContext,
    chan: asyncssh.SSHServerChannel[bytes],
    session: TransferSession | None = None,
) -> asyncssh.SFTPServer:
    """The SFTP server for one channel: a proxy when granted, else a refusal."""
    command = chan.get_command() or ""
    tool = "scp" if command.startswith("scp ") else "sftp"
    instrument = channels.login.instrument
    door = channels.door
    try:
        target, grant = await channels.authorize_off_loop(instrument, None, files=True)
        upstream = await channels.link.sftp(target)
    except SessionError as exc:  # the connector and the link translated every failure
        msg = str(exc)
        reason = exc.reason
        cols = channels.cols(instrument)
        door.emit(
            "file.refused",
            EventResult="Failure",
            EventResultDetails=reason,
            EventMessage=msg,
            details={"tool": tool},
            **cols,
        )
        channels.release()
        return DeniedSFTPServer(chan, msg, Refuser(door, cols, tool, reason, msg))
    sid = door.ids()
    live = channels.live(sid, tool, target, grant, target.ssh_port)
    cols = channels.cols(
        target.name,
        target.ssh_port,
        TargetSessionId=sid,
        HospitalId=target.hospital_id or None,
        GatewayId=target.gateway_id or None,
        GrantId=grant.grant_id,
        NetworkApplicationProtocol=tool,
    )
    door.emit(
        "session.started",
        EventMessage=f"{tool} on {target.name}",
        details={"kind": tool, "command": command or None},
        **cols,
    )
    door.sessions.add(live)
    return ProxySFTPServer(chan, channels, upstream, live, cols, tool, session)
