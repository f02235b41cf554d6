"""The demo has a desktop: ``./run demo``'s lab includes the LIS workstation
``lis-ws-1``, a real Xvnc, and a person trying the demo opens it in the console.

Run on the demo itself (``hoshu serve``, ``hoshu-gateway run``, the lab; set up with
the ``hoshu`` CLI as the demo does): the demo's description lists the desktop and its
console address, the walkthrough names it, the engineer asks for its port with the
CLI, the approver approves, and the engineer's console WebSocket gets the
workstation's screen (the xterm's dark blue) and the typed line reaches the program
on it; the session is recorded (``session.ended`` with the recording's SHA-256).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.console.web import csrf_for
from hoshu_demo.demo import DESKTOP, Demo
from hoshu_demo.walkthrough import walkthrough
from tests.desktop.wsclient import ws_open
from tests.support import poll
from tests.support.demoflow import sign_in

XTERM_BG = (0x10, 0x30, 0x60)


@pytest.fixture
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    d = Demo(
        tmp_path_factory.mktemp("demo-desk") / ".hoshu-demo",
        api_port=0,
        ssh_port=0,
        tunnel_port=0,
        desktop=True,
    )
    try:
        d.start()
        yield d
    finally:
        d.stop()


def _events(log: Path, type_: str) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("EventType") == type_]


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
@pytest.mark.timeout(300)
async def test_the_demo_lists_its_desktop_and_the_engineer_opens_it_recorded(demo: Demo) -> None:
    info = demo.describe()
    assert demo.notes == []
    desk = info["instruments"][DESKTOP]
    assert desk["protocol"] == "rfb" and desk["desktop_url"].endswith(
        f"/console/desktop/{DESKTOP}?port={desk['ports'][0]}"
    )
    assert desk["desktop_url"] in walkthrough(info, demo.root)
    port = desk["ports"][0]
    codes = sign_in(demo, ["tanaka", "sato"])
    req = demo.hoshu(
        "tanaka", "request", DESKTOP, "--port", str(port), "--duration", "1h",
        "--reason", "LIS screen check", "--ticket", "INC-1043", "--plan", "worklist screen",
    )  # fmt: skip
    demo.hoshu("sato", "approve", req["id"], "--comment", "ok")
    async with httpx.AsyncClient(base_url=demo.api, timeout=30) as http:
        r = await http.post(
            "/console/login",
            data={
                "username": "tanaka",
                "password": info["users"]["tanaka"]["password"],
                "totp": codes["tanaka"].code(),
            },
        )
        assert r.status_code == 303, r.text[-500:]
        token = http.cookies["hoshu_session"]
        ws = await ws_open(
            demo.api,
            f"/console/desktop/{DESKTOP}/ws?port={port}&csrf={csrf_for(token)}",
            cookie=f"hoshu_session={token}",
            origin=demo.api,
        )
        assert ws.status == 101
        init = await ws.rfb_handshake()
        w, h = struct.unpack(">HH", init[:4])
        assert (w, h) == (1024, 768) and b"LIS workstation" in init
        await ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
        await ws.send(struct.pack(">BBHHHH", 3, 0, 100, 100, 1, 1))  # one pixel in the xterm
        async with asyncio.timeout(20):
            while True:
                op, msg = await ws.frame()
                assert op == 0x2
                if msg[0] == 0 and len(msg) >= 20:
                    b, g, r_ = msg[16], msg[17], msg[18]  # 32 bpp little-endian, red << 16
                    if all(abs(a - z) < 24 for a, z in zip((r_, g, b), XTERM_BG, strict=True)):
                        break
                await ws.send(struct.pack(">BBHHHH", 3, 0, 100, 100, 1, 1))
        for ch in "hoshu demo\n":
            sym = 0xFF0D if ch == "\n" else ord(ch)
            await ws.send(struct.pack(">BBxxI", 4, 1, sym))
            await ws.send(struct.pack(">BBxxI", 4, 0, sym))
        typed = demo.root / "lab" / DESKTOP / "typed.txt"
        await poll(
            lambda: typed.exists() and typed.read_text() == "hoshu demo\n",
            10,
            "the typed line on the workstation",
        )
        ws.close()
    log = demo.root / "broker" / "audit" / "audit.log"
    await poll(lambda: bool(_events(log, "session.ended")), 15, "session.ended")
    [ended] = _events(log, "session.ended")
    assert ended.get("TargetHostname") == DESKTOP
    assert ended.get("RecordingSHA256")


def test_a_demo_without_xvnc_says_it_leaves_the_desktop_out_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hoshu_demo.demo as demo_module

    monkeypatch.setattr(demo_module, "desktop_available", lambda: "Xvnc not installed")
    d = Demo(tmp_path / ".hoshu-demo", desktop=True)
    assert DESKTOP not in d.lab_names() and "cobas-c503-1" in d.lab_names()
    assert d.notes[0] == f"the desktop instrument {DESKTOP} is left out: Xvnc not installed"
    info: dict[str, Any] = {
        "broker": {"api_url": "http://127.0.0.1:1", "ssh_port": 2},
        "users": {"tanaka": {"role": "engineer", "password": "p"}},
        "instruments": {"cobas-c503-1": {"ssh_port": 22, "desktop_url": None}},
        "notes": d.notes,
        "gateway": "gw",
        "hospital": "h",
        "vendor": "v",
    }
    info["users"].update({u: {"role": "x", "password": "p"} for u in ("sato", "suzuki")})
    text = walkthrough(info, tmp_path)
    assert "left out: Xvnc not installed" in text and "6. A desktop" not in text
    monkeypatch.undo()
    assert DESKTOP in Demo(tmp_path / "b", desktop=True).lab_names()  # here it is installed
    assert DESKTOP not in Demo(tmp_path / "c").lab_names()  # other systems built on Demo
