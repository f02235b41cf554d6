"""The RDP drive, off by default and switched on by the hospital's policy.

The instrument is Debian's xrdp in front of a real Xvnc, with xrdp's own channel
server (``xrdp-chansrv``) on that display: a drive the RDP client announces is what
chansrv mounts (FUSE) as ``~/thinclient_drives/<name>``, where the instrument's
programs read and write it.  The broker is the RDP client, run by the real desktop
gate with the store's policy.

Proved here: with the hospital's drive switch on, a file put in the session's drive
from the broker's side shows on the instrument with the same bytes, and a file the
instrument writes there arrives in the broker's directory, logged as
``file.transferred`` (tool ``drive``, direction, name, size, SHA-256) and recorded
(``D``); a name that would leave the drive is refused (``file.refused``
``drive_bad_name``) and nothing is written outside it; the drive is removed when the
session ends.  With the switch off (the default) the drive channel is not offered: no
drive appears on the instrument and nothing is logged.  The channel's own rules are
checked on :class:`~broker.desktop.rdpdrive.Rdpdr` in ``test_rdpdrive.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from broker.desktop.rdpbridge import rdp_size
from broker.desktop.recording import read_records
from broker.desktop.rfb import EXT_DESKTOP_SIZE, RAW
from broker.store.directory import StoreAccessPolicy
from tests.desktop.conftest import (
    Desk,
    Xrdp,
    Xvnc,
    _free_port,
    _listening,
    _self_signed,
    pinned_desk,
)
from tests.desktop.helpers import (
    console_sign_in,
    start_chansrv,
    start_xrdp_with_clipboard,
    stop,
    ws_path,
)
from tests.desktop.rfbscreen import Screen, screen_until
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll, poll_sync
from tests.support.served import served

SIZE = (800, 600)
FROM_BROKER = "校正手順 calibration steps\n".encode() * 300  # ~10 KB
FROM_INSTRUMENT = bytes(range(256)) * 600  # 150 KB: many FUSE writes


@pytest.fixture
def xrdp_drive(tmp_path: Path, xvnc: Xvnc) -> Iterator[Xrdp]:
    """xrdp with its drive channel (rdpdr) served by xrdp-chansrv on the Xvnc's display;
    chansrv mounts redirected drives in ``tmp_path/thinclient_drives`` (its HOME)."""
    cert, key = _self_signed(tmp_path, "rdp-a")
    chansrv = start_chansrv(tmp_path, xvnc.display)
    port = _free_port()
    proc = start_xrdp_with_clipboard(tmp_path, xvnc, port, "rdp-a", channels=("rdpdr",))
    try:
        poll_sync(lambda: _listening(port) or proc.poll() is not None, 10, "xrdp to listen")
        assert proc.poll() is None, (tmp_path / f"xrdp-{port}.log").read_text()
        yield Xrdp(port, xvnc, cert, key)
    finally:
        stop(proc, chansrv)


def _gate_drives(d: Desk, tmp_path: Path) -> Path:
    """The gate as build_broker makes it: the store's drive switch, a drives folder."""
    d.gate.drive_allowed = StoreAccessPolicy(d.s).drive_allowed
    d.gate.drives_dir = tmp_path / "broker-data" / "drives"
    return d.gate.drives_dir


async def _open(d: Desk, url: str, http: httpx.AsyncClient) -> WsClient:
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    init = await ws.rfb_handshake()
    assert struct.unpack(">HH", init[:4]) == SIZE
    await ws.send(struct.pack(">BxHi", 2, 1, RAW))
    await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, *SIZE))
    return ws


async def _on_instrument(fn: object, *args: object) -> object:
    """A file operation of a program on the instrument (blocking: FUSE waits on chansrv,
    which waits on the broker), off the event loop and bounded."""
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), 20)  # type: ignore[arg-type]


def _exists(path: Path) -> bool:
    return path.exists()


async def test_with_the_drive_on_files_cross_both_ways_logged_and_recorded(
    tmp_path: Path, xrdp_drive: Xrdp
) -> None:
    mount = tmp_path / "thinclient_drives" / "hoshu"
    async with pinned_desk(tmp_path, xrdp_drive, rdp_size=SIZE) as d:
        drives = _gate_drives(d, tmp_path)
        d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"drive_allowed": True})
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws = await _open(d, url, http)
            [live] = d.registry.list()
            drive = d.gate.drive_of(live.session_id)
            assert drive is not None and drive.base == drives / live.session_id
            for _ in range(100):  # chansrv mounts the drive once the broker announced it
                if await _on_instrument(_exists, mount):
                    break
                await asyncio.sleep(0.1)
            assert await _on_instrument(_exists, mount), "no drive on the instrument"
            # broker -> instrument: scanned (no hook here), then on the drive
            assert await drive.put("手順.txt", FROM_BROKER)
            assert await _on_instrument((mount / "手順.txt").read_bytes) == FROM_BROKER
            # instrument -> broker: written there, closed, logged with its SHA-256
            await _on_instrument((mount / "result.bin").write_bytes, FROM_INSTRUMENT)
            await poll(
                lambda: len(d.events.of_type("file.transferred")) == 2, 10, "the write's log"
            )
            assert (drive.root / "result.bin").read_bytes() == FROM_INSTRUMENT
            # a name that would leave the drive (a Linux name with backslashes)
            with pytest.raises(OSError):
                await _on_instrument((mount / "..\\..\\escape.txt").write_bytes, b"out")
            await poll(lambda: bool(d.events.of_type("file.refused")), 10, "the refusal")
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
        inbound, outbound = d.events.of_type("file.transferred")
        assert inbound.get("NetworkDirection") == "Inbound"
        assert inbound.get("TargetFileName") == "手順.txt"
        assert inbound.get("TargetFileSize") == len(FROM_BROKER)
        assert inbound.get("TargetFileSHA256") == hashlib.sha256(FROM_BROKER).hexdigest()
        assert inbound.details == {"tool": "drive", "operation": "upload"}
        assert outbound.get("NetworkDirection") == "Outbound"
        assert outbound.get("TargetFileName") == "result.bin"
        assert outbound.get("TargetFileSize") == len(FROM_INSTRUMENT)
        assert outbound.get("TargetFileSHA256") == hashlib.sha256(FROM_INSTRUMENT).hexdigest()
        assert outbound.details == {"tool": "drive", "operation": "download"}
        refusals = {e.get("EventResultDetails") for e in d.events.of_type("file.refused")}
        assert refusals == {"drive_bad_name"}
        assert list(tmp_path.rglob("*escape*")) == []
        _header, records = read_records(d.store.read(f"{live.session_id}.rfb"))
        marks = [json.loads(data) for _ms, kind, data in records if kind == b"D"]
        assert [(m["direction"], m["name"], m["sha256"]) for m in marks] == [
            ("Inbound", "手順.txt", hashlib.sha256(FROM_BROKER).hexdigest()),
            ("Outbound", "result.bin", hashlib.sha256(FROM_INSTRUMENT).hexdigest()),
        ]
        assert not drive.base.exists()  # removed with the session
        assert os.listdir(drives) == []


async def test_with_the_drive_off_no_drive_appears_on_the_instrument(
    tmp_path: Path, xrdp_drive: Xrdp
) -> None:
    """The policy as it comes (drive off), the server asking for devices as always:
    the broker offers no drive channel, so chansrv never gets a drive to mount."""
    drives_root = tmp_path / "thinclient_drives"
    async with pinned_desk(tmp_path, xrdp_drive, rdp_size=SIZE) as d:
        drives = _gate_drives(d, tmp_path)
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws = await _open(d, url, http)
            [live] = d.registry.list()
            assert d.gate.drive_of(live.session_id) is None
            # with the switch on the drive is there within a second (the test above);
            # for 3 s of a live session now, none comes
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3):
                    while True:
                        op, payload = await ws.frame()
                        assert op == 0x2
                        if payload[0] == 0:  # an update: ask for the next, as noVNC does
                            await ws.send(struct.pack(">BBHHHH", 3, 1, 0, 0, *SIZE))
            shown = await _on_instrument(
                lambda: os.listdir(drives_root) if drives_root.exists() else []
            )
            assert "hoshu" not in shown  # type: ignore[operator]
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
        assert not d.events.of_type("file.transferred") and not d.events.of_type("file.refused")
        assert not drives.exists()
        [log] = tmp_path.glob("xrdp-chansrv*.log")  # chansrv ran, and took no drive
        assert "Detected remote drive" not in log.read_text()


async def test_the_drive_stays_through_a_resize(tmp_path: Path, xrdp_drive: Xrdp) -> None:
    """A resize is a new RDP connection: it is given the same drive, so the files on it
    stay and a file written after the resize is logged as before."""
    mount = tmp_path / "thinclient_drives" / "hoshu"
    async with pinned_desk(tmp_path, xrdp_drive, rdp_size=SIZE) as d:
        _gate_drives(d, tmp_path)
        d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"drive_allowed": True})
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            token = await console_sign_in(http, d, "alice")
            path = ws_path(d.port, token)
            ws = await ws_open(url, path, cookie=f"hoshu_session={token}", origin=url)
            init = await ws.rfb_handshake()
            seen = Screen(*struct.unpack(">HH", init[:4]))
            await ws.send(struct.pack(">BxHii", 2, 2, RAW, EXT_DESKTOP_SIZE))
            await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, *SIZE))
            await screen_until(ws, seen, lambda: bool(seen.sizes), 20)
            [live] = d.registry.list()
            drive = d.gate.drive_of(live.session_id)
            assert drive is not None
            for _ in range(100):
                if await _on_instrument(_exists, mount):
                    break
                await asyncio.sleep(0.1)
            await _on_instrument((mount / "before.txt").write_bytes, b"before the resize")
            await poll(lambda: len(d.events.of_type("file.transferred")) == 1, 10, "the log")
            want = rdp_size(1024, 768)
            resize = struct.pack(">BxHHBxIHHHHI", 251, *want, 1, 0, 0, 0, *want, 0)
            await ws.send(resize)
            await screen_until(ws, seen, lambda: (seen.w, seen.h) == want, 20)
            assert d.gate.drive_of(live.session_id) is drive  # the same drive, same folder
            after = mount / "after.txt"
            for _ in range(100):  # chansrv mounts the drive again for the new connection
                try:
                    await _on_instrument(after.write_bytes, b"after the resize")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            await poll(lambda: len(d.events.of_type("file.transferred")) == 2, 10, "the log")
            assert await _on_instrument((mount / "before.txt").read_bytes) == b"before the resize"
            assert drive.files() == [("after.txt", 16), ("before.txt", 17)]
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
        names = [e.get("TargetFileName") for e in d.events.of_type("file.transferred")]
        assert names == ["before.txt", "after.txt"]
        assert not drive.base.exists()
