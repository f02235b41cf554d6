"""The desktop page's drive routes over HTTP, against a real RDP session (xrdp in front
of Xvnc, its chansrv mounting the drive as ``~/thinclient_drives/hoshu``).

Proved here: the engineer whose live session it is lists the drive, puts a file on it
(raw body, Japanese name percent-encoded in a header, the CSRF token in another) and
downloads a file the instrument wrote (an attachment, RFC 5987 name, nosniff), each
logged; a missing or wrong CSRF token, a foreign Origin, a name with a path escape, a
body past the route's limit (declared or streamed) are refused and nothing is written;
another engineer, an approver of the hospital, a session that ended and a session
whose hospital keeps the drive off are refused (``file.refused``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx

from broker.access.people import NewUser
from broker.console.desktop import DRIVE_UPLOAD_MAX
from broker.console.web import csrf_for
from broker.desktop.rdpdrive import DriveDir
from tests.control.conftest import PASSWORD, actor_for
from tests.desktop.conftest import INSTRUMENT, Desk, Xrdp, pinned_desk
from tests.desktop.conftest import desk as desk
from tests.desktop.helpers import console_sign_in
from tests.desktop.test_rdp_drive import (  # noqa: F401  (fixture)
    _exists,
    _gate_drives,
    _on_instrument,
    _open,
    xrdp_drive,
)
from tests.support import poll
from tests.support.served import served

NAME = "校正手順 ロット４７.txt"
DATA = "装置のドライブへ\n".encode() * 2000
FROM_INSTRUMENT = bytes(range(256)) * 300


def _path(d: Desk) -> str:
    return f"/console/desktop/{INSTRUMENT}/drive?port={d.port}"


def _put_headers(token: str, url: str, name: str = NAME) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "X-Hoshu-File-Name": quote(name),
        "X-Hoshu-CSRF": csrf_for(token),
        "Origin": url,
    }


async def _live_drive(d: Desk) -> DriveDir:
    [live] = d.registry.list()
    drive = d.gate.drive_of(live.session_id)
    assert drive is not None
    return drive


async def _declared_too_large(url: str, path: str, token: str) -> bytes:
    """The status of a POST declaring one byte more than the route takes (raw: an HTTP
    client will not declare more than it sends); the body is never sent."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(
        f"{k}: {v}\r\n"
        for k, v in dict(
            _put_headers(token, url, "big.bin"),
            Host=f"{host}:{port}",
            Cookie=f"hoshu_session={token}",
            **{"Content-Length": str(DRIVE_UPLOAD_MAX + 1)},
        ).items()
    )
    writer.write(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return line.split()[1]


def _refusals(d: Desk) -> list[str]:
    return [str(e.get("EventResultDetails")) for e in d.events.of_type("file.refused")]


async def test_the_engineer_puts_lists_and_downloads_and_everything_else_is_refused(
    tmp_path: Path,
    xrdp_drive: Xrdp,  # noqa: F811
) -> None:
    mount = tmp_path / "thinclient_drives" / "hoshu"
    async with pinned_desk(tmp_path, xrdp_drive) as d:
        drives = _gate_drives(d, tmp_path)
        d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"drive_allowed": True})
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
            ws = await _open(d, url, http)
            token = str(http.cookies.get("hoshu_session"))
            drive = await _live_drive(d)
            await poll(lambda: _on_instrument(_exists, mount), 20, "the drive on the instrument")
            r = await http.get(_path(d))
            assert r.status_code == 200 and r.json() == {"files": []}

            # put: on the drive, with the same bytes, on the instrument too, logged
            r = await http.post(_path(d), content=DATA, headers=_put_headers(token, url))
            assert r.status_code == 200, r.text
            assert r.json() == {"name": NAME, "size": len(DATA)}
            assert await _on_instrument((mount / NAME).read_bytes) == DATA
            await poll(lambda: bool(d.events.of_type("file.transferred")), 10, "the put's log")
            [put] = d.events.of_type("file.transferred")
            assert put.get("NetworkDirection") == "Inbound"
            assert put.get("TargetFileName") == NAME
            assert put.get("TargetFileSHA256") == hashlib.sha256(DATA).hexdigest()
            assert put.get("ActorUsername") == "alice"

            # refused before anything is read or written
            before = sorted(os.listdir(drive.root))
            d.events.clear()
            no_csrf = {k: v for k, v in _put_headers(token, url).items() if k != "X-Hoshu-CSRF"}
            wrong = dict(_put_headers(token, url), **{"X-Hoshu-CSRF": "0" * 64})
            foreign = dict(_put_headers(token, url), Origin="https://evil.example")
            for headers in (no_csrf, wrong, foreign):
                r = await http.post(_path(d), content=b"nope", headers=headers)
                assert r.status_code == 403, r.text
            assert _refusals(d) == ["csrf_failed"] * 3
            d.events.clear()
            for bad in ("../escape.txt", "..", "a/b.txt", "a\\..\\b", "", "x\x00y"):
                headers = _put_headers(token, url, bad)
                r = await http.post(_path(d), content=b"escape", headers=headers)
                assert r.status_code == 422, (bad, r.text)
                assert r.json()["error"]["code"] == "drive_bad_name"
            r = await http.post(
                _path(d),
                content=b"x",
                headers=dict(_put_headers(token, url), **{"X-Hoshu-File-Name": "%FF.txt"}),
            )
            assert r.status_code == 422
            assert _refusals(d) == ["drive_bad_name"] * 7
            assert list((tmp_path / "broker-data").rglob("*escape*")) == []
            assert sorted(os.listdir(drive.root)) == before

            # too large: declared (the API's middleware), or streamed (the route)
            d.events.clear()
            status = await _declared_too_large(url, _path(d), token)
            assert status == b"413"

            async def chunks() -> AsyncIterator[bytes]:
                block = b"\0" * (1 << 20)
                for _ in range((DRIVE_UPLOAD_MAX >> 20) + 2):
                    yield block

            r = await http.post(
                _path(d), content=chunks(), headers=_put_headers(token, url, "big.bin")
            )
            assert r.status_code == 413
            assert "64 MiB" in r.json()["error"]["message"]
            assert _refusals(d) == ["drive_too_large"]
            assert not (drive.root / "big.bin").exists()
            assert sorted(os.listdir(drive.staging)) == []

            # the instrument's file: listed, downloaded with the same bytes, logged
            await _on_instrument((mount / "結果 1.bin").write_bytes, FROM_INSTRUMENT)
            await poll(
                lambda: len(d.events.of_type("file.transferred")) == 1, 10, "the write's log"
            )
            r = await http.get(_path(d))
            files = {f["name"]: f["size"] for f in r.json()["files"]}
            assert files == {NAME: len(DATA), "結果 1.bin": len(FROM_INSTRUMENT)}
            d.events.clear()
            r = await http.get(
                f"/console/desktop/{INSTRUMENT}/drive/file",
                params={"port": d.port, "file": "結果 1.bin"},
            )
            assert r.status_code == 200
            assert r.content == FROM_INSTRUMENT
            assert r.headers["content-type"] == "application/octet-stream"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["content-disposition"] == (
                "attachment; filename=\"___1.bin\"; filename*=UTF-8''" + quote("結果 1.bin")
            )
            [got] = d.events.of_type("file.transferred")
            assert got.details == {
                "tool": "drive",
                "operation": "download",
                "to": "engineer",
                "via": "console",
            }
            assert got.get("NetworkDirection") == "Outbound"
            assert got.get("TargetFileSHA256") == hashlib.sha256(FROM_INSTRUMENT).hexdigest()
            for bad in ("../../control.db", "..", "nothing.bin"):
                r = await http.get(
                    f"/console/desktop/{INSTRUMENT}/drive/file",
                    params={"port": d.port, "file": bad},
                )
                assert r.status_code == 404, bad
            assert _refusals(d) == ["drive_bad_name", "drive_bad_name", "drive_no_file"]

            # another engineer (granted too), an approver of the hospital: refused
            root = d.actor("root")
            user = d.s.people.create_user(
                root, NewUser("bob", "Person bob", "roche", ["engineer"], PASSWORD)
            )
            d.policy.actors["bob"] = actor_for(d.s, user)
            d.events.clear()
            async with httpx.AsyncClient(base_url=url, timeout=30) as other:
                bob = await console_sign_in(other, d, "bob")
                r = await other.get(_path(d))
                assert r.status_code == 404
                r = await other.post(_path(d), content=b"bob", headers=_put_headers(bob, url, "b"))
                assert r.status_code == 404
                r = await other.get(
                    f"/console/desktop/{INSTRUMENT}/drive/file",
                    params={"port": d.port, "file": NAME},
                )
                assert r.status_code == 404 and r.content != DATA
            async with httpx.AsyncClient(base_url=url, timeout=30) as appr:
                approver = await console_sign_in(appr, d, "appr")
                r = await appr.get(_path(d))
                assert r.status_code == 403
                r = await appr.post(
                    _path(d), content=b"a", headers=_put_headers(approver, url, "a")
                )
                assert r.status_code == 403
            assert _refusals(d) == ["drive_not_live"] * 3 + ["forbidden"] * 2
            assert sorted(os.listdir(drive.root)) == sorted([NAME, "結果 1.bin"])

            # the session ended: its drive is gone, and so are the routes
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
            d.events.clear()
            r = await http.get(_path(d))
            assert r.status_code == 404
            r = await http.post(_path(d), content=b"late", headers=_put_headers(token, url, "l"))
            assert r.status_code == 404
            assert _refusals(d) == ["drive_not_live"] * 2
        assert os.listdir(drives) == []


async def test_with_the_drive_off_the_routes_refuse(
    tmp_path: Path,
    xrdp_drive: Xrdp,  # noqa: F811
) -> None:
    async with pinned_desk(tmp_path, xrdp_drive) as d:
        drives = _gate_drives(d, tmp_path)
        d.grant()
        async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            ws = await _open(d, url, http)
            token = str(http.cookies.get("hoshu_session"))
            d.events.clear()
            r = await http.get(_path(d))
            assert r.status_code == 403
            r = await http.post(_path(d), content=DATA, headers=_put_headers(token, url))
            assert r.status_code == 403
            r = await http.get(
                f"/console/desktop/{INSTRUMENT}/drive/file",
                params={"port": d.port, "file": NAME},
            )
            assert r.status_code == 403
            assert _refusals(d) == ["drive_off"] * 3
            assert not drives.exists()
            ws.close()
            await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")


async def test_a_broker_starting_removes_the_drives_a_killed_one_left(
    tmp_path: Path, desk: Desk
) -> None:
    """A drive folder of a session that is not live (its broker was killed) is removed
    when the gate starts; nothing outside the drives folder is touched."""
    drives = tmp_path / "data" / "drives"
    desk.gate.drives_dir = drives
    DriveDir(drives / "d0001")
    (drives / "d0001" / "drive" / "left.txt").write_bytes(b"left behind")
    DriveDir(drives / "d0002")
    beside = tmp_path / "data" / "keep.txt"
    beside.write_text("kept")
    assert await asyncio.to_thread(desk.gate.sweep_drives) == ["d0001", "d0002"]
    assert os.listdir(drives) == []
    assert beside.read_text() == "kept"
