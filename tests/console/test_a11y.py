"""The console by keyboard alone and under axe-core, in Debian's headless Chromium.

An approver signs in with Tab and Enter only, reaches the inbox, writes a comment and
approves with Enter: the grant is issued. The keyboard focus is visible on every step
(the style sheet's focus ring). axe-core 4.14.1 (npm, pinned) finds no serious or
critical violation on any page a person reads: sign-in, account, the approver's (inbox,
grants, sessions, gateway, emergencies with an emergency, reports, host keys, held
commands), the engineer's, the admin's (notifications included) and the auditor's (search,
recordings, verify, review, compliance), in Japanese and in English.  (The desktop pages:
tests/desktop/test_desktop_a11y.py, over a real Xvnc; the terminal player and the live
watch page: the end-to-end test on the demo.) (The end-to-end test on the demo,
tests/console/test_e2e_browser.py, runs axe-core on every role's pages with real data.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from broker.access.model import GrantStatus, RequestStatus
from broker.access.requests import NewRequest
from tests.console.auditdesk import audit_runtime, install
from tests.console.conftest import Console, focused, serious_violations, sign_in, tab_to, wait_for
from tests.control.conftest import PASSWORD

pytestmark = pytest.mark.xdist_group("console-browser-a11y")


# every page of the console's router that a person reads (the desktop pages are
# tests/desktop/test_desktop_a11y.py's; the player and the live watch the end-to-end test's)
APPROVER_PAGES = (
    "/console/inbox",
    "/console/grants",
    "/console/sessions",
    "/console/gateway",
    "/console/emergencies",
    "/console/reports",
    "/console/host-keys",
    "/console/holds",
)
ENGINEER_PAGES = (
    "/console/my/instruments",
    "/console/my/request",
    "/console/my/requests",
    "/console/my/keys",
)
ADMIN_PAGES = (
    *(f"/console/admin/{p}" for p in ("orgs", "people", "contracts", "policies", "gateways")),
    "/console/admin/instruments",
    "/console/admin/notifications",
)
AUDITOR_PAGES = (
    "/console/audit",
    "/console/recordings",
    "/console/audit/verify",
    "/console/audit/review",
    "/console/audit/compliance",
)


def _ring(driver: webdriver.Chrome) -> str:
    """The focused element's outline as the browser draws it."""
    return str(
        driver.execute_script(
            "const s = getComputedStyle(document.activeElement);"
            "return s.outlineStyle + ' ' + s.outlineWidth;"
        )
    )


def _visible_ring(driver: webdriver.Chrome) -> None:
    ring = _ring(driver)
    assert not ring.startswith("none") and not ring.endswith(" 0px"), (focused(driver), ring)


def test_keyboard_alone_signs_in_reaches_the_inbox_and_approves(
    console: Console, browser: webdriver.Chrome
) -> None:
    c, b = console, browser
    req = c.request(["cobas-1"], "キーボードだけで承認", ticket="INC-3001")
    b.delete_all_cookies()
    b.get(f"{c.url}/console/login")
    wait_for(b, "#username")
    tab_to(b, "username")
    _visible_ring(b)
    b.switch_to.active_element.send_keys("appr" + Keys.TAB)
    assert focused(b) == "password"
    _visible_ring(b)
    b.switch_to.active_element.send_keys(PASSWORD)
    tab_to(b, "totp")
    b.switch_to.active_element.send_keys(c.code("appr") + Keys.ENTER)
    WebDriverWait(b, 10, poll_frequency=0.05).until(lambda d: "/console/login" not in d.current_url)
    c.clock.advance(30)
    # the inbox by keyboard: Tab to its link in the navigation, Enter
    b.get(f"{c.url}/console/grants")
    wait_for(b, "main h1")
    link = wait_for(b, "nav a[href='/console/inbox']")
    link_id = link.get_attribute("id")
    if not link_id:  # focus it by Tab, compared by element
        for _ in range(30):
            b.switch_to.active_element.send_keys(Keys.TAB)
            if b.switch_to.active_element == link:
                break
        assert b.switch_to.active_element == link, "Tab never reached the inbox link"
    else:
        tab_to(b, link_id)
    _visible_ring(b)
    b.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(b, f"#request-{req.id}")
    tab_to(b, f"comment-{req.id}", limit=80)
    _visible_ring(b)
    b.switch_to.active_element.send_keys("キーボードで承認します")
    b.switch_to.active_element.send_keys(Keys.TAB)
    button = b.switch_to.active_element
    assert "approve" in (button.get_attribute("class") or ""), button.get_attribute("outerHTML")
    _visible_ring(b)
    c.emitter.clear()
    button.send_keys(Keys.ENTER)
    wait_for(b, "#notice")
    view = c.services.requests.show(c.world.admin, req.id)
    assert view.request.status == RequestStatus.APPROVED
    assert view.grant is not None and view.grant.status == GrantStatus.ACTIVE
    [approved] = c.emitter.of_type("request.approved")
    assert approved.record["Details"]["comment"] == "キーボードで承認します"


@pytest.mark.parametrize("lang", ["ja", "en"])
def test_axe_finds_nothing_serious_on_the_main_pages(
    console: Console, browser: webdriver.Chrome, lang: str, tmp_path: Path
) -> None:
    c, b = console, browser
    c.request(["cobas-1"], "<b>axe</b> の確認", ticket="INC-3002", work_plan="1. 確認")
    w = c.world
    w.s.estate.update_policy(w.actors["hadmin"], "hoshi-hospital", {"emergency_allowed": True})
    if not w.s.grants.list_grants(w.actors["appr"]):  # once per module: the emergency's grant
        w.s.grants.start_emergency(
            w.actors["eng"], NewRequest(["cobas-1"], 1800, "<b>夜間の停止</b> axe")
        )
    findings: dict[str, list[str]] = {}

    def check(path: str) -> None:
        b.get(c.url + path)
        if not b.find_elements(By.CSS_SELECTOR, "main h1"):  # not the page: a finding too
            findings[path] = [f"no page heading at {b.current_url}: {b.title}"]
            return
        if b.find_elements(By.CSS_SELECTOR, f"#lang-{lang}"):
            b.find_element(By.ID, f"lang-{lang}").click()
            wait_for(b, f"html[lang={lang}]")
        found = serious_violations(b)
        if found:
            findings[path] = found

    b.delete_all_cookies()
    check("/console/login")
    # the first sign-in's TOTP enrolment page (the QR code), for a person not enrolled yet
    newcomer = f"new-{lang}"
    w.add_user(newcomer, w.hospital, ["approver"])
    wait_for(b, "#username").send_keys(newcomer)
    b.find_element(By.ID, "password").send_keys(PASSWORD)
    b.find_element(By.ID, "signin").click()
    wait_for(b, "#totp-qr")
    found = serious_violations(b)
    if found:
        findings["/console/account/totp"] = found
    sign_in(b, c, "eng")
    for path in ENGINEER_PAGES:
        check(path)
    sign_in(b, c, "hadmin")
    for path in ADMIN_PAGES:
        check(path)
    w.add_user(f"vadmin-{lang}", w.vendor, ["vendor_admin"])  # the vendor's own page
    sign_in(b, c, f"vadmin-{lang}")
    check("/console/admin/notifications")
    with audit_runtime(tmp_path / "audit") as audit:  # the broker's audit parts
        install(c.app, audit, tmp_path / "recordings")
        sign_in(b, c, "appr")
        for path in APPROVER_PAGES:
            check(path)
        for path in ("/console/account", "/console/account/password"):
            check(path)
        sign_in(b, c, "aud")
        for path in AUDITOR_PAGES:
            check(path)
    assert findings == {}, findings
