"""The desktop page's drive panel, in headless Chromium, against xrdp in front of Xvnc.

With the hospital's drive on, the engineer's RDP page has a drive panel: a file with a
Japanese name chosen in its file input and put (装置のドライブに置く) is on the
instrument's ``~/thinclient_drives/hoshu`` with the same bytes; a file the instrument
writes there is in the panel's list after 一覧を更新 and its download link gives the
same bytes (fetched with the browser's own cookies), logged as ``file.transferred``.
With the drive off the page says so, has no panel, and the routes refuse (403).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By

from broker.store.directory import StoreAccessPolicy
from tests.console.browsing import browser_sign_in
from tests.console.conftest import (  # noqa: F401  (fixture)
    SCREENSHOTS,
    browser,
    serious_violations,
)
from tests.desktop.conftest import INSTRUMENT, Desk, Xrdp, pinned_desk
from tests.desktop.helpers import desktop_state
from tests.desktop.test_rdp_drive import (  # noqa: F401  (fixture)
    _exists,
    _gate_drives,
    _on_instrument,
    xrdp_drive,
)
from tests.support import poll
from tests.support.served import served

NAME = "検体ラベル 手順書.txt"
DATA = "検体ラベルの貼り替え手順\n".encode() * 500
WRITTEN = "測定結果_0471.csv"
RESULT = "項目,値\nALB,4.1\n".encode() * 300


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


async def _live_page(d: Desk, b: webdriver.Chrome, url: str) -> None:
    d.gate.clipboard_allowed = StoreAccessPolicy(d.s).clipboard_allowed
    d.grant()
    await asyncio.to_thread(browser_sign_in, b, url, "alice", d.code("alice"))
    d.clock.advance(30)
    await asyncio.to_thread(b.get, f"{url}/console/desktop/{INSTRUMENT}?port={d.port}")
    await poll(lambda: asyncio.to_thread(lambda: desktop_state(b) == "live"), 30, "the desktop")


def _cookies(b: webdriver.Chrome) -> dict[str, str]:
    return {c["name"]: c["value"] for c in b.get_cookies()}


async def test_the_drive_panel_puts_a_file_and_downloads_the_instruments(
    tmp_path: Path,
    xrdp_drive: Xrdp,  # noqa: F811
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    mount = tmp_path / "thinclient_drives" / "hoshu"
    upload = tmp_path / "from-my-pc" / NAME
    upload.parent.mkdir()
    upload.write_bytes(DATA)
    async with pinned_desk(tmp_path, xrdp_drive) as d, served(d.app) as url:
        _gate_drives(d, tmp_path)
        d.s.estate.update_policy(d.actor("hadmin"), "hoshi-hospital", {"drive_allowed": True})
        await _live_page(d, browser, url)
        b = browser
        await poll(
            lambda: asyncio.to_thread(lambda: b.find_element(By.ID, "drive").is_displayed()),
            10,
            "the drive panel",
        )
        assert not await asyncio.to_thread(b.find_elements, By.ID, "drive-off")
        assert await asyncio.to_thread(_text, b, "drive-title") == "ドライブ"
        await poll(lambda: _on_instrument(_exists, mount), 20, "the drive on the instrument")

        def put() -> None:
            b.find_element(By.ID, "drive-file").send_keys(str(upload))
            b.find_element(By.CSS_SELECTOR, "#drive-put button[type=submit]").click()

        await asyncio.to_thread(put)
        await poll(
            lambda: asyncio.to_thread(
                lambda: _text(b, "drive-status") == f"装置のドライブに置きました：{NAME}"
            ),
            20,
            "the put's status",
        )
        # the page's resize reconnects RDP: the drive is the same, chansrv mounts it again
        await poll(lambda: _on_instrument(_exists, mount / NAME), 20, "the file on the instrument")
        assert await _on_instrument((mount / NAME).read_bytes) == DATA
        rows = await asyncio.to_thread(b.find_elements, By.CSS_SELECTOR, "#drive-files tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == [NAME]

        # the instrument writes a file: after 一覧を更新 it is listed, its link downloads it
        async def written() -> bool:  # a reconnect in between aborts FUSE, remounts
            try:
                await _on_instrument((mount / WRITTEN).write_bytes, RESULT)
            except OSError:  # aborted, or the mount not back yet
                return False
            return True

        await poll(written, 20, "the instrument's write")
        await poll(lambda: len(d.events.of_type("file.transferred")) == 2, 10, "the write's log")
        await asyncio.to_thread(lambda: b.find_element(By.ID, "drive-refresh").click())

        def listed() -> list[str]:
            # read in one script: the list is redrawn while it is read element by element
            names: list[str] = b.execute_script(
                "return Array.from(document.querySelectorAll("
                "'#drive-files tbody tr td:first-child'), c => c.textContent.trim())"
            )
            return names

        await poll(
            lambda: asyncio.to_thread(lambda: listed() == sorted([NAME, WRITTEN])),
            10,
            "the instrument's file listed",
        )
        link = await asyncio.to_thread(
            lambda: b.find_element(By.XPATH, f"//tr[td[1][text()='{WRITTEN}']]//a").get_attribute(
                "href"
            )
        )
        cookies = await asyncio.to_thread(_cookies, b)
        async with httpx.AsyncClient(cookies=cookies, timeout=30) as http:
            r = await http.get(str(link))
        assert r.status_code == 200 and r.content == RESULT
        assert r.headers["content-disposition"].startswith("attachment;")
        assert r.headers["x-content-type-options"] == "nosniff"
        inbound, outbound, fetched = d.events.of_type("file.transferred")
        assert inbound.get("NetworkDirection") == "Inbound"
        assert inbound.get("TargetFileName") == NAME
        assert inbound.get("TargetFileSHA256") == hashlib.sha256(DATA).hexdigest()
        assert outbound.get("TargetFileName") == WRITTEN
        assert fetched.details == {
            "tool": "drive",
            "operation": "download",
            "to": "engineer",
            "via": "console",
        }
        assert fetched.get("TargetFileSHA256") == hashlib.sha256(RESULT).hexdigest()
        assert not d.events.of_type("file.refused")

        # the page as the engineer sees it, for docs/desktop.md; axe
        def shot() -> None:
            panel = b.find_element(By.ID, "drive")
            b.execute_script("arguments[0].scrollIntoView({block: 'end'});", panel)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            assert b.save_screenshot(str(SCREENSHOTS / "desktop-drive-ja.png"))

        await asyncio.to_thread(shot)
        assert await asyncio.to_thread(serious_violations, b) == []


async def test_with_the_drive_off_there_is_no_panel_and_the_routes_refuse(
    tmp_path: Path,
    xrdp_drive: Xrdp,  # noqa: F811
    browser: webdriver.Chrome,  # noqa: F811
) -> None:
    async with pinned_desk(tmp_path, xrdp_drive) as d, served(d.app) as url:
        _gate_drives(d, tmp_path)
        await _live_page(d, browser, url)
        b = browser
        assert not await asyncio.to_thread(b.find_elements, By.ID, "drive")
        assert not await asyncio.to_thread(b.find_elements, By.ID, "drive-file")
        assert (await asyncio.to_thread(_text, b, "drive-off")).startswith("ドライブ：オフ")
        cookies = await asyncio.to_thread(_cookies, b)
        path = f"{url}/console/desktop/{INSTRUMENT}/drive"
        async with httpx.AsyncClient(cookies=cookies, timeout=30) as http:
            r = await http.get(path, params={"port": d.port})
            assert r.status_code == 403
            r = await http.get(f"{path}/file", params={"port": d.port, "file": NAME})
            assert r.status_code == 403
        refused = [e.get("EventResultDetails") for e in d.events.of_type("file.refused")]
        assert refused == ["drive_off", "drive_off"]
        assert not d.events.of_type("file.transferred")
