"""The RDP drive channel's own rules, on :class:`~broker.desktop.rdpdrive.Rdpdr` with
the PDUs MS-RDPEFS defines, laid out as xrdp's chansrv sends them: every PDU parsed
with bounds (a malformed or too large one is refused and the channel goes on), paths
confined to the session's drive, the drive's bounds, each file the instrument wrote
logged with its SHA-256 when it is closed, and files from the broker's side shown
only once the scan hook passed them.  Against xrdp itself: ``test_rdp_drive.py``."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from broker.desktop import rdpdrive as r
from broker.desktop.rdpdrive import DriveDir, DriveFile, DriveRefused, Rdpdr


class _Wire:
    """aardwolf's side of a channel: what the channel sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def handle_out_data(self, dataobj: Any, *_args: Any) -> tuple[bool, None]:
        self.sent.append(dataobj.to_bytes())
        return True, None

    def pdus(self) -> list[bytes]:
        out, buf = [], b""
        for chunk in self.sent:
            total, flags = struct.unpack_from("<II", chunk)
            buf = chunk[8:] if flags & 1 else buf + chunk[8:]
            if flags & 2:
                assert len(buf) == total
                out.append(buf)
        self.sent.clear()
        return out


def _events(drive: DriveDir) -> list[Any]:
    out = []
    while not drive.events.empty():
        out.append(drive.events.get_nowait())
    return out


async def _feed(ch: Rdpdr, data: bytes, chunk: int = 1600) -> None:
    for at in range(0, len(data), chunk):
        flags = (1 if at == 0 else 0) | (2 if at + chunk >= len(data) else 0)
        await ch.process_channel_data(struct.pack("<II", len(data), flags) + data[at : at + chunk])


def _io(fid: int, cid: int, major: int, minor: int = 0, args: bytes = b"") -> bytes:
    head = struct.pack(
        "<HHIIIII", r.CTYP_CORE, r.DEVICE_IOREQUEST, r.DEVICE_ID, fid, cid, major, minor
    )
    return head + args


def _create(cid: int, path: str, disposition: int = r.OPEN, options: int = 0) -> bytes:
    name = path.encode("utf-16-le") + b"\0\0"
    args = struct.pack("<IQIIIII", 0x16019F, 0, 0, 7, disposition, options, len(name)) + name
    return _io(0, cid, r.MJ_CREATE, 0, args)


def _reply(pdu: bytes) -> tuple[int, int, bytes]:
    """(completion id, status, body) of a Device I/O Response."""
    comp, packet, dev, cid, status = struct.unpack_from("<HHIII", pdu)
    assert (comp, packet, dev) == (r.CTYP_CORE, r.DEVICE_IOCOMPLETION, r.DEVICE_ID)
    return cid, status, pdu[16:]


async def _ask(ch: Rdpdr, wire: _Wire, pdu: bytes) -> tuple[int, bytes]:
    await _feed(ch, pdu)
    [reply] = wire.pdus()
    _cid, status, body = _reply(reply)
    return status, body


@pytest.fixture
async def chan(tmp_path: Path) -> tuple[Rdpdr, _Wire, DriveDir]:
    drive = DriveDir(tmp_path / "s1", max_files=4, max_bytes=10_000)
    settings = SimpleNamespace(hoshu_drive=drive)
    ch = Rdpdr(settings)
    assert settings.hoshu_rdpdr is ch
    wire = _Wire()
    ch.connection = wire
    return ch, wire, drive


async def test_the_handshake_announces_one_filesystem_named_hoshu_after_the_logon(
    chan: tuple[Rdpdr, _Wire, DriveDir],
) -> None:
    ch, wire, _drive = chan
    await _feed(ch, struct.pack("<HHHHI", r.CTYP_CORE, r.SERVER_ANNOUNCE, 1, 12, 0xABCD))
    confirm, name = wire.pdus()
    assert struct.unpack_from("<HHHHI", confirm) == (r.CTYP_CORE, r.CLIENTID_CONFIRM, 1, 12, 0xABCD)
    assert struct.unpack_from("<HH", name)[1] == r.CLIENT_NAME
    await _feed(ch, struct.pack("<HHHH", r.CTYP_CORE, r.SERVER_CAPABILITY, 0, 0))
    [caps] = wire.pdus()
    assert struct.unpack_from("<HHH", caps) == (r.CTYP_CORE, r.CLIENT_CAPABILITY, 2)
    await _feed(ch, struct.pack("<HHHHI", r.CTYP_CORE, r.CLIENTID_CONFIRM, 1, 12, 0xABCD))
    assert wire.pdus() == []  # the devices wait for the logon
    await _feed(ch, struct.pack("<HH", r.CTYP_CORE, r.USER_LOGGEDON))
    [announce] = wire.pdus()
    _c, packet, count, kind, dev = struct.unpack_from("<HHIII", announce)
    assert (packet, count, kind, dev) == (r.DEVICELIST_ANNOUNCE, 1, r.DTYP_FILESYSTEM, r.DEVICE_ID)
    assert announce[16:24] == b"hoshu\0\0\0"
    await _feed(ch, struct.pack("<HH", r.CTYP_CORE, r.USER_LOGGEDON))
    assert wire.pdus() == []  # announced once


async def test_a_file_the_instrument_writes_is_logged_with_its_sha256_when_closed(
    chan: tuple[Rdpdr, _Wire, DriveDir],
) -> None:
    ch, wire, drive = chan
    status, body = await _ask(ch, wire, _create(1, "/report.csv", r.CREATE, 0x44))
    assert status == r.SUCCESS
    fid, info = struct.unpack("<IB", body)
    assert info == 2  # FILE_CREATED
    data = "lot;result\n4711;ok 日本\n".encode()
    for off in range(0, len(data), 7):  # several writes, as FUSE makes them
        part = data[off : off + 7]
        args = struct.pack("<IQ", len(part), off) + bytes(20) + part
        status, body = await _ask(ch, wire, _io(fid, 2, r.MJ_WRITE, 0, args))
        assert status == r.SUCCESS and struct.unpack("<IB", body) == (len(part), 0)
    assert _events(drive) == []  # not before the close
    status, _ = await _ask(ch, wire, _io(fid, 3, r.MJ_CLOSE, 0, bytes(32)))
    assert status == r.SUCCESS
    sha = hashlib.sha256(data).hexdigest()
    assert _events(drive) == [DriveFile("Outbound", "report.csv", len(data), sha)]
    assert (drive.root / "report.csv").read_bytes() == data
    # read back, attributes and the listing, as chansrv asks for them
    status, body = await _ask(ch, wire, _create(4, "\\report.csv"))
    fid = struct.unpack_from("<I", body)[0]
    status, body = await _ask(
        ch, wire, _io(fid, 5, r.MJ_READ, 0, struct.pack("<IQ", 4096, 0) + bytes(20))
    )
    assert status == r.SUCCESS and body[4:] == data
    status, body = await _ask(
        ch, wire, _io(fid, 6, r.MJ_QUERY_INFORMATION, 0, struct.pack("<II", 5, 22) + bytes(24))
    )
    assert status == r.SUCCESS and struct.unpack_from("<IQQ", body) == (22, len(data), len(data))
    await _ask(ch, wire, _io(fid, 7, r.MJ_CLOSE, 0, bytes(32)))
    assert _events(drive) == []  # only read: nothing crossed
    status, body = await _ask(ch, wire, _create(8, "\\", r.OPEN, r.CO_DIRECTORY))
    root = struct.unpack_from("<I", body)[0]
    star = "\\*".encode("utf-16-le") + b"\0\0"
    query = struct.pack("<IBI", 1, 1, len(star)) + bytes(23) + star
    status, body = await _ask(ch, wire, _io(root, 9, r.MJ_DIRECTORY_CONTROL, 1, query))
    assert status == r.SUCCESS
    (n,) = struct.unpack_from("<I", body, 4 + 60)
    assert body[4 + 64 : 4 + 64 + n].decode("utf-16-le") == "report.csv"
    status, _ = await _ask(
        ch, wire, _io(root, 10, r.MJ_DIRECTORY_CONTROL, 1, struct.pack("<IBI", 1, 0, 0) + bytes(23))
    )
    assert status == r.NO_MORE_FILES


@pytest.mark.parametrize(
    "path",
    [
        "\\..\\escape",
        "/../../etc/passwd",
        "\\a\\..\\..\\b",
        "\\con:stream",
        "\\bad\x01name",
        "\\tail.",
    ],
)
async def test_a_path_that_would_leave_the_drive_or_is_odd_is_refused(
    chan: tuple[Rdpdr, _Wire, DriveDir], path: str
) -> None:
    ch, wire, drive = chan
    status, _ = await _ask(ch, wire, _create(1, path, r.OPEN_IF))
    assert status == r.OBJECT_NAME_INVALID
    [refused] = _events(drive)
    assert isinstance(refused, DriveRefused) and refused.reason == "drive_bad_name"
    assert os.listdir(drive.root) == [] and not (drive.base.parent / "escape").exists()


async def test_a_symlink_in_the_drive_is_not_followed(
    chan: tuple[Rdpdr, _Wire, DriveDir], tmp_path: Path
) -> None:
    ch, wire, drive = chan
    (tmp_path / "secret").write_text("not for the instrument")
    (drive.root / "link").symlink_to(tmp_path / "secret")
    status, _ = await _ask(ch, wire, _create(1, "\\link"))
    assert status == r.OBJECT_NAME_INVALID
    assert [e.reason for e in _events(drive)] == ["drive_bad_name"]


async def test_malformed_and_too_large_pdus_are_refused_and_the_channel_goes_on(
    chan: tuple[Rdpdr, _Wire, DriveDir],
) -> None:
    ch, wire, drive = chan
    cut = _create(1, "\\a.txt", r.CREATE)[:40]  # a create request cut short
    await _feed(ch, cut)
    assert wire.pdus() == []
    [bad] = _events(drive)
    assert bad.reason == "drive_malformed" and bad.sha256 == hashlib.sha256(cut).hexdigest()
    # a path length past the PDU's end
    lying = bytearray(_create(2, "\\a.txt", r.CREATE))
    struct.pack_into("<I", lying, 24 + 28, 4000)
    await _feed(ch, bytes(lying))
    assert [e.reason for e in _events(drive)] == ["drive_malformed"]
    # a PDU longer than the bound: refused at its first chunk, its other chunks skipped
    big = _io(
        1,
        3,
        r.MJ_WRITE,
        0,
        struct.pack("<IQ", r.MAX_IO + 100, 0) + bytes(20) + bytes(r.MAX_IO + 100),
    )
    await _feed(ch, big, chunk=1 << 16)
    assert wire.pdus() == []
    [large] = _events(drive)
    assert large.reason == "drive_too_large" and large.size == len(big) and large.sha256 is None
    # a chunk that continues nothing; then the channel still answers
    await ch.process_channel_data(struct.pack("<II", 100, 0) + bytes(20))
    assert [e.reason for e in _events(drive)] == ["drive_malformed"]
    status, _ = await _ask(ch, wire, _create(4, "\\a.txt", r.CREATE))
    assert status == r.SUCCESS


async def test_what_the_broker_filesystem_refuses_is_an_answer_not_an_end(
    chan: tuple[Rdpdr, _Wire, DriveDir],
) -> None:
    """A file named as a folder, a folder made twice: the instrument gets a status, the
    channel goes on."""
    ch, wire, drive = chan
    (drive.root / "plain.txt").write_text("x")
    status, _ = await _ask(ch, wire, _create(1, "\\plain.txt\\inner", r.CREATE))
    assert status == r.NOT_A_DIRECTORY
    assert (await _ask(ch, wire, _create(2, "\\d", r.CREATE, r.CO_DIRECTORY)))[0] == r.SUCCESS
    status, _ = await _ask(ch, wire, _create(3, "\\d", r.CREATE, r.CO_DIRECTORY))
    assert status == r.OBJECT_NAME_COLLISION
    assert (await _ask(ch, wire, _create(4, "\\d\\in.txt", r.CREATE)))[0] == r.SUCCESS
    assert _events(drive) == []


async def test_requests_the_drive_does_not_serve_are_not_supported(
    chan: tuple[Rdpdr, _Wire, DriveDir],
) -> None:
    ch, wire, _drive = chan
    _s, body = await _ask(ch, wire, _create(1, "\\", r.OPEN, r.CO_DIRECTORY))
    root = struct.unpack_from("<I", body)[0]
    for major in (0x0E, 0x11, 0x0B):  # device control, lock control, set volume information
        status, _ = await _ask(ch, wire, _io(root, 2, major, 0, bytes(32)))
        assert status == r.NOT_SUPPORTED
    status, _ = await _ask(ch, wire, _io(999, 3, r.MJ_READ, 0, bytes(32)))
    assert status == r.INVALID_HANDLE


async def test_the_drive_is_bounded_in_files_and_bytes(chan: tuple[Rdpdr, _Wire, DriveDir]) -> None:
    ch, wire, drive = chan
    _s, body = await _ask(ch, wire, _create(1, "\\big.bin", r.CREATE))
    fid = struct.unpack_from("<I", body)[0]
    args = struct.pack("<IQ", 8000, 0) + bytes(20) + bytes(8000)
    assert (await _ask(ch, wire, _io(fid, 2, r.MJ_WRITE, 0, args)))[0] == r.SUCCESS
    args = struct.pack("<IQ", 4000, 8000) + bytes(20) + bytes(4000)
    assert (await _ask(ch, wire, _io(fid, 3, r.MJ_WRITE, 0, args)))[0] == r.DISK_FULL
    assert [e.reason for e in _events(drive)] == ["drive_full"]
    for i in range(3):
        assert (await _ask(ch, wire, _create(10 + i, f"\\f{i}", r.CREATE)))[0] == r.SUCCESS
    assert (await _ask(ch, wire, _create(20, "\\f9", r.CREATE)))[0] == r.DISK_FULL
    assert [e.reason for e in _events(drive)] == ["drive_full"]


async def test_rename_and_delete_stay_inside_the_drive(chan: tuple[Rdpdr, _Wire, DriveDir]) -> None:
    ch, wire, drive = chan
    (drive.root / "old.txt").write_text("x")
    _s, body = await _ask(ch, wire, _create(1, "/old.txt"))
    fid = struct.unpack_from("<I", body)[0]

    def rename(to: str) -> bytes:
        name = to.encode("utf-16-le") + b"\0\0"
        buf = struct.pack("<BBI", 1, 0, len(name)) + name
        return _io(
            fid, 2, r.MJ_SET_INFORMATION, 0, struct.pack("<II", 10, len(buf)) + bytes(24) + buf
        )

    assert (await _ask(ch, wire, rename("\\..\\out.txt")))[0] == r.OBJECT_NAME_INVALID
    assert (await _ask(ch, wire, rename("/new.txt")))[0] == r.SUCCESS
    assert os.listdir(drive.root) == ["new.txt"]
    delete = _io(fid, 3, r.MJ_SET_INFORMATION, 0, struct.pack("<II", 13, 0) + bytes(24))
    assert (await _ask(ch, wire, delete))[0] == r.SUCCESS
    await _ask(ch, wire, _io(fid, 4, r.MJ_CLOSE, 0, bytes(32)))
    assert os.listdir(drive.root) == []


async def test_a_file_from_the_broker_appears_only_once_the_scan_passed_it(tmp_path: Path) -> None:
    seen: list[tuple[Path, list[str]]] = []

    async def scan(path: Path) -> bool:
        seen.append((path, sorted(os.listdir(tmp_path / "d" / "drive"))))  # what the drive shows
        return b"EICAR" not in path.read_bytes()

    drive = DriveDir(tmp_path / "d", scan=scan)
    assert await drive.put("manual.pdf", b"%PDF-1.4 service manual")
    assert await drive.put("virus.exe", b"X5O!P%@AP EICAR") is False
    assert await drive.put("../up.txt", b"x") is False
    (drive.root / "folder").mkdir()
    assert await drive.put("folder", b"a file over a folder") is False
    assert drive.files() == [("manual.pdf", 23)] and os.listdir(drive.root / "folder") == []
    assert os.listdir(drive.staging) == []
    ok, rejected, bad, over = _events(drive)
    assert isinstance(over, DriveRefused) and over.reason == "drive_error"
    assert ok == DriveFile(
        "Inbound", "manual.pdf", 23, hashlib.sha256(b"%PDF-1.4 service manual").hexdigest()
    )
    assert isinstance(rejected, DriveRefused) and rejected.reason == "scan_rejected"
    assert rejected.direction == "Inbound" and rejected.name == "virus.exe"
    assert isinstance(bad, DriveRefused) and bad.reason == "drive_bad_name"
    assert [p.parent for p, _shown in seen] == [drive.staging] * 3
    assert [shown for _p, shown in seen][:2] == [[], ["manual.pdf"]]  # scanned before shown
    drive.remove()
    assert not drive.base.exists()
