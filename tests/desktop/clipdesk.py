"""What the clipboard's browser tests share: a desk for VNC or RDP on the clipboard
lab's xrdp (RDP) or its Xvnc (VNC), alice's desktop page live in Chromium, and, over
RDP, the wait for the session's clipboard channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from selenium import webdriver

from broker.store.directory import StoreAccessPolicy
from tests.console.browsing import browser_sign_in
from tests.desktop.conftest import GREEN, INSTRUMENT, Desk, Xrdp, open_desk, pinned_desk
from tests.desktop.helpers import PIXEL, desktop_state
from tests.support import poll


def near_green(rgb: object) -> bool:
    """A pixel the page read (``PIXEL``) is the instrument's green xterm."""
    return isinstance(rgb, list) and all(
        abs(int(a) - b) < 24 for a, b in zip(rgb, GREEN, strict=True)
    )


@contextlib.asynccontextmanager
async def clip_desk(protocol: str, tmp_path: Path, xrdp: Xrdp) -> AsyncIterator[Desk]:
    """A desk whose instrument is ``xrdp`` (``rdp``) or the Xvnc behind it (``vnc``)."""
    if protocol == "rdp":
        async with pinned_desk(tmp_path, xrdp) as d:
            yield d
    else:
        async with open_desk(tmp_path, xrdp.xvnc) as d:
            yield d


async def live_page(d: Desk, browser: webdriver.Chrome, url: str) -> None:
    """alice signed in, her desktop page live with the instrument's green xterm."""
    d.gate.clipboard_allowed = StoreAccessPolicy(d.s).clipboard_allowed  # as build_broker does
    d.grant()
    await asyncio.to_thread(browser_sign_in, browser, url, "alice", d.code("alice"))
    d.clock.advance(30)
    await asyncio.to_thread(browser.get, f"{url}/console/desktop/{INSTRUMENT}?port={d.port}")
    await poll(
        lambda: asyncio.to_thread(lambda: desktop_state(browser) == "live"), 30, "the desktop"
    )
    await poll(
        lambda: asyncio.to_thread(lambda: near_green(browser.execute_script(PIXEL))),
        20,
        "the instrument's green xterm on the page",
    )


async def clipboard_up(d: Desk, session_id: str) -> None:
    """Until the RDP session's clipboard channel is up: xrdp-chansrv watches X's
    clipboard from its Monitor Ready on (a copy made before then is not announced, as
    in a desktop client that has just connected)."""
    channel = d.gate._relays[session_id].bridge.rdp.clipboard  # type: ignore[union-attr]
    assert channel is not None
    await poll(lambda: channel.ready, 10, "the clipboard channel to be ready")
