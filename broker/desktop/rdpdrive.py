"""The RDP drive: the ``rdpdr`` static virtual channel (MS-RDPEFS), one filesystem only.

:func:`broker.desktop.rdpclient.connect` joins this channel only when the hospital's
policy gives RDP desktops the broker's drive (``drive=``); otherwise the channel is
not even offered, and a server that asks for devices has no channel to ask on.  With
it, the broker announces one filesystem device, :data:`DEVICE_NAME`, backed by a
per-session directory of the broker's (:class:`DriveDir`), and answers the I/O
requests a read/write drive needs: create/open, close, read, write, query
information, query volume information, query directory and set information
(basic times, end of file, allocation, delete, rename).  Any other request is
answered ``STATUS_NOT_SUPPORTED``; no printer, port or smart card is announced.

**Confinement.** A path the instrument names is split on ``\\`` (and ``/``); each component is
NFC-normalised and refused (``STATUS_OBJECT_NAME_INVALID``) when empty, ``.``,
``..``, longer than :data:`MAX_NAME` characters, or holding a control character or
one of ``/ : * ? " < > |``.  No component may be a symbolic link (an ``lstat`` of
each); files are opened with ``O_NOFOLLOW``.  Every such refusal is also a
:class:`DriveRefused` event (``drive_bad_name``).

**Bounds.** One PDU (all its channel chunks) is at most :data:`MAX_PDU` bytes; a read
is answered with at most :data:`MAX_IO` bytes; the directory holds at most
:data:`MAX_FILES` entries and :data:`MAX_BYTES` bytes (a write past that is
``STATUS_DISK_FULL`` and refused, ``drive_full``).  A PDU that does not parse is
refused (``drive_malformed``, its size and SHA-256) and the channel goes on.

**Audit.** A file the instrument wrote (created, written or cut short) is a
:class:`DriveFile` event when its handle is closed: direction ``Outbound``, its
name, size and SHA-256.  A file put in from the broker's side (:meth:`DriveDir.put`,
after the scan hook) is one with direction ``Inbound``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import stat
import struct
import tempfile
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aardwolf.channels import Channel
from aardwolf.protocol.T124.userdata.constants import ChannelOption

from broker.desktop.vchannel import (
    ChunkError,
    ChunkJoiner,
    PduTooLarge,
    chunks,
)

log = logging.getLogger(__name__)

NAME = "rdpdr"
DEVICE_NAME = "hoshu"
DEVICE_ID = 1
MAX_IO = 1 << 20  # bytes one read answers or one write takes
MAX_PDU = 64 + MAX_IO  # one rdpdr PDU, its chunks put together
MAX_FILES = 256  # entries (files and folders) in one session's drive
MAX_BYTES = 256 << 20  # bytes in one session's drive
MAX_NAME = 255  # characters of one path component
MAX_DEPTH = 16  # components of one path
MAX_HANDLES = 256  # files the instrument holds open at once
MAX_EVENTS = 256
BAD_CHARS = frozenset('/:*?"<>|\\')

# MS-RDPEFS 2.2.1.1 component and packet ids
CTYP_CORE = 0x4472
SERVER_ANNOUNCE, CLIENTID_CONFIRM, CLIENT_NAME = 0x496E, 0x4343, 0x434E
DEVICELIST_ANNOUNCE, DEVICE_REPLY = 0x4441, 0x6472
DEVICE_IOREQUEST, DEVICE_IOCOMPLETION = 0x4952, 0x4943
SERVER_CAPABILITY, CLIENT_CAPABILITY, USER_LOGGEDON = 0x5350, 0x4350, 0x554C
DTYP_FILESYSTEM = 0x08
# IRP major and minor functions
MJ_CREATE, MJ_CLOSE, MJ_READ, MJ_WRITE = 0x00, 0x02, 0x03, 0x04
MJ_QUERY_INFORMATION, MJ_SET_INFORMATION = 0x05, 0x06
MJ_QUERY_VOLUME_INFORMATION, MJ_DIRECTORY_CONTROL = 0x0A, 0x0C
MN_QUERY_DIRECTORY = 0x01
# NTSTATUS
SUCCESS = 0x00000000
NO_MORE_FILES = 0x80000006
UNSUCCESSFUL = 0xC0000001
INVALID_HANDLE = 0xC0000008
INVALID_PARAMETER = 0xC000000D
NO_SUCH_FILE = 0xC000000F
ACCESS_DENIED = 0xC0000022
OBJECT_NAME_INVALID = 0xC0000033
OBJECT_NAME_COLLISION = 0xC0000035
DISK_FULL = 0xC000007F
FILE_IS_A_DIRECTORY = 0xC00000BA
NOT_SUPPORTED = 0xC00000BB
DIRECTORY_NOT_EMPTY = 0xC0000101
NOT_A_DIRECTORY = 0xC0000103
# create dispositions and options
SUPERSEDE, OPEN, CREATE, OPEN_IF, OVERWRITE, OVERWRITE_IF = range(6)
CO_DIRECTORY, CO_NON_DIRECTORY, CO_DELETE_ON_CLOSE = 0x1, 0x40, 0x1000
ATTR_READONLY, ATTR_DIRECTORY, ATTR_NORMAL = 0x1, 0x10, 0x80
_EPOCH = 11644473600  # seconds from 1601 to 1970


@dataclass(frozen=True, slots=True)
class DriveFile:
    """A file that crossed: ``Outbound`` the instrument wrote it into the drive,
    ``Inbound`` the broker's side put it there."""

    direction: str
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class DriveRefused:
    """A request or file that was refused; ``sha256`` of the bytes refused (None: not kept)."""

    reason: str
    message: str
    name: str
    size: int
    sha256: str | None
    direction: str = "Outbound"  # Inbound: a file the broker's side put in


DriveEvent = DriveFile | DriveRefused
IN = "Inbound"


class Malformed(Exception):
    """An rdpdr PDU that does not parse."""


class BadName(Exception):
    """A path the drive does not take."""


def clean_component(raw: str) -> str:
    """``raw`` as one NFC path component, or :class:`BadName`."""
    name = unicodedata.normalize("NFC", raw)
    if name in ("", ".", "..") or len(name) > MAX_NAME:
        raise BadName(f"the name {raw[:40]!r} is not taken")
    if name != name.strip() or name.endswith("."):
        raise BadName(f"the name {raw[:40]!r} begins or ends oddly")
    for ch in name:
        if ch in BAD_CHARS or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise BadName(f"the name {raw[:40]!r} holds a character that is not taken")
    return name


def split_path(path: str) -> list[str]:
    """The components of an instrument's path (``\\a\\b``; xrdp names files it opens
    or creates with ``/``, which therefore separates too); the root is ``[]``."""
    parts = path.replace("/", "\\").split("\\")
    if parts and parts[0] == "":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if len(parts) > MAX_DEPTH:
        raise BadName("a path of too many components")
    return [clean_component(p) for p in parts]


class DriveDir:
    """One session's drive: a directory of the broker's that the instrument sees.
    ``root`` holds what the instrument sees; ``staging`` (beside it, never seen)
    holds files from the broker's side until the scan hook has passed them."""

    def __init__(
        self,
        base: Path,
        *,
        max_files: int = MAX_FILES,
        max_bytes: int = MAX_BYTES,
        scan: Callable[[Path], Awaitable[bool]] | None = None,
    ) -> None:
        self.base = base
        self.root = base / "drive"
        self.staging = base / "staging"
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.scan = scan
        base.mkdir(mode=0o700, parents=True, exist_ok=False)
        self.root.mkdir(mode=0o700)
        self.staging.mkdir(mode=0o700)
        self.events: asyncio.Queue[DriveEvent | None] = asyncio.Queue(MAX_EVENTS + 1)

    def resolve(self, parts: list[str]) -> Path:
        """The path of ``parts`` under the root; no component already there may be a
        symbolic link (or anything but a file or folder)."""
        at = self.root
        for part in parts:
            at = at / part
            try:
                st = os.lstat(at)
            except FileNotFoundError:
                continue
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise BadName(f"{part!r} is neither a file nor a folder")
        return at

    def usage(self) -> tuple[int, int]:
        """Entries and bytes the drive holds now."""
        count = size = 0
        for dirpath, dirs, files in os.walk(self.root, followlinks=False):
            count += len(dirs) + len(files)
            for f in files:
                size += os.lstat(os.path.join(dirpath, f)).st_size
        return count, size

    def files(self) -> list[tuple[str, int]]:
        """The drive's files (name relative to its root with ``/``, size), sorted."""
        out: list[tuple[str, int]] = []
        for dirpath, _dirs, files in os.walk(self.root, followlinks=False):
            for f in files:
                p = Path(dirpath) / f
                out.append((p.relative_to(self.root).as_posix(), p.lstat().st_size))
        return sorted(out)

    def clean_name(self, raw: str) -> str:
        """``raw`` as the name of a file for the drive's root; ValueError if not taken."""
        try:
            return clean_component(raw)
        except BadName as exc:
            raise ValueError(str(exc)) from exc

    def file_path(self, rel: str) -> Path:
        """The path of the drive's ``rel`` (``/`` between folders, as :meth:`files`
        names them); ValueError for a name that is not taken or would leave the drive."""
        parts = rel.split("/")
        try:
            if len(parts) > MAX_DEPTH:
                raise BadName("a path of too many components")
            return self.resolve([clean_component(p) for p in parts])
        except BadName as exc:
            raise ValueError(str(exc)) from exc

    async def put(self, name: str, data: bytes) -> bool:
        """Put ``data`` in the drive's root as ``name`` (from the broker's side): it is
        scanned first, and appears only once the scan passed and the bounds hold.
        Returns whether it appeared; either way an event says so."""
        sha = hashlib.sha256(data).hexdigest()
        try:
            clean = clean_component(name)
        except BadName as exc:
            self.put_event(DriveRefused("drive_bad_name", str(exc), name[:80], len(data), sha, IN))
            return False
        count, size = self.usage()
        target = self.resolve([clean])
        if count + 1 > self.max_files or size + len(data) > self.max_bytes:
            msg = f"the drive holds at most {self.max_files} files and {self.max_bytes} bytes"
            self.put_event(DriveRefused("drive_full", msg, clean, len(data), sha, IN))
            return False
        fd, staged_name = tempfile.mkstemp(dir=self.staging)  # unseen by the instrument
        staged = Path(staged_name)
        try:
            await asyncio.to_thread(_write_all, fd, data)
            if self.scan is not None and not await self.scan(staged):
                msg = f"{clean} was rejected by the hospital's file scan"
                self.put_event(DriveRefused("scan_rejected", msg, clean, len(data), sha, IN))
                return False
            await asyncio.to_thread(os.replace, staged, target)
        except OSError as exc:
            msg = f"{clean} could not be put on the drive: {exc.strerror}"
            self.put_event(DriveRefused("drive_error", msg, clean, len(data), sha, IN))
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)  # a small directory entry: no thread for it
        self.put_event(DriveFile("Inbound", clean, len(data), sha))
        return True

    def remove(self) -> None:
        """The drive is gone (the session ended)."""
        shutil.rmtree(self.base, ignore_errors=True)

    def put_event(self, event: DriveEvent | None) -> None:
        if event is None and self.events.full():
            self.events.get_nowait()
        if event is not None and self.events.qsize() >= MAX_EVENTS:
            log.warning("drive events are not taken: one is dropped")
            return
        self.events.put_nowait(event)


@dataclass
class _Handle:
    path: Path
    parts: list[str]
    is_dir: bool
    fd: int | None = None
    written: bool = False
    delete: bool = False
    listing: list[str] | None = None
    pattern: str = "*"
    extra: dict[str, Any] = field(default_factory=dict)


def header(packet: int) -> bytes:
    return struct.pack("<HH", CTYP_CORE, packet)


def completion(cid: int, status: int, body: bytes = b"") -> bytes:
    """A Device I/O Response (MS-RDPEFS 2.2.1.5) for completion ``cid``."""
    return header(DEVICE_IOCOMPLETION) + struct.pack("<III", DEVICE_ID, cid, status) + body


def _utf16z(data: bytes) -> str:
    if len(data) % 2:
        raise Malformed("a UTF-16 name of an odd number of bytes")
    return data.decode("utf-16-le", "strict").split("\0", 1)[0]


_ERRNO = {
    errno.ENOENT: NO_SUCH_FILE,
    errno.EEXIST: OBJECT_NAME_COLLISION,
    errno.ENOTDIR: NOT_A_DIRECTORY,
    errno.EISDIR: FILE_IS_A_DIRECTORY,
    errno.ENOTEMPTY: DIRECTORY_NOT_EMPTY,
    errno.ELOOP: OBJECT_NAME_INVALID,  # a symbolic link met by O_NOFOLLOW
    errno.EACCES: ACCESS_DENIED,
    errno.ENOSPC: DISK_FULL,
}


def _digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of the file at ``path``."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _status(reply: bytes) -> int:
    return int(struct.unpack_from("<I", reply, 12)[0])


def _filetime(t: float) -> int:
    return int((t + _EPOCH) * 10_000_000)


class Rdpdr(Channel):  # type: ignore[misc]
    """The ``rdpdr`` channel of one RDP connection, serving one :class:`DriveDir`."""

    name = NAME

    def __init__(self, iosettings: Any) -> None:
        super().__init__(NAME, ChannelOption.INITIALIZED)
        iosettings.hoshu_rdpdr = self
        self.drive: DriveDir = iosettings.hoshu_drive
        self.announced = False
        self._client_id = 0
        self._handles: dict[int, _Handle] = {}
        self._next_id = 1
        self._chunks = ChunkJoiner(MAX_PDU)
        self._closed: _Handle | None = None
        self._lock = asyncio.Lock()

    async def stop(self) -> tuple[bool, None]:
        for h in list(self._handles.values()):
            if h.fd is not None:
                os.close(h.fd)
        self._handles.clear()  # the drive outlives the connection (a resize makes another)
        return True, None

    async def process_channel_data(self, data: bytes) -> None:
        """One channel chunk from the instrument; never raises for what it sent."""
        whole: bytes | None = None
        try:
            whole = self._chunks.feed(bytes(data))
            if whole is not None:
                await self.handle(whole)
        except PduTooLarge as big:  # its other chunks are skipped
            self._refuse(
                "drive_too_large", f"a drive PDU of {big.total} bytes", "", None, big.total
            )
        except (
            ChunkError,
            Malformed,
            struct.error,
            ValueError,
            IndexError,
            UnicodeDecodeError,
        ) as exc:
            bad = whole if whole is not None else self._chunks.drop(bytes(data))
            self._refuse("drive_malformed", f"a drive PDU that does not parse: {exc}", "", bad)

    # --- the protocol ---------------------------------------------------------------

    async def handle(self, pdu: bytes) -> None:
        """One whole rdpdr PDU of the server."""
        if len(pdu) < 4:
            raise Malformed("a drive PDU shorter than its header")
        component, packet = struct.unpack_from("<HH", pdu)
        body = pdu[4:]
        if component != CTYP_CORE:
            log.info("an rdpdr PDU of component 0x%04x is ignored", component)
            return
        if packet == SERVER_ANNOUNCE:
            if len(body) < 8:
                raise Malformed("a server announce cut short")
            (self._client_id,) = struct.unpack_from("<I", body, 4)
            await self._send(
                header(CLIENTID_CONFIRM) + struct.pack("<HHI", 1, 0x000C, self._client_id)
            )
            name = "hoshu".encode("utf-16-le") + b"\0\0"
            await self._send(header(CLIENT_NAME) + struct.pack("<III", 1, 0, len(name)) + name)
        elif packet == SERVER_CAPABILITY:
            general = struct.pack(
                "<HHIIIHHIIIIII", 1, 44, 2, 0, 0, 1, 0x000C, 0xFFFF, 0, 0x7, 0, 0, 0
            )
            drive = struct.pack("<HHI", 4, 8, 2)
            await self._send(header(CLIENT_CAPABILITY) + struct.pack("<HH", 2, 0) + general + drive)
        elif packet == USER_LOGGEDON or (packet == CLIENTID_CONFIRM and not self.announced):
            if packet == CLIENTID_CONFIRM:
                return  # before the capabilities are through; the announce waits for logon
            await self._announce()
        elif packet == DEVICE_REPLY:
            if len(body) < 8:
                raise Malformed("a device reply cut short")
            _dev, result = struct.unpack_from("<II", body)
            log.info("the instrument answered the drive's announce: 0x%08x", result)
        elif packet == DEVICE_IOREQUEST:
            await self._io(body)

    async def _announce(self) -> None:
        if self.announced:
            return
        self.announced = True
        full = DEVICE_NAME.encode("utf-16-le") + b"\0\0"
        dos = DEVICE_NAME.encode("ascii")[:8].ljust(8, b"\0")
        device = struct.pack("<II", DTYP_FILESYSTEM, DEVICE_ID) + dos + struct.pack("<I", len(full))
        await self._send(header(DEVICELIST_ANNOUNCE) + struct.pack("<I", 1) + device + full)

    async def _io(self, body: bytes) -> None:
        if len(body) < 20:
            raise Malformed("a device I/O request cut short")
        dev, fid, cid, major, minor = struct.unpack_from("<IIIII", body)
        args = body[20:]
        if dev != DEVICE_ID:
            await self._send(completion(cid, NO_SUCH_FILE, bytes(5)))
            return
        try:
            reply = self._dispatch(fid, cid, major, minor, args)
        except BadName as exc:
            self._refuse("drive_bad_name", str(exc), "", None)
            reply = completion(cid, OBJECT_NAME_INVALID, bytes(5))
        except OSError as exc:  # the broker's filesystem said no: the instrument is told
            log.info("a drive request failed: %s", exc)
            reply = completion(cid, _ERRNO.get(exc.errno or 0, UNSUCCESSFUL), bytes(5))
        closed, self._closed = self._closed, None
        if closed is not None:  # a file the instrument wrote: hashed off the event loop
            size, sha = await asyncio.to_thread(_digest, closed.path)
            self.drive.put_event(DriveFile("Outbound", "/".join(closed.parts), size, sha))
        log.debug("drive I/O 0x%x/0x%x on %d: 0x%08x", major, minor, fid, _status(reply))
        await self._send(reply)

    def _dispatch(self, fid: int, cid: int, major: int, minor: int, a: bytes) -> bytes:
        if major == MJ_CREATE:
            return self._create(cid, a)
        h = self._handles.get(fid)
        if h is None:
            return completion(cid, INVALID_HANDLE, bytes(5))
        if major == MJ_CLOSE:
            self._close(fid, h)
            return completion(cid, SUCCESS, bytes(5))
        if major == MJ_READ:
            return self._read(cid, h, a)
        if major == MJ_WRITE:
            return self._write(cid, h, a)
        if major == MJ_QUERY_INFORMATION:
            return self._query_info(cid, h, a)
        if major == MJ_SET_INFORMATION:
            return self._set_info(cid, h, a)
        if major == MJ_QUERY_VOLUME_INFORMATION:
            return self._query_volume(cid, a)
        if major == MJ_DIRECTORY_CONTROL and minor == MN_QUERY_DIRECTORY:
            return self._query_dir(cid, h, a)
        return completion(cid, NOT_SUPPORTED, bytes(5))

    def _create(self, cid: int, a: bytes) -> bytes:
        if len(a) < 32:
            raise Malformed("a create request cut short")
        _access, _alloc, _attrs, _share, disp, opts, plen = struct.unpack_from("<IQIIIII", a)
        if 32 + plen > len(a):
            raise Malformed("a create request shorter than its path")
        parts = split_path(_utf16z(a[32 : 32 + plen]))
        path = self.drive.resolve(parts)
        if len(self._handles) >= MAX_HANDLES:
            return completion(cid, UNSUCCESSFUL, bytes(5))
        exists = os.path.lexists(path)
        is_dir = exists and stat.S_ISDIR(os.lstat(path).st_mode)
        info = 1  # FILE_OPENED
        if exists and disp == CREATE:
            return completion(cid, OBJECT_NAME_COLLISION, bytes(5))
        if not exists and disp in (OPEN, OVERWRITE):
            # NO_SUCH_FILE, as FreeRDP answers: xrdp reads only it as "no such file"
            return completion(cid, NO_SUCH_FILE, bytes(5))
        if exists and is_dir and opts & CO_NON_DIRECTORY:
            return completion(cid, FILE_IS_A_DIRECTORY, bytes(5))
        if exists and not is_dir and opts & CO_DIRECTORY:
            return completion(cid, NOT_A_DIRECTORY, bytes(5))
        handle = _Handle(path, parts, is_dir)
        if not exists:
            if not path.parent.is_dir():
                return completion(cid, NO_SUCH_FILE, bytes(5))
            count, _size = self.drive.usage()
            if count + 1 > self.drive.max_files:
                msg = f"the drive holds at most {self.drive.max_files} files"
                self._refuse("drive_full", msg, "/".join(parts), None)
                return completion(cid, DISK_FULL, bytes(5))
            if opts & CO_DIRECTORY:
                path.mkdir(mode=0o700)
                handle.is_dir = True
            else:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                handle.fd, handle.written = fd, True
            info = 2  # FILE_CREATED
        elif not is_dir:
            flags = os.O_RDWR | os.O_NOFOLLOW
            if disp in (SUPERSEDE, OVERWRITE, OVERWRITE_IF):
                flags |= os.O_TRUNC
                handle.written = True
                info = 3  # FILE_OVERWRITTEN
            handle.fd = os.open(path, flags)
        handle.delete = bool(opts & CO_DELETE_ON_CLOSE)
        fid = self._next_id
        self._next_id += 1
        self._handles[fid] = handle
        return completion(cid, SUCCESS, struct.pack("<IB", fid, info))

    def _close(self, fid: int, h: _Handle) -> None:
        del self._handles[fid]
        if h.fd is not None:
            os.close(h.fd)
        if h.delete:
            try:
                h.path.rmdir() if h.is_dir else h.path.unlink()
            except OSError as exc:
                log.info("a drive entry was not deleted: %s", exc)
            return
        if h.written and not h.is_dir and h.path.is_file():
            self._closed = h  # logged by _io once hashed

    def _read(self, cid: int, h: _Handle, a: bytes) -> bytes:
        if len(a) < 12:
            raise Malformed("a read request cut short")
        length, offset = struct.unpack_from("<IQ", a)
        if h.fd is None:
            return completion(cid, FILE_IS_A_DIRECTORY, struct.pack("<I", 0))
        data = os.pread(h.fd, min(length, MAX_IO), offset)
        return completion(cid, SUCCESS, struct.pack("<I", len(data)) + data)

    def _write(self, cid: int, h: _Handle, a: bytes) -> bytes:
        if len(a) < 32:
            raise Malformed("a write request cut short")
        length, offset = struct.unpack_from("<IQ", a)
        data = a[32 : 32 + length]
        if len(data) != length:
            raise Malformed("a write request shorter than its data")
        if h.fd is None:
            return completion(cid, FILE_IS_A_DIRECTORY, struct.pack("<IB", 0, 0))
        grows = max(0, offset + length - os.fstat(h.fd).st_size)
        if grows and self.drive.usage()[1] + grows > self.drive.max_bytes:
            msg = f"the drive holds at most {self.drive.max_bytes} bytes"
            self._refuse("drive_full", msg, "/".join(h.parts), None, offset + length)
            return completion(cid, DISK_FULL, struct.pack("<IB", 0, 0))
        os.pwrite(h.fd, data, offset)
        h.written = True
        return completion(cid, SUCCESS, struct.pack("<IB", length, 0))

    def _stat(self, h: _Handle) -> os.stat_result:
        return os.fstat(h.fd) if h.fd is not None else os.lstat(h.path)

    def _query_info(self, cid: int, h: _Handle, a: bytes) -> bytes:
        if len(a) < 8:
            raise Malformed("a query information request cut short")
        (klass,) = struct.unpack_from("<I", a)
        st = self._stat(h)
        attrs = ATTR_DIRECTORY if h.is_dir else ATTR_NORMAL
        if klass == 4:  # FileBasicInformation
            t = _filetime(st.st_mtime)
            buf = struct.pack("<QQQQI", _filetime(st.st_ctime), _filetime(st.st_atime), t, t, attrs)
        elif klass == 5:  # FileStandardInformation
            size = 0 if h.is_dir else st.st_size
            buf = struct.pack("<QQIBB", size, size, 1, int(h.delete), int(h.is_dir))
        elif klass == 35:  # FileAttributeTagInformation
            buf = struct.pack("<II", attrs, 0)
        else:
            return completion(cid, NOT_SUPPORTED, struct.pack("<I", 0))
        return completion(cid, SUCCESS, struct.pack("<I", len(buf)) + buf)

    def _query_volume(self, cid: int, a: bytes) -> bytes:
        if len(a) < 8:
            raise Malformed("a query volume request cut short")
        (klass,) = struct.unpack_from("<I", a)
        _count, used = self.drive.usage()
        units, free = self.drive.max_bytes // 4096, max(0, self.drive.max_bytes - used) // 4096
        label = DEVICE_NAME.encode("utf-16-le")
        if klass == 1:  # FileFsVolumeInformation
            buf = struct.pack("<QIIBB", _filetime(time.time()), 0x484F5348, len(label), 0, 0)
            buf += label
        elif klass == 3:  # FileFsSizeInformation
            buf = struct.pack("<QQII", units, free, 8, 512)
        elif klass == 4:  # FileFsDeviceInformation: FILE_DEVICE_DISK
            buf = struct.pack("<II", 7, 0)
        elif klass == 5:  # FileFsAttributeInformation
            fs = "FAT32".encode("utf-16-le")
            buf = struct.pack("<III", 0x3, MAX_NAME, len(fs)) + fs
        elif klass == 7:  # FileFsFullSizeInformation
            buf = struct.pack("<QQQII", units, free, free, 8, 512)
        else:
            return completion(cid, NOT_SUPPORTED, struct.pack("<I", 0))
        return completion(cid, SUCCESS, struct.pack("<I", len(buf)) + buf)

    def _query_dir(self, cid: int, h: _Handle, a: bytes) -> bytes:
        if len(a) < 32:
            raise Malformed("a query directory request cut short")
        klass, initial, plen = struct.unpack_from("<IBI", a)
        if initial:
            if 32 + plen > len(a):
                raise Malformed("a query directory request shorter than its path")
            raw = _utf16z(a[32 : 32 + plen])
            pattern = raw.rsplit("\\", 1)[-1] if raw else "*"
            if not h.is_dir:
                return completion(cid, NOT_A_DIRECTORY, struct.pack("<IB", 0, 0))
            names = sorted(os.listdir(h.path))
            if pattern != "*":
                names = [n for n in names if n == unicodedata.normalize("NFC", pattern)]
            h.listing = names
        if not h.listing:
            h.listing = []
            return completion(cid, NO_MORE_FILES, struct.pack("<IB", 0, 0))
        name = h.listing.pop(0)
        try:
            st = os.lstat(h.path / name)
        except OSError:
            return self._query_dir(cid, h, struct.pack("<IBI", klass, 0, 0) + bytes(23))
        is_dir = stat.S_ISDIR(st.st_mode)
        enc = name.encode("utf-16-le")
        size = 0 if is_dir else st.st_size
        attrs = ATTR_DIRECTORY if is_dir else ATTR_NORMAL
        times = struct.pack(
            "<QQQQ",
            _filetime(st.st_ctime),
            _filetime(st.st_atime),
            _filetime(st.st_mtime),
            _filetime(st.st_mtime),
        )
        if klass == 12:  # FileNamesInformation
            buf = struct.pack("<III", 0, 0, len(enc)) + enc
        elif klass in (1, 2, 3):
            buf = (
                struct.pack("<II", 0, 0) + times + struct.pack("<QQII", size, size, attrs, len(enc))
            )
            if klass == 2:
                buf += struct.pack("<I", 0)
            elif klass == 3:
                buf += struct.pack("<IBB", 0, 0, 0) + bytes(24)
            buf += enc
        else:
            return completion(cid, NOT_SUPPORTED, struct.pack("<IB", 0, 0))
        return completion(cid, SUCCESS, struct.pack("<I", len(buf)) + buf)

    def _set_info(self, cid: int, h: _Handle, a: bytes) -> bytes:
        if len(a) < 32:
            raise Malformed("a set information request cut short")
        klass, length = struct.unpack_from("<II", a)
        buf = a[32 : 32 + length]
        if len(buf) != length:
            raise Malformed("a set information request shorter than its buffer")
        ok = completion(cid, SUCCESS, struct.pack("<IB", length, 0))
        if klass in (4, 19):  # FileBasicInformation, FileAllocationInformation: kept as is
            return ok
        if klass == 20:  # FileEndOfFileInformation
            if len(buf) < 8 or h.fd is None:
                return completion(cid, INVALID_PARAMETER, struct.pack("<IB", 0, 0))
            (end,) = struct.unpack_from("<Q", buf)
            grows = max(0, end - os.fstat(h.fd).st_size)
            if grows and self.drive.usage()[1] + grows > self.drive.max_bytes:
                self._refuse(
                    "drive_full",
                    "a file cut to past the drive's bound",
                    "/".join(h.parts),
                    None,
                    end,
                )
                return completion(cid, DISK_FULL, struct.pack("<IB", 0, 0))
            os.ftruncate(h.fd, end)
            h.written = True
            return ok
        if klass == 13:  # FileDispositionInformation (xrdp sends none: delete)
            h.delete = not buf or bool(buf[0])
            if h.delete and h.is_dir and any(h.path.iterdir()):
                h.delete = False
                return completion(cid, DIRECTORY_NOT_EMPTY, struct.pack("<IB", 0, 0))
            return ok
        if klass == 10:  # FileRenameInformation
            if len(buf) < 6:
                raise Malformed("a rename cut short")
            replace, _root, nlen = struct.unpack_from("<BBI", buf)
            if 6 + nlen > len(buf):
                raise Malformed("a rename shorter than its name")
            parts = split_path(_utf16z(buf[6 : 6 + nlen]))
            if not parts:
                return completion(cid, ACCESS_DENIED, struct.pack("<IB", 0, 0))
            target = self.drive.resolve(parts)
            if os.path.lexists(target) and not replace:
                return completion(cid, OBJECT_NAME_COLLISION, struct.pack("<IB", 0, 0))
            if not target.parent.is_dir():
                return completion(cid, NO_SUCH_FILE, struct.pack("<IB", 0, 0))
            os.replace(h.path, target)
            h.path, h.parts = target, parts
            return ok
        return completion(cid, NOT_SUPPORTED, struct.pack("<IB", 0, 0))

    async def _send(self, data: bytes) -> None:
        async with self._lock:
            for chunk in chunks(data):
                await self.send_channel_data(chunk, None, None, None, False)

    def _refuse(
        self, reason: str, message: str, name: str, data: bytes | None, size: int = 0
    ) -> None:
        if data is not None:
            size = len(data)
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        log.info("drive request refused (%s): %s", reason, message)
        self.drive.put_event(DriveRefused(reason, message, name, size, sha))


__all__ = [
    "DEVICE_NAME",
    "MAX_PDU",
    "NAME",
    "DriveDir",
    "DriveEvent",
    "DriveFile",
    "DriveRefused",
    "Rdpdr",
    "clean_component",
    "split_path",
]
