"""The demo has desktops: ``./run demo``'s lab includes the LIS workstation
``lis-ws-1``, a real Xvnc, and the analyzer PC ``an-pc-1``, a real xrdp in front of its
own Xvnc, and a person trying the demo opens them in the console.

Run on the demo itself (``hoshu serve``, ``hoshu-gateway run``, the lab; set up with
the ``hoshu`` CLI as the demo does), one demo start for both desktops: the demo's
description lists each desktop and its console address, the walkthrough names them,
the engineer asks for each one's port with the CLI, the approver approves, and the
engineer's console WebSocket gets the desktop's screen (the xterm's colour: dark blue
on the workstation, brown on the analyzer PC) and the typed line reaches the program on
it; the broker logged in to the RDP server with the stored user and password and
pinned the certificate the lab made for it (``instrument.key_pinned``); each session is
recorded (``session.ended`` with the recording's SHA-256, ``rdp`` for the analyzer PC).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.console.web import csrf_for
from hoshu_demo.demo import DESKTOP, RDP_DESKTOP, Demo
from hoshu_demo.walkthrough import walkthrough
from tests.desktop.rfbscreen import Screen, screen_until
from tests.desktop.wsclient import ws_open
from tests.support import poll
from tests.support.demoflow import Totp, sign_in

XTERM_BG = {DESKTOP: (0x10, 0x30, 0x60), RDP_DESKTOP: (0x60, 0x30, 0x10)}


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


async def _console_token(demo: Demo, codes: dict[str, Totp]) -> str:
    """tanaka signs in to the console; the session token (its cookie)."""
    async with httpx.AsyncClient(base_url=demo.api, timeout=30) as http:
        r = await http.post(
            "/console/login",
            data={
                "username": "tanaka",
                "password": demo.describe()["users"]["tanaka"]["password"],
                "totp": codes["tanaka"].code(),
            },
        )
        assert r.status_code == 303, r.text[-500:]
        return str(http.cookies["hoshu_session"])


async def _open_and_type(demo: Demo, token: str, name: str, text: str) -> None:
    """tanaka asks for the desktop ``name``, sato approves, tanaka opens it over the
    console's WebSocket, sees its xterm and types ``text`` into it."""
    desk = demo.describe()["instruments"][name]
    assert desk["desktop_url"].endswith(f"/console/desktop/{name}?port={desk['ports'][0]}")
    port = desk["ports"][0]
    req = demo.hoshu(
        "tanaka", "request", name, "--port", str(port), "--duration", "1h",
        "--reason", "screen check", "--ticket", "INC-1043", "--plan", "worklist screen",
    )  # fmt: skip
    demo.hoshu("sato", "approve", req["id"], "--comment", "ok")
    ws = await ws_open(
        demo.api,
        f"/console/desktop/{name}/ws?port={port}&csrf={csrf_for(token)}",
        cookie=f"hoshu_session={token}",
        origin=demo.api,
    )
    try:
        assert ws.status == 101
        init = await ws.rfb_handshake()
        w, h = struct.unpack(">HH", init[:4])
        assert (w, h) == (1024, 768)
        if name == DESKTOP:
            assert b"LIS workstation" in init
        await ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
        await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        screen, bg = Screen(w, h), XTERM_BG[name]
        await screen_until(
            ws,
            screen,
            lambda: all(abs(a - z) < 24 for a, z in zip(screen.rgb(100, 100), bg, strict=True)),
            30,
        )
        for ch in text:
            sym = 0xFF0D if ch == "\n" else ord(ch)
            await ws.send(struct.pack(">BBxxI", 4, 1, sym))
            await ws.send(struct.pack(">BBxxI", 4, 0, sym))
        typed = demo.root / "lab" / name / "typed.txt"
        await poll(
            lambda: typed.exists() and typed.read_text() == text,
            15,
            f"the typed line on {name}",
        )
    finally:
        ws.close()


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
@pytest.mark.timeout(300)
async def test_the_demo_lists_its_desktops_and_the_engineer_opens_them_recorded(
    demo: Demo,
) -> None:
    info = demo.describe()
    assert demo.notes == []
    assert info["instruments"][DESKTOP]["protocol"] == "rfb"
    assert info["instruments"][RDP_DESKTOP]["protocol"] == "rdp"
    text = walkthrough(info, demo.root)
    for name in (DESKTOP, RDP_DESKTOP):
        assert info["instruments"][name]["desktop_url"] in text
    assert "an-pc-1" in text and "the analyzer PC, an RDP server" in text
    codes = sign_in(demo, ["tanaka", "sato"])
    log = demo.root / "broker" / "audit" / "audit.log"

    token = await _console_token(demo, codes)
    await _open_and_type(demo, token, DESKTOP, "hoshu demo\n")
    await _open_and_type(demo, token, RDP_DESKTOP, "hoshu rdp demo\n")

    def ended() -> dict[str, dict[str, object]]:
        return {str(e.get("TargetHostname")): e for e in _events(log, "session.ended")}

    await poll(lambda: {DESKTOP, RDP_DESKTOP} <= set(ended()), 20, "both session.ended")
    for name in (DESKTOP, RDP_DESKTOP):
        assert ended()[name].get("RecordingSHA256"), ended()[name]
    assert ended()[RDP_DESKTOP].get("NetworkApplicationProtocol") == "rdp"
    # the broker pinned the certificate the lab made for the analyzer PC's xrdp
    assert demo.lab is not None
    fingerprint = demo.lab[RDP_DESKTOP].host_key_fingerprint
    assert fingerprint and fingerprint.startswith("SHA256:")
    assert info["instruments"][RDP_DESKTOP]["tls_certificate_fingerprint"] == fingerprint
    [pinned] = _events(log, "instrument.key_pinned")
    assert pinned.get("TargetHostname") == RDP_DESKTOP and fingerprint in json.dumps(pinned)
    # the stored password is in no event
    password = demo.lab[RDP_DESKTOP].credentials
    assert password is not None and password.password
    assert password.password not in log.read_text()


def test_a_demo_without_xvnc_says_it_leaves_the_desktop_out_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hoshu_demo.demo as demo_module

    monkeypatch.setattr(demo_module, "desktop_available", lambda: "Xvnc not installed")
    monkeypatch.setattr(demo_module, "xrdp_available", lambda: "xrdp not installed")
    d = Demo(tmp_path / ".hoshu-demo", desktop=True)
    names = d.lab_names()
    assert DESKTOP not in names and RDP_DESKTOP not in names and "cobas-c503-1" in names
    assert d.notes == [
        f"the desktop instrument {DESKTOP} is left out: Xvnc not installed",
        f"the desktop instrument {RDP_DESKTOP} is left out: xrdp not installed",
    ]
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
    assert "left out: Xvnc not installed" in text and "left out: xrdp not installed" in text
    assert "6. Desktops" not in text
    monkeypatch.undo()
    here = Demo(tmp_path / "b", desktop=True).lab_names()  # here they are installed
    assert DESKTOP in here and RDP_DESKTOP in here
    assert not {DESKTOP, RDP_DESKTOP} & set(Demo(tmp_path / "c").lab_names())  # built on Demo
