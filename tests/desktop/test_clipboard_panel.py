"""The desktop page's clipboard panel, in headless Chromium, VNC and RDP.

With the hospital's clipboard on, the engineer's page has a clipboard panel: text an X
program copies on the instrument (a real Xvnc; for RDP, xrdp with ``xrdp-chansrv`` in
front of one) appears in its 装置でコピーされた文字 field exactly, Japanese included,
and its button copies it to the engineer's own clipboard; text typed into its
装置のクリップボードに送る文字 field (a line break in it) and sent is what an X program on
the instrument pastes, exactly (over RDP with xrdp's CR LF).  The status line counts
the characters.  Keys typed into the panel's fields do not reach the instrument; the
keys typed on the screen after sending do.  Both transfers are ``file.transferred``
with the SHA-256 of their UTF-8 text.  With the clipboard off the page says so, has no
panel, and the instrument's copy does not reach the page (``file.refused``).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from broker.store.directory import StoreAccessPolicy
from tests.console.conftest import (  # noqa: F401  (fixture)
    SCREENSHOTS,
    browser,
    serious_violations,
)
from tests.desktop.clipdesk import clip_desk, clipboard_up, live_page
from tests.desktop.conftest import INSTRUMENT, Desk, Xrdp, open_desk
from tests.desktop.helpers import x_copy, x_paste, x_uncopy
from tests.desktop.test_rdp_clipboard import xrdp_clip  # noqa: F401  (fixture)
from tests.support import poll
from tests.support.served import served

JAPANESE = "検体ケンタイ１２３"
TYPED = "校正 ロット４７１１\nｹﾝﾀｲ"  # typed into the send field: Enter is a line break there
LEAK = "never-on-the-instrument"

LISTEN = """
window.hoshuClips = [];
window.hoshuDesktop.addEventListener("clipboard", (e) => window.hoshuClips.push(e.detail.text));
"""
READ_CLIPBOARD = """
const done = arguments[arguments.length - 1];
navigator.clipboard.readText().then(done, (e) => done("failed: " + e));
"""


def _typed(d: Desk) -> str:
    return d.xvnc.typed.read_text(encoding="utf-8") if d.xvnc.typed.exists() else ""


def _value(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).get_attribute("value"))


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _panel_shot(driver: webdriver.Chrome, name: str) -> None:
    """The window scrolled down to the clipboard panel's end, into docs/images/console/."""
    panel = driver.find_element(By.ID, "clipboard")
    driver.execute_script("arguments[0].scrollIntoView({block: 'end'});", panel)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


@pytest.mark.parametrize("protocol", ["vnc", "rdp"])
async def test_the_clipboard_panel_carries_japanese_text_both_ways(
    tmp_path: Path,
    xrdp_clip: Xrdp,  # noqa: F811
    browser: webdriver.Chrome,  # noqa: F811
    protocol: str,
) -> None:
    display = xrdp_clip.xvnc.display
    async with clip_desk(protocol, tmp_path, xrdp_clip) as d, served(d.app) as url:
        d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"clipboard_allowed": True})
        await live_page(d, browser, url)
        b = browser
        assert await asyncio.to_thread(lambda: b.find_element(By.ID, "clipboard").is_displayed())
        assert not await asyncio.to_thread(b.find_elements, By.ID, "clipboard-off")
        title = await asyncio.to_thread(_text, b, "clipboard-title")
        assert title == "クリップボード"

        # the instrument's copy appears in the panel, counted in the status line
        if protocol == "rdp":
            [live] = d.registry.list()
            await clipboard_up(d, live.session_id)
        owner = await x_copy(display, JAPANESE)
        try:
            await poll(
                lambda: asyncio.to_thread(lambda: _value(b, "clip-from") == JAPANESE),
                15,
                "the instrument's copy in the panel",
            )
        finally:
            await x_uncopy(owner)
        assert await asyncio.to_thread(_text, b, "clip-status") == "装置から受け取りました：9 文字"
        status = await asyncio.to_thread(b.find_element, By.ID, "clip-status")
        assert status.get_attribute("aria-live") == "polite"

        # the copy button puts it on the engineer's own clipboard
        await asyncio.to_thread(
            b.execute_cdp_cmd,
            "Browser.grantPermissions",
            {"origin": url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )
        await asyncio.to_thread(lambda: b.find_element(By.ID, "clip-copy").click())
        await poll(
            lambda: asyncio.to_thread(
                lambda: _text(b, "clip-status") == "自分のクリップボードにコピーしました：9 文字"
            ),
            5,
            "the copy's status",
        )
        assert await asyncio.to_thread(b.execute_async_script, READ_CLIPBOARD) == JAPANESE

        # keys typed into the panel stay on the page; the text sent is the instrument's
        # clipboard; the keys typed on the screen after it go to the instrument
        canvas = await asyncio.to_thread(b.find_element, By.CSS_SELECTOR, "#screen canvas")
        size = canvas.size

        def type_and_send() -> None:
            b.execute_script("arguments[0].scrollIntoView({block: 'start'});", canvas)
            webdriver.ActionChains(b).move_to_element_with_offset(
                canvas, 30 - size["width"] // 2, 30 - size["height"] // 2
            ).click().perform()  # the pointer over the xterm: X gives it the keys
            field = b.find_element(By.ID, "clip-from")
            field.click()
            field.send_keys(LEAK + Keys.ENTER)  # read-only: nothing changes, nothing leaks
            field = b.find_element(By.ID, "clip-to")
            field.click()
            field.send_keys(TYPED)
            assert field.get_attribute("value") == TYPED
            b.find_element(By.CSS_SELECTOR, "#clip-send button[type=submit]").click()
            webdriver.ActionChains(b).send_keys("/" + Keys.ENTER).perform()

        await asyncio.to_thread(type_and_send)
        assert await asyncio.to_thread(_value, b, "clip-from") == JAPANESE
        status_text = await asyncio.to_thread(_text, b, "clip-status")
        assert status_text == "装置のクリップボードに送りました：15 文字"
        # xrdp 0.9.21's chansrv hands X the RDP clipboard's CR LF as they are
        expected = TYPED.replace("\n", "\r\n") if protocol == "rdp" else TYPED

        async def pasted() -> bool:
            return await x_paste(display) == expected

        await poll(pasted, 15, "the panel's text pasted on the instrument")
        await poll(lambda: _typed(d).endswith("\n"), 10, "the keys typed on the screen")
        assert _typed(d) == "/\n"  # nothing typed into the panel reached the instrument
        await poll(lambda: len(d.events.of_type("file.transferred")) == 2, 5, "both logs")
        out, inbound = d.events.of_type("file.transferred")
        assert (out.get("NetworkDirection"), inbound.get("NetworkDirection")) == (
            "Outbound",
            "Inbound",
        )
        assert out.get("TargetFileSHA256") == hashlib.sha256(JAPANESE.encode()).hexdigest()
        assert inbound.get("TargetFileSHA256") == hashlib.sha256(TYPED.encode()).hexdigest()
        assert inbound.get("TargetFileSize") == len(TYPED.encode())
        assert not d.events.of_type("file.refused")
        if protocol == "vnc":
            # the page as the engineer sees it, for docs/desktop.md (the window as it is,
            # down to the panel's end: a taller one would grow the screen, 70% of it); axe
            await asyncio.to_thread(_panel_shot, b, "desktop-clipboard-ja")
            assert await asyncio.to_thread(serious_violations, b) == []
            # in English too, by the page's own language link (the same desktop, its
            # port kept, opens again)
            await asyncio.to_thread(lambda: b.find_element(By.ID, "lang-en").click())
            await poll(
                lambda: asyncio.to_thread(
                    lambda: (
                        b.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
                        and b.find_element(By.ID, "clipboard").is_displayed()
                    )
                ),
                15,
                "the page in English with its panel",
            )
            assert await asyncio.to_thread(_text, b, "clipboard-title") == "Clipboard"
            assert await asyncio.to_thread(serious_violations, b) == []


async def test_with_the_clipboard_off_the_page_says_so_and_nothing_crosses(
    tmp_path: Path,
    xrdp_clip: Xrdp,  # noqa: F811
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    display = xrdp_clip.xvnc.display
    async with open_desk(tmp_path, xrdp_clip.xvnc) as d, served(d.app) as url:
        await live_page(d, browser, url)
        b = browser
        assert not await asyncio.to_thread(b.find_elements, By.ID, "clipboard")
        assert not await asyncio.to_thread(b.find_elements, By.ID, "clip-from")
        off = await asyncio.to_thread(_text, b, "clipboard-off")
        assert off.startswith("クリップボード：オフ")
        await asyncio.to_thread(b.execute_script, LISTEN)
        owner = await x_copy(display, JAPANESE)
        try:
            await poll(lambda: bool(d.events.of_type("file.refused")), 15, "the copy refused")
        finally:
            await x_uncopy(owner)
        [refused] = d.events.of_type("file.refused")
        assert refused.get("EventResultDetails") == "clipboard_off"
        assert refused.get("NetworkDirection") == "Outbound"
        assert await asyncio.to_thread(b.execute_script, "return window.hoshuClips") == []
        assert not d.events.of_type("file.transferred")


async def test_the_page_offers_the_panel_only_for_a_granted_port_of_a_hospital_that_allows_it(
    desk: Desk,
) -> None:
    """The gate's answer to the page: no grant, another port, another person, an unknown
    instrument or the clipboard off is no panel."""
    d = desk
    d.gate.clipboard_allowed = StoreAccessPolicy(d.s).clipboard_allowed
    alice = d.actor("alice").user_id
    offered = d.gate.clipboard_offered
    d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"clipboard_allowed": True})
    assert not offered(alice, INSTRUMENT, d.port)  # no grant yet
    d.grant()
    assert offered(alice, INSTRUMENT, d.port)
    assert not offered(alice, INSTRUMENT, d.other_port)  # not granted
    assert not offered(d.actor("appr").user_id, INSTRUMENT, d.port)
    assert not offered(alice, "no-such-instrument", d.port)
    d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"clipboard_allowed": False})
    assert not offered(alice, INSTRUMENT, d.port)


async def test_without_a_secure_context_the_copy_button_is_hidden_and_the_hint_says_ctrl_c(
    desk: Desk,
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    """A browser that gives the page no clipboard (plain HTTP to another host: no
    secure context, as Chromium is made to report here) still shows the instrument's
    copy, selectable, with a hint to copy it by hand instead of the button."""
    d = desk
    d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"clipboard_allowed": True})
    script = "Object.defineProperty(window, 'isSecureContext', {get: () => false});"
    added = await asyncio.to_thread(
        browser.execute_cdp_cmd, "Page.addScriptToEvaluateOnNewDocument", {"source": script}
    )
    try:
        async with served(d.app) as url:
            await live_page(d, browser, url)
            b = browser
            assert (
                await asyncio.to_thread(b.execute_script, "return window.isSecureContext") is False
            )
            assert await asyncio.to_thread(
                lambda: b.find_element(By.ID, "clipboard").is_displayed()
            )
            assert not await asyncio.to_thread(
                lambda: b.find_element(By.ID, "clip-copy").is_displayed()
            )
            hint = await asyncio.to_thread(_text, b, "clip-from-hint")
            assert "Ctrl+C" in hint and "HTTPS" in hint
            owner = await x_copy(d.xvnc.display, JAPANESE)
            try:
                await poll(
                    lambda: asyncio.to_thread(lambda: _value(b, "clip-from") == JAPANESE),
                    15,
                    "the instrument's copy in the panel",
                )
            finally:
                await x_uncopy(owner)
    finally:
        await asyncio.to_thread(
            browser.execute_cdp_cmd,
            "Page.removeScriptToEvaluateOnNewDocument",
            {"identifier": added["identifier"]},
        )
