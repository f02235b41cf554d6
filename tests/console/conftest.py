"""Fixtures of the console tests: a real broker app on loopback, a real headless Chromium.

One broker (uvicorn in a thread, over a migrated SQLite store and the control plane's
services, the seeded world of ``tests/control``) and one browser per module.  The
browser is Debian's ``/usr/bin/chromium`` driven through ``/usr/bin/chromedriver``
(Selenium, nothing downloaded), headless, with a fresh profile.  Besides: the
console sign-ins over HTTP (``signed_in``, ``bearer``, ``csrf_of``) and, for the
notification tests, a real SMTP server (``smtp``, aiosmtpd).
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from audit.testing import CapturingEmitter
from broker.access import totp
from broker.access.model import AccessRequest
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.api.app import create_app
from broker.settings import BrokerSettings
from broker.store.db import Store
from tests.control.conftest import PASSWORD, T0, World, build_world, make_context
from tests.support import FakeClock, free_port, poll_sync

# Debian's chromium and chromium-driver; a CI runner's preinstalled Google Chrome and its
# matching chromedriver are taken when Debian's are not there
CHROMIUM = next(
    (b for b in ("/usr/bin/chromium", "/usr/bin/google-chrome") if os.access(b, os.X_OK)),
    "/usr/bin/chromium",
)
CHROMEDRIVER = (
    "/usr/bin/chromedriver"
    if os.access("/usr/bin/chromedriver", os.X_OK)
    else (shutil.which("chromedriver") or "/usr/bin/chromedriver")
)
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "images" / "console"
# screenshots of pages whose docs image another test takes (the end-to-end one, on the
# demo's data): kept out of the docs so the docs show one consistent run
SPARE_SHOTS = Path(__file__).parents[2] / "build" / "screenshots"
AXE = Path(__file__).parents[2] / "node_modules" / "axe-core" / "axe.min.js"  # npm, pinned


@dataclass
class Console:
    """A running broker with its console, the world it serves, and what it emitted."""

    app: Any
    url: str
    world: World
    emitter: CapturingEmitter
    clock: FakeClock
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def services(self) -> Services:
        return self.world.s

    def code(self, name: str) -> str:
        """The TOTP code for ``name`` at the clock's present step (enrolled on first use).

        It leaves the clock where it is: a code is accepted once, so whoever signs the
        same person in again moves the clock a step (30 s) on first, as ``signed_in``,
        ``bearer`` and ``sign_in`` do after each sign-in."""
        if name not in self.secrets:
            self.secrets[name] = self.world.enrol_totp(name)
        code = totp.code_at(self.secrets[name], self.clock())
        return code

    def request(
        self, instruments: list[str], reason: str, *, engineer: str = "eng", **extra: object
    ) -> AccessRequest:
        new = NewRequest(instruments, 3600, reason, **extra)  # type: ignore[arg-type]
        return self.services.requests.create(self.world.actors[engineer], new)


@contextmanager
def serving(app: object) -> Iterator[str]:
    """``app`` served by uvicorn on a loopback port, in a thread; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))  # type: ignore[arg-type]
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    poll_sync(lambda: server.started, 10, "the broker's HTTP server to start", interval_s=0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def site(tmp: Path, **settings: Any) -> Iterator[Console]:
    """The broker's API and console over a fresh SQLite store in ``tmp``, world seeded
    (not served: ``url`` is empty)."""
    store = Store(f"sqlite:///{tmp / 'hoshu.db'}")
    emitter = CapturingEmitter()
    clock = FakeClock(T0)
    services = Services.build(make_context(store, emitter, clock))
    world = build_world(services, clock)
    app = create_app(BrokerSettings(data_dir=tmp / "data", **settings), services=services)
    app.state.notification_store = store.engine  # as build_broker sets it
    try:
        yield Console(app, "", world, emitter, clock)
    finally:
        store.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The broker's API and console served on a loopback port."""
    with site(tmp_path_factory.mktemp("console")) as c, serving(c.app) as url:
        c.url = url
        yield c


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, one per module."""
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), (
        "install Debian's chromium and chromium-driver (./run does)"
    )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        "--lang=ja",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"intl.accept_languages": "ja,en;q=0.5"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def client(c: Console, lang: str = "ja") -> TestClient:
    """A console client that has not signed in, asking for pages in ``lang``."""
    return TestClient(c.app, raise_server_exceptions=False, headers={"Accept-Language": lang})


def signed_in(c: Console, name: str, lang: str = "ja") -> TestClient:
    """A console client signed in as ``name`` through the form (password and TOTP code);
    the clock then moves a step, so the next sign-in gets a code of its own."""
    http = client(c, lang)
    r = http.post(
        "/console/login",
        data={"username": name, "password": PASSWORD, "totp": c.code(name)},
        follow_redirects=False,
    )
    c.clock.advance(30)
    assert r.status_code == 303, r.text
    return http


def bearer(c: Console, name: str) -> dict[str, str]:
    """API headers for ``name`` signed in with password and TOTP code; the clock then
    moves a step, as after ``signed_in``."""
    issued = c.services.auth.login(name, PASSWORD, c.code(name), "127.0.0.1")
    c.clock.advance(30)
    return {"Authorization": f"Bearer {issued.token}"}


def csrf_of(http: TestClient, page: str = "/console/inbox") -> str:
    """The CSRF token of the form on ``page``."""
    m = CSRF.search(http.get(page).text)
    assert m, "the page carries no CSRF token"
    return m.group(1)


def visible_text(page: str) -> str:
    """The page's text as a reader sees it: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


LANG_LINK = re.compile(r'href="/console/lang/[^"]*"')


def beyond_lang_links(page: str) -> str:
    """The page without its language links, which carry the caller's own request (path
    and query) back to it: what is left is what the page tells about anything else."""
    return LANG_LINK.sub("", page)


def wait_for(driver: webdriver.Chrome, css: str, timeout: float = 10) -> WebElement:
    """The element ``css`` once it is on the page (polled by WebDriverWait)."""
    found: WebElement = WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.find_element(By.CSS_SELECTOR, css)
    )
    return found


def sign_in(driver: webdriver.Chrome, c: Console, name: str, *, password: str = PASSWORD) -> None:
    """Sign ``name`` in through the console's form with password and a TOTP code."""
    driver.delete_all_cookies()
    driver.get(f"{c.url}/console/login")
    code = c.code(name)
    wait_for(driver, "#username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "totp").send_keys(code)
    driver.find_element(By.ID, "signin").click()
    try:
        WebDriverWait(driver, 10, poll_frequency=0.05).until(
            lambda d: not d.current_url.endswith("/console/login")
        )
    except TimeoutException:
        error = driver.find_elements(By.ID, "error")
        raise AssertionError(
            f"{name} could not sign in: "
            f"{error[0].get_attribute('data-key') if error else driver.title}"
        ) from None
    c.clock.advance(30)  # the next sign-in needs the next TOTP step


def screenshot(driver: webdriver.Chrome, name: str, *, docs: bool = True) -> Path:
    """A full-page PNG into docs/images/console/ (the window is grown to the page), or
    with ``docs=False`` into build/screenshots/ (a page the docs show from another test)."""
    height = int(driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)"))
    driver.set_window_size(1280, max(700, min(height + 140, 4000)))
    folder = SCREENSHOTS if docs else SPARE_SHOTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    return path


def serious_violations(driver: webdriver.Chrome) -> list[str]:
    """axe-core's serious and critical findings on the page (WCAG 2 A/AA rules)."""
    assert AXE.is_file(), "install the npm packages (./run does: npm ci)"
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'best-practice']})"
        ".then(r => done(r.violations.map(v => [v.id, v.impact, v.nodes.length,"
        " v.nodes.slice(0, 2).map(n => n.target.join(' '))])))"
        ".catch(e => done([['axe-error', 'critical', 0, [String(e)]]]));"
    )
    assert isinstance(result, list)
    return [
        f"{rule} ({impact}, {count}): {where}"
        for rule, impact, count, where in result
        if impact in ("serious", "critical")
    ]


def focused(driver: webdriver.Chrome) -> str:
    return str(driver.execute_script("return document.activeElement.id || ''"))


def tab_to(driver: webdriver.Chrome, element_id: str, limit: int = 40) -> None:
    """Press Tab until the element with ``element_id`` has the focus."""
    body = driver.switch_to.active_element
    for _ in range(limit):
        if focused(driver) == element_id:
            return
        body = driver.switch_to.active_element
        body.send_keys(Keys.TAB)
    raise AssertionError(f"Tab never reached #{element_id} (stuck on #{focused(driver)})")


@dataclass
class Inbox:
    """What the SMTP server received: (envelope recipients, parsed message)."""

    mails: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(mail, EmailMessage)
        self.mails.append((list(envelope.rcpt_tos), mail))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd) on a loopback port: what it receives, and its port."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
