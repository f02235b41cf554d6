"""The auditor's console in a real headless Chromium, over a real recorded session.

An engineer works through the front door with stock ``ssh`` (the store's real access
policy, a real OpenSSH instrument behind it): the shell's output is recorded by the broker's
recorder, and the session's events go into a real hash-chained log shipped into
the event index.  The hospital's auditor signs in, finds the session by the
engineer's name, opens its recording and plays it in asciinema-player (served by
the broker, under the console's CSP with no inline script): the command's output
appears in the player, and the page shows the stored recording's SHA-256 equal
to the one in the session's audit event.  The auditor exports the search as CSV:
the downloaded file holds the session's rows.  The chain is verified from the
console.  Screenshots (ja, en) of the search, the player, the verify page, the
monthly review and the compliance report go into docs/images/console/.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from broker.api.app import create_app
from broker.settings import BrokerSettings
from tests.console.auditdesk import audit_runtime, indexed, install
from tests.console.browsing import People, browser_sign_in, switch
from tests.console.conftest import screenshot, wait_for
from tests.frontdoor.conftest import front_door_options, world  # noqa: F401  (fixtures)
from tests.frontdoor.harness import World, run
from tests.support import poll, poll_sync
from tests.support.served import served

pytestmark = pytest.mark.xdist_group("console-browser")


@pytest.fixture
def policy_kind() -> str:
    """The front door asks the store's real access policy (the console's services)."""
    return "store"


def _player_text(driver: webdriver.Chrome) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, "#player .ap-term-text")
    return str(found[0].text) if found else ""


def _wait(driver: webdriver.Chrome, css: str) -> WebElement:
    """``css`` on the page, waited for long enough for a busy two-core machine."""
    return wait_for(driver, css, 30)


def _console_log(driver: webdriver.Chrome) -> list[dict[str, str]]:
    try:
        return list(driver.get_log("browser"))  # type: ignore[no-untyped-call]
    except Exception:  # a driver without the log: the played output is the proof
        return []


def _downloaded(folder: Path) -> Path | None:
    """The finished download: Chromium creates the file's final name empty when the
    download starts and fills it when its ``.crdownload`` is renamed over it."""
    if list(folder.glob("*.crdownload")):
        return None
    done = [p for p in folder.glob("hoshu-audit*.csv") if p.stat().st_size > 0]
    return done[0] if done else None


async def test_auditor_finds_plays_and_exports_a_recorded_session(
    world: World,  # noqa: F811
    browser: webdriver.Chrome,
) -> None:
    w = world
    people = People(w)
    w.policy.grant(w.engineer, w.instrument, (w.ssh_port,), ends=w.clock.now + timedelta(hours=1))
    # the engineer's shell through stock OpenSSH (a terminal asked for: a recorded shell)
    typed = b'echo "played-$((6*7))"\nexit\n'
    r = await run(w.ssh_argv(extra=("-tt", w.login())), w.env(), stdin=typed)
    assert b"played-42" in r.out, (r.rc, r.err[-300:])
    await poll(lambda: bool(w.events.of_type("session.ended")), 10, "the session to end")
    [started] = w.events.of_type("session.started")
    sid = str(started.get("TargetSessionId"))
    [ended] = w.events.of_type("session.ended")
    assert (w.tmp / "recordings" / f"{sid}.cast").exists()

    with audit_runtime(w.tmp / "audit-rt") as audit:
        # the session's events, as the front door wrote them, into the hash-chained log
        for event in list(w.events.events):
            audit.log.emit(event)
        app = create_app(BrokerSettings(data_dir=w.tmp / "api"), services=people.s)
        install(app, audit, w.tmp / "recordings")
        await asyncio.to_thread(indexed, audit, ended)
        downloads = w.tmp / "downloads"
        downloads.mkdir()
        browser.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        async with served(app) as url:
            b = browser
            await asyncio.to_thread(browser_sign_in, b, url, "aud", people.code("aud"))
            w.clock.advance(30)
            await asyncio.to_thread(b.get, f"{url}/console/audit")
            await asyncio.to_thread(_wait, b, "#filters")
            # the search: the engineer's name, the session's end
            await asyncio.to_thread(lambda: b.find_element(By.ID, "f-engineer").send_keys("alice"))
            await asyncio.to_thread(
                lambda: b.find_element(
                    By.CSS_SELECTOR, "#f-type option[value='session.ended']"
                ).click()
            )
            await asyncio.to_thread(lambda: b.find_element(By.ID, "search").click())
            row = await asyncio.to_thread(_wait, b, "tr[data-type='session.ended']")
            assert sid in row.text and w.instrument in row.text
            await asyncio.to_thread(screenshot, b, "audit-search-ja", docs=False)
            searched = b.current_url
            assert "engineer=alice" in searched and "type=session.ended" in searched
            await asyncio.to_thread(switch, b, "en")
            await asyncio.to_thread(b.get, searched)  # the same search, in English
            await asyncio.to_thread(_wait, b, "tr[data-type='session.ended']")
            assert len(b.find_elements(By.CSS_SELECTOR, "#events tbody tr")) == 1
            await asyncio.to_thread(screenshot, b, "audit-search-en", docs=False)

            # export the same search as CSV: the file has the session's row
            await asyncio.to_thread(lambda: b.find_element(By.ID, "export-csv").click())
            path = await asyncio.to_thread(
                poll_sync, lambda: _downloaded(downloads), 15, "the CSV download"
            )
            assert path is not None
            table = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
            assert [(r["EventType"], r["TargetSessionId"]) for r in table] == [
                ("session.ended", sid)
            ]
            assert table[0]["RecordingSHA256"] == ended.get("RecordingSHA256")
            assert [e.get("ActorUsername") for e in w.events.of_type("audit.exported")] == ["aud"]

            # open the recording and play it
            await asyncio.to_thread(switch, b, "ja")
            link = await asyncio.to_thread(_wait, b, f"a.session[href$='/{sid}']")
            await asyncio.to_thread(link.click)
            check = await asyncio.to_thread(_wait, b, "#sha-check")
            assert check.get_attribute("data-check") == "match"
            stored = b.find_element(By.ID, "sha-stored").text
            assert stored == b.find_element(By.ID, "sha-recorded").text
            assert stored == ended.get("RecordingSHA256")
            button = await asyncio.to_thread(_wait, b, "#player .ap-play-button")
            await asyncio.to_thread(button.click)
            await poll(
                lambda: asyncio.to_thread(lambda: "played-42" in _player_text(b)),
                20,
                "the recorded output in the player",
            )
            viewed = w.events.of_type("recording.viewed")
            assert [(e.get("ActorUsername"), e.get("TargetSessionId")) for e in viewed] == [
                ("aud", sid)
            ]
            # no script was refused by the page's CSP (the player runs as WebAssembly)
            logs = await asyncio.to_thread(_console_log, b)
            assert not [x for x in logs if "Content Security Policy" in x.get("message", "")]
            await asyncio.to_thread(screenshot, b, "audit-player-ja", docs=False)
            await asyncio.to_thread(_wait, b, "#player-state[data-state='ended']")
            # seek back and play faster: a new player at 2x plays to the end again
            await asyncio.to_thread(lambda: b.find_element(By.ID, "back10").click())
            await asyncio.to_thread(
                lambda: b.find_element(By.CSS_SELECTOR, "#speed option[value='2']").click()
            )
            await asyncio.to_thread(_wait, b, "#player-state[data-state='ended']")
            assert "played-42" in _player_text(b)
            await asyncio.to_thread(switch, b, "en")
            button = await asyncio.to_thread(_wait, b, "#player .ap-play-button")
            await asyncio.to_thread(button.click)
            await poll(
                lambda: asyncio.to_thread(lambda: "played-42" in _player_text(b)),
                20,
                "the recorded output in the player (en)",
            )
            await asyncio.to_thread(screenshot, b, "audit-player-en", docs=False)

            # verify the chain (the log's signed checkpoint first, as its timer writes one)
            await asyncio.to_thread(audit.log.checkpoint)
            await asyncio.to_thread(b.get, f"{url}/console/audit/verify")
            await asyncio.to_thread(lambda: b.find_element(By.ID, "verify").click())
            result = await asyncio.to_thread(_wait, b, "#verify-result")
            assert result.get_attribute("data-ok") == "true"
            await asyncio.to_thread(screenshot, b, "audit-verify-en", docs=False)
            await asyncio.to_thread(switch, b, "ja")
            await asyncio.to_thread(lambda: b.find_element(By.ID, "verify").click())
            result = await asyncio.to_thread(_wait, b, "#verify-result")
            assert result.get_attribute("data-ok") == "true"
            await asyncio.to_thread(screenshot, b, "audit-verify-ja", docs=False)

            # the monthly review and the compliance report (printable pages)
            month = str(ended.get("TimeGenerated"))[:7]
            await asyncio.to_thread(b.get, f"{url}/console/audit/review?month={month}")
            await asyncio.to_thread(_wait, b, "#findings")
            await asyncio.to_thread(screenshot, b, "audit-review-ja")
            await asyncio.to_thread(b.get, f"{url}/console/audit/compliance")
            await asyncio.to_thread(_wait, b, "#controls")
            await asyncio.to_thread(screenshot, b, "audit-compliance-ja")
            await asyncio.to_thread(switch, b, "en")
            await asyncio.to_thread(_wait, b, "#controls")
            await asyncio.to_thread(screenshot, b, "audit-compliance-en")
            await asyncio.to_thread(b.get, f"{url}/console/audit/review?month={month}")
            await asyncio.to_thread(_wait, b, "#findings")
            await asyncio.to_thread(screenshot, b, "audit-review-en")
