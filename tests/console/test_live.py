"""Live sessions in the console, in a real headless Chromium, against a real front door.

An engineer is connected through the front door (the store's real access policy,
a real OpenSSH instrument behind it); the hospital's approver signs in to the
console, sees the session in the list, opens it and watches the terminal: the
output of a command the engineer types appears on the page.  An approver of
another hospital cannot watch or end it (403 page and refusal event, the session
runs on).  The approver presses terminate: the engineer's SSH session ends and
``session.terminated`` names the approver.  Screenshots of the list and the
watch page (ja, en) go into docs/images/console/.

The console is served by uvicorn on the test's own event loop, the loop the front
door and its session registry run on (as in ``hoshu serve``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from broker.api.app import create_app
from broker.settings import BrokerSettings
from tests.console.browsing import People, browser_sign_in, switch
from tests.console.conftest import screenshot, wait_for
from tests.control.conftest import PASSWORD
from tests.frontdoor.conftest import front_door_options, world  # noqa: F401  (fixtures)
from tests.frontdoor.harness import World, open_shell, paramiko_client, read_until, shell_ready
from tests.support import poll
from tests.support.served import served as served  # test_desktop_figures imports it from here

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.fixture
def policy_kind() -> str:
    """The front door asks the store's real access policy (the console's services)."""
    return "store"


def term_text(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.ID, "term").text)


@pytest.fixture
def chromium(browser: webdriver.Chrome) -> Iterator[webdriver.Chrome]:
    browser.delete_all_cookies()
    yield browser


async def test_approver_watches_a_live_session_and_terminates_it(
    world: World,  # noqa: F811
    chromium: webdriver.Chrome,
) -> None:
    w = world
    people = People(w)
    people.add_approver("tsuki-appr", "tsuki-hospital")
    w.policy.grant(w.engineer, w.instrument, (w.ssh_port,), ends=w.clock.now + timedelta(hours=1))
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    [live] = w.door.sessions.list()
    sid = live.session_id

    app = create_app(BrokerSettings(data_dir=w.tmp / "api"), services=people.s)
    app.state.live_sessions = lambda: w.door.sessions
    async with served(app) as url:
        # another hospital's approver: the list is empty, watching and ending are refused
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            r = await http.post(
                "/console/login",
                data={
                    "username": "tsuki-appr",
                    "password": PASSWORD,
                    "totp": people.code("tsuki-appr"),
                },
            )
            assert r.status_code == 303, r.text
            w.clock.advance(30)
            listing = await http.get("/console/sessions")
            assert listing.status_code == 200 and sid not in listing.text
            csrf = CSRF.search(listing.text)
            assert csrf
            w.events.clear()
            page = await http.get(f"/console/sessions/{sid}")
            assert page.status_code == 403 and 'data-key="error.forbidden"' in page.text
            stream = await http.get(f"/console/sessions/{sid}/stream")
            assert stream.status_code == 403
            end = await http.post(
                f"/console/sessions/{sid}/terminate", data={"csrf": csrf.group(1)}
            )
            assert end.status_code == 403
        refused = [
            (e.type, e.get("ActorUsername"), e.get("TargetSessionId"))
            for e in w.events.events
            if e.type.endswith(".refused")
        ]
        assert refused == [("recording.refused", "tsuki-appr", sid)] * 2 + [
            ("admin.refused", "tsuki-appr", sid)
        ]
        assert w.events.of_type("recording.viewed") == []
        assert w.door.sessions.get(sid) is not None and not chan.exit_status_ready()

        # the hospital's approver: list, watch, see the command's output, terminate
        code = people.code("appr")
        await asyncio.to_thread(browser_sign_in, chromium, url, "appr", code)
        w.clock.advance(30)
        await asyncio.to_thread(chromium.get, f"{url}/console/sessions")
        row = await asyncio.to_thread(wait_for, chromium, f"tr[data-session='{sid}']")
        assert "Person alice (alice)" in row.text and w.instrument in row.text
        assert "端末" in row.text
        await asyncio.to_thread(screenshot, chromium, "sessions-ja", docs=False)
        await asyncio.to_thread(switch, chromium, "en")
        await asyncio.to_thread(screenshot, chromium, "sessions-en", docs=False)
        await asyncio.to_thread(switch, chromium, "ja")
        row = await asyncio.to_thread(wait_for, chromium, f"tr[data-session='{sid}']")
        await asyncio.to_thread(row.find_element(By.CSS_SELECTOR, "a.watch").click)
        await asyncio.to_thread(wait_for, chromium, "#term-state[data-state='live']")
        await poll(lambda: bool(w.events.of_type("recording.viewed")), 5, "the follow event")
        viewed = w.events.of_type("recording.viewed")[0]
        assert (viewed.get("ActorUsername"), viewed.get("TargetSessionId")) == ("appr", sid)
        await poll(
            lambda: bool((s := w.door.sessions.get(sid)) and s.followers),
            5,
            "the browser to follow the session",
        )
        chan.send(b"printf '\\033[1;32m%s\\033[0m\\n' \"seen-by-$((6*7))\"\n")
        await asyncio.to_thread(read_until, chan, b"seen-by-42")
        await poll(
            lambda: asyncio.to_thread(lambda: "seen-by-42" in term_text(chromium)),
            10,
            "the engineer's output in the browser",
        )
        shown = await asyncio.to_thread(term_text, chromium)
        # the colour codes around the output are not shown raw, nor any other escape
        assert "\nseen-by-42\n" in shown and "\x1b" not in shown, repr(shown)
        await asyncio.to_thread(screenshot, chromium, "watch-ja", docs=False)
        # in English (the page opens a new stream: what comes after is shown)
        await asyncio.to_thread(switch, chromium, "en")
        await asyncio.to_thread(wait_for, chromium, "#term-state[data-state='live']")
        await poll(
            lambda: (s := w.door.sessions.get(sid)) is not None and len(s.followers) == 1,
            5,
            "the English page to follow the session",
        )
        chan.send(b"ls -1 /etc/hostname; echo done-$((1+2))\n")
        await poll(
            lambda: asyncio.to_thread(lambda: "\ndone-3" in term_text(chromium)),
            10,
            "the second command's output in the browser",
        )
        await asyncio.to_thread(screenshot, chromium, "watch-en", docs=False)

        w.events.clear()
        await asyncio.to_thread(lambda: chromium.find_element(By.ID, "terminate").click())
        notice = await asyncio.to_thread(wait_for, chromium, "#notice")
        assert "terminated" in notice.text
        await poll(chan.exit_status_ready, 5, "the engineer's session to end")
        [ended] = w.events.of_type("session.terminated")
        assert ended.details["by"] == "appr" and ended.get("TargetSessionId") == sid
        assert w.door.sessions.get(sid) is None
        assert await asyncio.to_thread(lambda: chromium.find_elements(By.ID, "empty"))
    t.close()
