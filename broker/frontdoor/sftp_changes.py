"""SFTP operations that change the instrument's files without moving one, and refusals.

:class:`ChangeOps` is the part of the SFTP proxy that handles names and
directories.  Every operation that changes the instrument's file system is a
``file.changed`` event, successful or not, with the ``operation`` detail an
auditor searches for:

=============  ===========================  =========================================
operation      SFTP request                 columns and details
=============  ===========================  =========================================
``remove``     REMOVE                       TargetFileName
``rename``     RENAME, posix-rename         TargetFileName (new), ``from_path`` (old)
``symlink``    SYMLINK                      TargetFileName (the link), ``link_target``
``setstat``    SETSTAT, FSETSTAT            TargetFileName, ``attrs`` (what was set)
``mkdir``      MKDIR                        TargetFileName
``rmdir``      RMDIR                        TargetFileName
=============  ===========================  =========================================

A failure on the instrument (no such file, permission) is ``EventResult``
Failure with the instrument's message in ``EventResultDetails``; the engineer
sees the same error.  When the session or its grant is no longer live the
operation is refused before it reaches the instrument (``file.refused``).

:class:`DeniedSFTPServer` answers a channel without file transfer in the
grant: every request fails with the reason, and each attempt to change or move
a file is a ``file.refused`` event (at most :data:`MAX_REFUSAL_EVENTS` per
channel; then the channel is closed).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncssh
from asyncssh import SFTPAttrs, SFTPName

from broker.frontdoor.context import ChannelContext, Door

T = TypeVar("T")
MAX_REFUSAL_EVENTS = 32


def tell(chan: asyncssh.SSHServerChannel[bytes], message: str) -> None:
    """Show ``message`` on the engineer's terminal (sftp and scp print the stderr stream)."""
    try:
        chan.write_stderr(f"hoshu: {message}\n".encode())
    except (OSError, asyncssh.Error):
        pass


def describe_attrs(attrs: SFTPAttrs) -> dict[str, Any]:
    """The attributes a SETSTAT asks for, in audit form (mode in octal)."""
    out: dict[str, Any] = {}
    if attrs.permissions is not None:
        out["mode"] = f"{attrs.permissions & 0o7777:04o}"
    for name in ("uid", "gid", "size", "atime", "mtime", "owner", "group"):
        value = getattr(attrs, name, None)
        if value is not None:
            out[name] = value
    return out


class ChangeOps(asyncssh.SFTPServer):
    """Names and directories through the broker's SFTP client, with events."""

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        channels: ChannelContext,
        upstream: asyncssh.SFTPClient,
        cols: dict[str, Any],
        tool: str,
    ) -> None:
        super().__init__(chan)
        self._ch = channels
        self._up = upstream
        self._cols = cols
        self._tool = tool

    def live_check(self, *, ask_policy: bool = True) -> None:
        """Raise (with ``reason``) unless the session and its grant are live (the proxy's)."""

    async def live_check_off_loop(self) -> None:
        """:meth:`live_check` with the grant read off the event loop (the proxy's)."""

    async def _change(
        self, operation: str, path: bytes, call: Callable[[], Awaitable[T]], **details: Any
    ) -> T:
        emit = self._ch.door.emit
        name = os.fsdecode(path)
        base = dict(self._cols, TargetFileName=name)
        info = dict(details, tool=self._tool, operation=operation)
        try:
            await self.live_check_off_loop()
        except Exception as exc:
            msg = f"{operation} {name} refused: {exc}"
            emit(
                "file.refused",
                EventResult="Failure",
                EventResultDetails=getattr(exc, "reason", "no_grant"),
                EventMessage=msg,
                details={"tool": self._tool, "operation": operation},
                **base,
            )
            tell(self.channel, msg)
            raise asyncssh.SFTPPermissionDenied(msg) from None
        try:
            result = await call()
        except asyncssh.SFTPError as exc:
            emit(
                "file.changed",
                EventResult="Failure",
                EventResultDetails=exc.reason or None,
                details=info,
                **base,
            )
            raise
        emit("file.changed", EventResult="Success", details=info, **base)
        return result

    async def realpath(self, path: bytes) -> bytes:
        result: bytes = await self._up.realpath(path or b".")
        return result

    async def stat(self, path: bytes) -> SFTPAttrs:
        return await self._up.stat(path)

    async def lstat(self, path: bytes) -> SFTPAttrs:
        return await self._up.lstat(path)

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self._change(
            "setstat", path, lambda: self._up.setstat(path, attrs), attrs=describe_attrs(attrs)
        )

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        async for name in self._up.scandir(path):
            yield name

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self._change("mkdir", path, lambda: self._up.mkdir(path, attrs))

    async def rmdir(self, path: bytes) -> None:
        await self._change("rmdir", path, lambda: self._up.rmdir(path))

    async def remove(self, path: bytes) -> None:
        await self._change("remove", path, lambda: self._up.remove(path))

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._change(
            "rename",
            newpath,
            lambda: self._up.rename(oldpath, newpath),
            from_path=os.fsdecode(oldpath),
        )

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._change(
            "rename",
            newpath,
            lambda: self._up.posix_rename(oldpath, newpath),
            from_path=os.fsdecode(oldpath),
        )

    async def readlink(self, path: bytes) -> bytes:
        result: bytes = await self._up.readlink(path)
        return result

    async def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        # asyncssh hands the server (target, link) in the order the SFTP draft names them
        await self._change(
            "symlink",
            newpath,
            lambda: self._up.symlink(oldpath, newpath),
            link_target=os.fsdecode(oldpath),
        )


class Refuser:
    """Writes the ``file.refused`` event of one refused request on a denied channel."""

    def __init__(
        self, door: Door, cols: dict[str, Any], tool: str, reason: str, message: str
    ) -> None:
        self._door = door
        self._cols = cols
        self._tool = tool
        self._reason = reason
        self._message = message
        self.count = 0

    def __call__(self, operation: str, path: bytes) -> bool:
        """Log one refusal; False once the channel has had its share and should close."""
        self.count += 1
        if self.count > MAX_REFUSAL_EVENTS:
            return False
        self._door.emit(
            "file.refused",
            EventResult="Failure",
            EventResultDetails=self._reason,
            EventMessage=self._message,
            TargetFileName=os.fsdecode(path),
            details={"tool": self._tool, "operation": operation},
            **self._cols,
        )
        return True


class DeniedSFTPServer(asyncssh.SFTPServer):
    """Answers every request with the reason file transfer is refused."""

    def __init__(
        self, chan: asyncssh.SSHServerChannel[bytes], message: str, refuse: Refuser
    ) -> None:
        super().__init__(chan)
        self._message = message
        self._refuse = refuse
        tell(chan, message)

    def _deny(self, *_args: Any, **_kw: Any) -> Any:
        raise asyncssh.SFTPPermissionDenied(self._message)

    def _logged(self, operation: str, path: bytes) -> Any:
        if not self._refuse(operation, path):
            self.channel.close()
        raise asyncssh.SFTPPermissionDenied(self._message)

    def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> Any:
        inbound = pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND)
        return self._logged("upload" if inbound else "download", path)

    def remove(self, path: bytes) -> Any:
        return self._logged("remove", path)

    def rename(self, oldpath: bytes, newpath: bytes) -> Any:
        return self._logged("rename", newpath)

    posix_rename = rename

    def symlink(self, oldpath: bytes, newpath: bytes) -> Any:
        return self._logged("symlink", newpath)

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> Any:
        return self._logged("setstat", path)

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> Any:
        return self._logged("mkdir", path)

    def rmdir(self, path: bytes) -> Any:
        return self._logged("rmdir", path)

    def exit(self) -> None:
        with contextlib.suppress(OSError, asyncssh.Error):
            self.channel.exit(1)

    realpath = stat = lstat = scandir = readlink = statvfs = _deny
