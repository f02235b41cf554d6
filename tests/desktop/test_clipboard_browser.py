"""Japanese clipboard text in headless Chromium's noVNC, VNC and RDP.

The engineer's desktop page runs noVNC 1.7's own Extended Clipboard code against
the broker: text an X program copies on the instrument (a real Xvnc; for RDP, xrdp
with ``xrdp-chansrv`` in front of one) arrives as noVNC's ``clipboard`` event, and
text handed to noVNC's ``clipboardPasteFrom`` (what a page does with the engineer's
copy) is what an X program on the instrument pastes, both exactly (line ends: LF
over VNC; over RDP xrdp gives X the CR LF of the RDP clipboard), each logged as a
``file.transferred`` with the SHA-256 of its UTF-8 text.  The approver then plays the
recording: the clipboard messages the engineer's noVNC got are not in the played
stream, so the player shows the screen.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from selenium import webdriver

from tests.console.browsing import browser_sign_in
from tests.console.conftest import browser, wait_for  # noqa: F401  (fixture)
from tests.desktop.clipdesk import clip_desk, clipboard_up, live_page, near_green
from tests.desktop.conftest import Xrdp
from tests.desktop.helpers import PIXEL, desktop_state, x_copy, x_paste, x_uncopy
from tests.desktop.test_rdp_clipboard import xrdp_clip  # noqa: F401  (fixture)
from tests.support import poll
from tests.support.served import served

JAPANESE = "検体ケンタイ１２３"
FROM_BROWSER = "校正 ロット４７１１\nｹﾝﾀｲ"

LISTEN = """
window.hoshuClips = [];
window.hoshuDesktop.addEventListener("clipboard", (e) => window.hoshuClips.push(e.detail.text));
"""


@pytest.mark.parametrize("protocol", ["vnc", "rdp"])
async def test_japanese_clipboard_text_crosses_noVNC_both_ways(
    tmp_path: Path,
    xrdp_clip: Xrdp,  # noqa: F811
    browser: webdriver.Chrome,  # noqa: F811
    protocol: str,
) -> None:
    display = xrdp_clip.xvnc.display
    async with clip_desk(protocol, tmp_path, xrdp_clip) as d, served(d.app) as url:
        d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"clipboard_allowed": True})
        await live_page(d, browser, url)
        await asyncio.to_thread(browser.execute_script, LISTEN)
        [live] = d.registry.list()
        if protocol == "rdp":
            await clipboard_up(d, live.session_id)
        owner = await x_copy(display, JAPANESE)
        try:
            await poll(
                lambda: asyncio.to_thread(
                    lambda: browser.execute_script("return window.hoshuClips") == [JAPANESE]
                ),
                15,
                "the instrument's copy in noVNC's clipboard",
            )
        finally:
            await x_uncopy(owner)
        await asyncio.to_thread(
            browser.execute_script,
            "window.hoshuDesktop.clipboardPasteFrom(arguments[0]);",
            FROM_BROWSER,
        )

        # Windows' line ends on the RDP clipboard: xrdp 0.9.21's chansrv hands them to
        # X as they are
        expected = FROM_BROWSER.replace("\n", "\r\n") if protocol == "rdp" else FROM_BROWSER

        async def pasted() -> bool:
            return await x_paste(display) == expected

        await poll(pasted, 15, "the browser's text pasted on the instrument")
        await poll(lambda: len(d.events.of_type("file.transferred")) == 2, 5, "both logs")
        out, inbound = d.events.of_type("file.transferred")
        assert (out.get("NetworkDirection"), inbound.get("NetworkDirection")) == (
            "Outbound",
            "Inbound",
        )
        assert out.get("TargetFileSHA256") == hashlib.sha256(JAPANESE.encode()).hexdigest()
        assert inbound.get("TargetFileSHA256") == hashlib.sha256(FROM_BROWSER.encode()).hexdigest()
        assert not d.events.of_type("file.refused")
        # the approver plays the recording: the screen comes back (no clipboard message
        # in the played stream trips the player's noVNC)
        await asyncio.to_thread(browser_sign_in, browser, url, "appr", d.code("appr"))
        d.clock.advance(30)
        await poll(lambda: not d.registry.list(), 15, "the engineer's session to end")
        await asyncio.to_thread(browser.get, f"{url}/console/desktop-recordings/{live.session_id}")
        await poll(
            lambda: asyncio.to_thread(lambda: near_green(browser.execute_script(PIXEL))),
            20,
            "the recorded screen in the player",
        )
        await poll(
            lambda: asyncio.to_thread(lambda: desktop_state(browser) in ("playing", "ended")),
            5,
            "playback",
        )
