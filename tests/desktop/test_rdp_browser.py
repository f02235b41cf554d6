"""An RDP desktop in headless Chromium (noVNC), through the hospital gateway, to a real
xrdp (in front of an Xvnc with a green xterm).

The engineer opens the desktop page of the RDP instrument and sees its screen (noVNC
takes the broker's RFB: its own pixel format, Zlib rectangles); keys typed on the
page reach the instrument; the approver follows it live in another tab, sees the same
screen and terminates it; the engineer's page says it ended; the approver plays the
recording and sees the same screen.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.console.browsing import browser_sign_in
from tests.console.conftest import browser, wait_for  # noqa: F401  (fixture)
from tests.desktop.conftest import GREEN, INSTRUMENT, Xrdp, pinned_desk
from tests.desktop.helpers import PIXEL, desktop_state
from tests.support import poll
from tests.support.served import served


@pytest.mark.slow
async def test_rdp_desktop_in_the_browser_typed_followed_ended_replayed(
    tmp_path: Path,
    xrdp: Xrdp,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    async with pinned_desk(tmp_path, xrdp) as d:
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
            await poll(
                lambda: asyncio.to_thread(lambda: _near(browser.execute_script(PIXEL))),
                20,
                "the instrument's green xterm on the page",
            )
            canvas = await asyncio.to_thread(
                browser.find_element, By.CSS_SELECTOR, "#screen canvas"
            )
            size = canvas.size
            await asyncio.to_thread(
                lambda: (
                    webdriver.ActionChains(browser)
                    .move_to_element_with_offset(
                        canvas, 30 - size["width"] // 2, 30 - size["height"] // 2
                    )
                    .click()
                    .send_keys("hello-rdp" + Keys.ENTER)
                    .perform()
                )
            )
            typed = xrdp.xvnc.typed
            await poll(
                lambda: typed.exists() and "hello-rdp" in typed.read_text(),
                10,
                "the typed text on the instrument",
            )
            [live] = d.registry.list()
            engineer_tab = browser.current_window_handle
            await asyncio.to_thread(browser.switch_to.new_window, "tab")
            await asyncio.to_thread(browser_sign_in, browser, url, "appr", d.code("appr"))
            d.clock.advance(30)
            await asyncio.to_thread(browser.get, f"{url}/console/desktop-live/{live.session_id}")
            await poll(
                lambda: asyncio.to_thread(lambda: _near(browser.execute_script(PIXEL))),
                20,
                "the engineer's screen on the approver's page",
            )
            await asyncio.to_thread(lambda: browser.find_element(By.ID, "terminate").click())
            await asyncio.to_thread(browser.switch_to.window, engineer_tab)
            await poll(
                lambda: asyncio.to_thread(lambda: desktop_state(browser) == "ended"),
                5,
                "the page to end",
            )
            shown = await asyncio.to_thread(
                lambda: browser.find_element(By.ID, "desktop-state").text
            )
            assert "approver" in shown
            await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")
            await asyncio.to_thread(browser_sign_in, browser, url, "appr", d.code("appr"))
            d.clock.advance(30)
            await asyncio.to_thread(
                browser.get, f"{url}/console/desktop-recordings/{live.session_id}"
            )
            await poll(
                lambda: asyncio.to_thread(lambda: _near(browser.execute_script(PIXEL))),
                20,
                "the recorded screen in the player",
            )


def _near(rgb: object) -> bool:
    return isinstance(rgb, list) and all(
        abs(int(a) - b) < 24 for a, b in zip(rgb, GREEN, strict=True)
    )
