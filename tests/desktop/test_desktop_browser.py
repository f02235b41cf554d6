"""A VNC desktop in headless Chromium (noVNC), through the hospital gateway, to a real Xvnc.

The engineer opens the desktop page and sees the instrument's screen (the xterm's
green fills the canvas noVNC draws), which takes the size of the page's desktop
area; keys typed on the page reach the instrument (the xterm's shell writes them to
a file); the warning before the grant ends appears on the page; the approver follows
it live in another tab, sees the same screen and terminates it there; the
engineer's page says it ended, with the reason; the approver then plays the
recording and sees the same screen, and downloads it as a video of the recorded
length showing that screen.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import subprocess

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from broker.desktop.recording import read_records
from broker.desktop.video import FPS
from tests.console.browsing import browser_sign_in
from tests.console.conftest import browser, wait_for  # noqa: F401  (fixture)
from tests.desktop.conftest import GREEN, INSTRUMENT, Desk
from tests.desktop.helpers import PIXEL, desktop_state, probe_export
from tests.support import poll
from tests.support.served import served


def _dimensions(d: Desk) -> tuple[int, int]:
    """The Xvnc screen's size, as xdpyinfo reads it."""
    out = subprocess.run(
        ["xdpyinfo", "-display", d.xvnc.display], capture_output=True, text=True, timeout=10
    ).stdout
    line = next((line for line in out.splitlines() if "dimensions:" in line), " 0x0 ")
    w, h = line.split()[1].split("x")
    return int(w), int(h)


async def test_engineer_sees_and_types_approver_ends_and_replays(
    desk: Desk,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    d = desk
    d.grant()
    async with served(d.app) as url:
        await asyncio.to_thread(browser_sign_in, browser, url, "alice", d.code("alice"))
        d.clock.advance(30)
        await asyncio.to_thread(browser.get, f"{url}/console/desktop/{INSTRUMENT}?port={d.port}")
        await poll(
            lambda: asyncio.to_thread(lambda: desktop_state(browser) == "live"), 15, "the desktop"
        )
        await poll(
            lambda: asyncio.to_thread(lambda: browser.execute_script(PIXEL) == list(GREEN)),
            15,
            "the instrument's green xterm on the page",
        )
        # the instrument's screen takes the size of the page's desktop area
        area = await asyncio.to_thread(lambda: browser.find_element(By.ID, "screen").size)

        def fits() -> bool:
            w, h = _dimensions(d)
            return abs(w - int(area["width"])) <= 1 and abs(h - int(area["height"])) <= 1

        await poll(lambda: asyncio.to_thread(fits), 10, f"the instrument's screen to be {area}")
        canvas = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR, "#screen canvas")
        size = canvas.size  # the pointer over the xterm (X focus follows it), then keys
        await asyncio.to_thread(
            lambda: (
                webdriver.ActionChains(browser)
                .move_to_element_with_offset(
                    canvas, 30 - size["width"] // 2, 30 - size["height"] // 2
                )
                .click()
                .send_keys("hello-vnc" + Keys.ENTER)
                .perform()
            )
        )
        await poll(
            lambda: d.xvnc.typed.exists() and "hello-vnc" in d.xvnc.typed.read_text(),
            10,
            "the typed text on the instrument",
        )
        [live] = d.registry.list()
        # four minutes before the grant ends, the page says so above the screen
        d.clock.advance(live.grant_ends.timestamp() - d.clock.now.timestamp() - 240)  # type: ignore[union-attr]
        await poll(
            lambda: asyncio.to_thread(
                lambda: "4 minutes" in browser.find_element(By.ID, "notices").text
            ),
            5,
            "the grant's warning on the page",
        )
        engineer_tab = browser.current_window_handle
        # the approver follows it live in another tab (the engineer's socket stays open)
        await asyncio.to_thread(browser.switch_to.new_window, "tab")
        await asyncio.to_thread(browser_sign_in, browser, url, "appr", d.code("appr"))
        d.clock.advance(30)
        await asyncio.to_thread(browser.get, f"{url}/console/desktop-live/{live.session_id}")
        await poll(
            lambda: asyncio.to_thread(lambda: browser.execute_script(PIXEL) == list(GREEN)),
            15,
            "the engineer's screen on the approver's page",
        )
        followed = d.events.of_type("recording.viewed")
        assert [(e.get("ActorUsername"), e.get("Operation")) for e in followed] == [
            ("appr", "follow")
        ]
        await asyncio.to_thread(lambda: browser.find_element(By.ID, "terminate").click())
        await asyncio.to_thread(browser.switch_to.window, engineer_tab)
        await poll(
            lambda: asyncio.to_thread(lambda: desktop_state(browser) == "ended"),
            2,
            "the page to end",
        )
        shown = await asyncio.to_thread(lambda: browser.find_element(By.ID, "desktop-state").text)
        assert "approver" in shown
        await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")
        [ended] = d.events.of_type("session.ended")
        data = d.store.read(f"{live.session_id}.rfb")
        assert ended.get("RecordingSHA256") == hashlib.sha256(data).hexdigest()

        # the approver plays the recording: the same screen comes back
        await asyncio.to_thread(browser_sign_in, browser, url, "appr", d.code("appr"))
        d.clock.advance(30)
        await asyncio.to_thread(browser.get, f"{url}/console/desktop-recordings/{live.session_id}")
        await poll(
            lambda: asyncio.to_thread(lambda: desktop_state(browser) in ("playing", "ended")),
            15,
            "playback",
        )
        await poll(
            lambda: asyncio.to_thread(lambda: browser.execute_script(PIXEL) == list(GREEN)),
            15,
            "the recorded screen in the player",
        )
        # and downloads it as a video (the ZRLE updates noVNC asked for, decoded by hoshu)
        href = await asyncio.to_thread(
            lambda: browser.find_element(By.ID, "video").get_attribute("href")
        )
        jar = browser.get_cookie("hoshu_session")
        assert jar is not None
        cookie = {"hoshu_session": str(jar["value"])}
        async with httpx.AsyncClient(timeout=120, cookies=cookie) as http:
            r = await http.get(str(href))
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        end_ms = max(ms for ms, _k, _d in read_records(data)[1])
        frames, _duration, last = await asyncio.to_thread(probe_export, r.content, d)
        assert frames == max(1, math.ceil(end_ms / 1000 * FPS))
        assert all(abs(a - b) < 24 for a, b in zip(last, GREEN, strict=True)), last
        viewed = d.events.of_type("recording.viewed")
        assert [(e.get("ActorUsername"), e.get("Operation")) for e in viewed] == [
            ("appr", "follow"),
            ("appr", "replay"),
            ("appr", "export"),
        ]
