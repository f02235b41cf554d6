"""The engineer's and the admins' console in a real headless Chromium (Debian's) against
a real broker on loopback.

An engineer signs in with password and TOTP, fills in the request form by keyboard
(instrument, ports, duration, reason, ticket, work plan) and sends it; the request
is listed on their page as waiting, and appears in the approver's inbox with the
same fields.  Screenshots of the engineer's and the admin's main pages, Japanese
and English, go into docs/images/console/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.console.conftest import Console, screenshot, sign_in, wait_for
from tests.control.conftest import openssh_public_key

pytestmark = pytest.mark.xdist_group("console-browser-engineer")

AXE = Path(__file__).parents[2] / "node_modules" / "axe-core" / "axe.min.js"


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
    assert isinstance(result, list)  # axe ran: a list of findings, maybe empty
    return [
        f"{rule} ({impact}, {count}): {where}"
        for rule, impact, count, where in result
        if impact in ("serious", "critical")
    ]


REASON = "試薬プローブの交換（定期保守）"
PLAN = "1. 分析装置を停止\n2. プローブ交換\n3. 精度管理を確認"


def test_engineer_requests_access_and_it_reaches_the_approvers_inbox(
    console: Console, browser: webdriver.Chrome
) -> None:
    c = console
    sign_in(browser, c, "eng")
    wait_for(browser, "#no-requests")  # engineers land on their own requests
    browser.get(f"{c.url}/console/my/request")
    field = wait_for(browser, "#instruments")
    field.send_keys("cobas-1")
    # keyboard alone: Tab moves through the form in order
    field.send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert active.get_attribute("id") == "ports"
    active.send_keys("22, 8080")
    duration = browser.find_element(By.ID, "duration")
    duration.clear()
    duration.send_keys("90")
    browser.find_element(By.ID, "reason").send_keys(REASON)
    browser.find_element(By.ID, "ticket").send_keys("INC-3001")
    browser.find_element(By.ID, "work_plan").send_keys(PLAN)
    screenshot(browser, "engineer-request-ja")
    browser.find_element(By.ID, "send-request").send_keys(Keys.ENTER)
    notice = wait_for(browser, "#notice")
    assert "送信しました" in notice.text
    [row] = browser.find_elements(By.CSS_SELECTOR, "#requests tr[data-request]")
    request_id = row.get_attribute("data-request") or ""
    assert REASON in row.text and "承認待ち" in row.text and "INC-3001" in row.text
    screenshot(browser, "engineer-requests-ja")
    [made] = c.services.requests.list_requests(c.world.actors["eng"], "pending")
    assert made.id == request_id and made.ports == [22, 8080] and made.duration_s == 5400
    assert made.work_plan == PLAN

    sign_in(browser, c, "appr")
    card = wait_for(browser, f"#request-{request_id}")
    for shown in ("cobas-1", "22, 8080", REASON, "INC-3001", "プローブ交換", "acme-labs"):
        assert shown in card.text, shown


def test_screenshots_of_the_engineer_and_admin_pages(
    console: Console, browser: webdriver.Chrome
) -> None:
    """Every main engineer and admin page in Japanese and English (the pages render
    in a real browser under the strict CSP: no page needs a script), and axe-core
    finds no serious or critical accessibility violation on any of them."""
    c = console
    c.request(["las-line-a"], "搬送ラインのセンサー校正", ticket="INC-3002", ports=[22])
    granted = c.request(["cobas-1"], "精度管理の確認", ticket="INC-2999", ports=[22, 8080])
    c.services.requests.approve(c.world.actors["appr"], granted.id)
    c.services.people.add_key(
        c.world.actors["eng"],
        openssh_public_key() + " tanaka@laptop",
    )
    pages = {
        "eng": [
            ("engineer-instruments", "/console/my/instruments", "#instruments"),
            ("engineer-keys", "/console/my/keys", "#keys"),
            ("engineer-requests", "/console/my/requests", "#grants"),
            ("engineer-request", "/console/my/request", "#request-form"),
        ],
        "hadmin": [
            ("admin-people", "/console/admin/people", "#people"),
            ("admin-orgs", "/console/admin/orgs", "#orgs"),
            ("admin-contracts", "/console/admin/contracts", "#contracts"),
            ("admin-policies", "/console/admin/policies", "#policy-form"),
            ("admin-gateways", "/console/admin/gateways", "#token-form"),
            ("admin-instruments", "/console/admin/instruments", "#instruments"),
        ],
    }
    for who, shots in pages.items():
        sign_in(browser, c, who)
        for lang in ("ja", "en"):
            browser.get(f"{c.url}/console/lang/{lang}?next=/console/")
            for name, path, ready in shots:
                if name == "engineer-request" and lang == "ja":
                    continue  # taken filled in, above
                browser.get(c.url + path)
                wait_for(browser, ready)
                assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
                assert not browser.find_elements(By.ID, "error")
                if lang == "ja" or name == "engineer-request":  # the same markup in en
                    assert serious_violations(browser) == [], name
                screenshot(browser, f"{name}-{lang}")
        browser.get(f"{c.url}/console/lang/ja?next=/console/")
