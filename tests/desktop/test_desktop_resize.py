"""The desktop follows the browser's window: noVNC asks for another size with
SetDesktopSize once it was told the size in an ExtendedDesktopSize rectangle; the
tests here speak as noVNC does (raw WebSocket client) and read the size of the real
server's framebuffer back with ``xdpyinfo``.

- VNC: the broker relays SetDesktopSize to the real Xvnc, which resizes its
  framebuffer and says so (ExtendedDesktopSize, reason "this client", status 0);
  the recording holds the resize and the video export follows it.
- RDP: the broker (an RFB server towards the browser) announces ExtendedDesktopSize
  itself; on SetDesktopSize it opens a second RDP session at the asked size through
  the gateway (xrdp then resizes the Xvnc behind it), swaps it in, and answers with
  the new size and the whole screen, the xterm still on it.  The live session, its
  grant and its recording stay the same.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from selenium import webdriver

from broker.desktop.rdpbridge import rdp_size
from broker.desktop.recording import read_records
from broker.desktop.rfb import EXT_DESKTOP_SIZE
from tests.console.browsing import browser_sign_in
from tests.console.conftest import browser  # noqa: F401  (fixture)
from tests.desktop.conftest import INSTRUMENT, Desk, Xrdp, Xvnc, pinned_desk
from tests.desktop.helpers import console_sign_in, desktop_state, ws_path
from tests.desktop.rfbscreen import RAW, Screen, screen_until
from tests.desktop.wsclient import WsClient, ws_open
from tests.support import poll
from tests.support.served import served


def _set_desktop_size(w: int, h: int) -> bytes:
    return struct.pack(">BxHHBxIHHHHI", 251, w, h, 1, 0, 0, 0, w, h, 0)


def _geometry(xvnc: Xvnc) -> tuple[int, int]:
    out = subprocess.run(
        ["xdpyinfo", "-display", xvnc.display], capture_output=True, text=True, check=True
    ).stdout
    dims = next(line for line in out.splitlines() if "dimensions:" in line).split()[1]
    w, h = dims.split("x")
    return int(w), int(h)


async def _open(d: Desk, url: str, http: httpx.AsyncClient) -> tuple[WsClient, Screen]:
    token = await console_sign_in(http, d, "alice")
    ws = await ws_open(url, ws_path(d.port, token), cookie=f"hoshu_session={token}", origin=url)
    assert ws.status == 101
    init = await ws.rfb_handshake()
    w, h = struct.unpack(">HH", init[:4])
    await ws.send(struct.pack(">BxHii", 2, 2, RAW, EXT_DESKTOP_SIZE))  # as noVNC offers
    await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
    return ws, Screen(w, h)


async def _resize_and_check(d: Desk, xvnc: Xvnc, want: tuple[int, int]) -> list[bytes]:
    """Open a desktop, resize it to ``want``, check what the browser and the server
    see; the recorded server messages."""
    async with served(d.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        ws, seen = await _open(d, url, http)
        # told the size: the browser may now ask for another
        await screen_until(ws, seen, lambda: bool(seen.sizes) and seen.green(20, 20), 20)
        _reason, status, w, h = seen.sizes[0]
        assert (status, w, h) == (0, 800, 600), seen.sizes
        [live] = d.registry.list()
        t0 = time.monotonic()
        await ws.send(_set_desktop_size(*want))
        await screen_until(ws, seen, lambda: (seen.w, seen.h) == want and seen.green(20, 20), 20)
        took = time.monotonic() - t0
        print(f"resized to {want} and repainted in {took:.2f} s")
        assert took < 5, took  # a pause, not a new session to wait for
        assert seen.sizes[-1] == (1, 0, *want)  # "this client's request", status 0
        assert _geometry(xvnc) == want  # the real server's framebuffer changed
        assert d.registry.list() == [live]  # the same live session, grant and recording
        ws.close()
        await poll(lambda: bool(d.events.of_type("session.ended")), 10, "session.ended")
    data = d.store.read(f"{live.session_id}.rfb")
    return [m for _ms, kind, m in read_records(data)[1] if kind == b"S"]


def _recorded_sizes(messages: list[bytes]) -> list[tuple[int, int]]:
    seen = Screen(800, 600)
    for m in messages[1:]:  # after the ServerInit
        seen.apply(m)
    return [(w, h) for _r, s, w, h in seen.sizes if s == 0]


async def test_a_vnc_desktop_follows_the_browsers_size(desk: Desk) -> None:
    d = desk
    d.grant()
    messages = await _resize_and_check(d, d.xvnc, (1024, 700))
    assert (1024, 700) in _recorded_sizes(messages)


async def test_an_rdp_desktop_follows_the_browsers_size_by_a_new_rdp_session(
    tmp_path: Path, xrdp: Xrdp
) -> None:
    async with pinned_desk(tmp_path, xrdp) as d:
        d.grant()
        want = rdp_size(1024, 768)
        messages = await _resize_and_check(d, xrdp.xvnc, want)
        assert _recorded_sizes(messages)[-1] == want
        # the second RDP session was checked as the first: one pin, no changed key
        assert len(d.events.of_type("instrument.key_pinned")) == 1
        assert not d.events.of_type("instrument.key_changed")
        [started] = d.events.of_type("session.started")
        [ended] = d.events.of_type("session.ended")
        assert ended.get("TargetSessionId") == started.get("TargetSessionId")


def test_asked_rdp_sizes_are_clamped_and_the_width_a_multiple_of_4() -> None:
    assert rdp_size(1023, 767) == (1020, 767)
    assert rdp_size(10, 10) == (200, 200)
    assert rdp_size(9000, 9000) == (4096, 4096)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["vnc", "rdp"])
async def test_resizing_the_browser_window_resizes_the_remote_screen(
    tmp_path: Path,
    xrdp: Xrdp,
    browser: webdriver.Chrome,  # noqa: F811
    protocol: str,
) -> None:
    """In headless Chromium (noVNC, ``resizeSession``): the engineer's window changes
    size, and the instrument's framebuffer follows (Xvnc read back with xdpyinfo)."""
    async with pinned_desk(tmp_path, xrdp, protocol=protocol) as d:
        d.grant()
        async with served(d.app) as url:
            await asyncio.to_thread(browser_sign_in, browser, url, "alice", d.code("alice"))
            d.clock.advance(30)
            await asyncio.to_thread(
                browser.get, f"{url}/console/desktop/{INSTRUMENT}?port={d.port}"
            )
            await poll(
                lambda: asyncio.to_thread(lambda: desktop_state(browser) == "live"),
                30,
                "the desktop",
            )

            def fb() -> tuple[int, int]:
                w, h = browser.execute_script(
                    "const c = document.querySelector('#screen canvas');"
                    "return c ? [c.width, c.height] : [0, 0];"
                )
                return int(w), int(h)

            # noVNC asks for its container's size at once: the screen is no longer 800x600
            await poll(lambda: _geometry(xrdp.xvnc) != (800, 600), 20, "the first resize")
            before = _geometry(xrdp.xvnc)
            await poll(lambda: asyncio.to_thread(lambda: fb() == before), 20, "noVNC's size")
            await asyncio.to_thread(browser.set_window_size, 1000, 760)
            try:
                await poll(lambda: _geometry(xrdp.xvnc) != before, 20, "the screen to follow")
                after = _geometry(xrdp.xvnc)
                assert after[0] < before[0] and after[1] < before[1], (before, after)
                await poll(lambda: asyncio.to_thread(lambda: fb() == after), 20, "noVNC's size")
                assert len(d.registry.list()) == 1  # still the one session
            finally:
                await asyncio.to_thread(browser.set_window_size, 1280, 1000)
                await asyncio.to_thread(browser.get, f"{url}/console/")
