"""axe-core on the desktop pages, in Debian's headless Chromium, with a real Xvnc behind.

The engineer's desktop page (the instrument's screen live), the approver's live page of
that session and, after the approver terminates it, the recording's player: no serious or
critical violation (WCAG 2 A/AA and best practice), in Japanese and in English.
"""

from __future__ import annotations

import asyncio

from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.console.browsing import browser_sign_in
from tests.console.conftest import browser, serious_violations, wait_for  # noqa: F401
from tests.desktop.conftest import GREEN, INSTRUMENT, Desk
from tests.support import poll
from tests.support.served import served

PIXEL = """
const c = document.querySelector('#screen canvas');
if (!c || c.width < 100) { return null; }
return Array.from(c.getContext('2d').getImageData(20, 20, 1, 1).data.slice(0, 3));
"""


def _findings(driver: webdriver.Chrome) -> dict[str, list[str]]:
    """axe-core's findings on the page as shown, then in the other language."""
    found: dict[str, list[str]] = {}
    for lang in ("ja", "en"):
        links = driver.find_elements(By.ID, f"lang-{lang}")
        if links:
            links[0].click()
        wait_for(driver, f"html[lang={lang}] main", 15)
        got = serious_violations(driver)
        if got:
            found[f"{driver.current_url} [{lang}]"] = got
    return found


def _screen(driver: webdriver.Chrome) -> bool:
    return bool(driver.execute_script(PIXEL) == list(GREEN))


async def test_the_desktop_pages_have_nothing_serious_for_axe(
    desk: Desk,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    d, b = desk, browser
    d.grant()
    findings: dict[str, list[str]] = {}
    async with served(d.app) as url:
        await asyncio.to_thread(browser_sign_in, b, url, "alice", d.code("alice"))
        d.clock.advance(30)
        await asyncio.to_thread(b.get, f"{url}/console/desktop/{INSTRUMENT}?port={d.port}")
        await poll(lambda: asyncio.to_thread(_screen, b), 15, "the instrument's screen")
        findings |= await asyncio.to_thread(serious_violations_of, b, "desktop")
        [live] = d.registry.list()
        engineer_tab = b.current_window_handle
        await asyncio.to_thread(b.switch_to.new_window, "tab")
        await asyncio.to_thread(browser_sign_in, b, url, "appr", d.code("appr"))
        d.clock.advance(30)
        await asyncio.to_thread(b.get, f"{url}/console/desktop-live/{live.session_id}")
        await poll(lambda: asyncio.to_thread(_screen, b), 15, "the screen on the live page")
        findings |= await asyncio.to_thread(_findings, b)
        await asyncio.to_thread(lambda: b.find_element(By.ID, "terminate").click())
        await poll(lambda: bool(d.events.of_type("session.ended")), 5, "session.ended")
        await asyncio.to_thread(b.get, f"{url}/console/desktop-recordings/{live.session_id}")
        await poll(lambda: asyncio.to_thread(_screen, b), 15, "the recorded screen")
        findings |= await asyncio.to_thread(_findings, b)
        await asyncio.to_thread(b.switch_to.window, engineer_tab)
    assert findings == {}, findings


def serious_violations_of(driver: webdriver.Chrome, _name: str) -> dict[str, list[str]]:
    """The engineer's page: checked in the language it opened in (switching languages
    reloads the page, which would end the desktop session)."""
    got = serious_violations(driver)
    return {f"{driver.current_url}": got} if got else {}
