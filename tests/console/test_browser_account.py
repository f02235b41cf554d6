"""Console accounts in a real headless Chromium (Debian's) against a real broker on loopback.

A new approver signs in with the password alone, lands on the enrolment page, reads
the secret off the page (as a person typing it into an authenticator would), confirms
a code made from it, and is signed in; signing in again takes password and TOTP.  The
password page changes the password; after five minutes an approval asks for a fresh
code on the step-up page and then goes ahead.  Screenshots of the enrolment, password
and step-up pages in Japanese and English go into docs/images/console/.
"""

from __future__ import annotations

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from broker.access import totp
from broker.access.model import RequestStatus
from broker.access.stepup import STEP_UP_S
from tests.console.conftest import Console, screenshot, sign_in, wait_for
from tests.control.conftest import PASSWORD

# one broker and one browser for the module; the tests build on one another, in order
pytestmark = pytest.mark.xdist_group("console-browser-account")

NEW_PASSWORD = "Sakura-no-hana-2026"
PASSWORDS: dict[str, str] = {}  # a password a test of this module changed, by user


def _enrolled(c: Console, driver: webdriver.Chrome, name: str, lang: str) -> None:
    """``name`` exists with TOTP set up through the page (each test may run alone)."""
    if name not in c.secrets:
        _enrol(c, driver, name, lang)


def _lang(driver: webdriver.Chrome, lang: str) -> None:
    links = driver.find_elements(By.ID, f"lang-{lang}")
    if links:
        links[0].click()
        WebDriverWait(driver, 10, poll_frequency=0.05).until(
            lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
        )


def _enrol(c: Console, driver: webdriver.Chrome, name: str, lang: str) -> str:
    """Sign ``name`` in with the password alone, enrol from the page; the secret."""
    c.world.add_user(name, c.world.hospital, ["approver"])
    driver.delete_all_cookies()
    driver.get(f"{c.url}/console/login")
    _lang(driver, lang)
    wait_for(driver, "#username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "signin").click()
    secret_el = wait_for(driver, "#totp-secret")
    assert driver.current_url.endswith("/console/account/totp")
    assert "secret" not in driver.current_url.lower()
    qr = driver.find_element(By.CSS_SELECTOR, "#totp-qr")
    assert qr.size["width"] >= 150, "the QR code is drawn large enough to scan"
    secret = secret_el.text.replace(" ", "")
    screenshot(driver, f"account-totp-{lang}")
    driver.find_element(By.ID, "code").send_keys(totp.code_at(secret, c.clock()))
    driver.find_element(By.ID, "confirm").click()
    notice = wait_for(driver, "#notice")
    c.clock.advance(30)
    assert driver.current_url.endswith("/console/account?done=totp_enrolled")
    assert notice.text
    c.secrets[name] = secret  # conftest's sign_in makes codes from it from now on
    return secret


def test_first_sign_in_enrols_totp_from_the_page(
    console: Console, browser: webdriver.Chrome
) -> None:
    c = console
    _enrol(c, browser, "hanako", "ja")
    assert browser.find_element(By.ID, "account-totp").text == "設定済み"
    # signing in again takes the password and a code of the app's
    sign_in(browser, c, "hanako")
    assert browser.current_url.endswith("/console/inbox")
    _enrol(c, browser, "jane", "en")
    assert browser.find_element(By.ID, "account-totp").text == "Set up"


def test_change_password_in_the_browser(console: Console, browser: webdriver.Chrome) -> None:
    c = console
    _enrolled(c, browser, "hanako", "ja")
    for lang in ("en", "ja"):
        sign_in(browser, c, "hanako", password=PASSWORDS.get("hanako", PASSWORD))
        _lang(browser, lang)
        browser.find_element(By.ID, "account").click()
        wait_for(browser, "#to-password").click()
        wait_for(browser, "#current")
        screenshot(browser, f"account-password-{lang}")
    old, new = (PASSWORDS.get("hanako", PASSWORD), NEW_PASSWORD)
    browser.find_element(By.ID, "current").send_keys(old)
    browser.find_element(By.ID, "new").send_keys(new)
    browser.find_element(By.ID, "new2").send_keys(new)
    browser.find_element(By.ID, "change").click()
    assert "パスワードを変更しました" in wait_for(browser, "#notice").text
    PASSWORDS["hanako"] = new
    sign_in(browser, c, "hanako", password=new)
    assert browser.current_url.endswith("/console/inbox")


def test_an_approval_after_five_minutes_asks_for_a_fresh_code(
    console: Console, browser: webdriver.Chrome
) -> None:
    c = console
    for lang, name in (("ja", "hanako"), ("en", "jane")):
        _enrolled(c, browser, name, lang)
        password = PASSWORDS.get(name, PASSWORD)
        req = c.request(["cobas-1"], f"step-up in {lang}")
        sign_in(browser, c, name, password=password)
        _lang(browser, lang)
        c.clock.advance(STEP_UP_S + 1)
        browser.refresh()
        card = wait_for(browser, f"#request-{req.id}")
        card.find_element(By.TAG_NAME, "textarea").send_keys("確認済み" if lang == "ja" else "ok")
        card.find_element(By.CSS_SELECTOR, "button.approve").click()
        code_input = wait_for(browser, "#stepup-code")
        assert c.services.requests.show(c.world.admin, req.id).request.status == (
            RequestStatus.PENDING
        )
        screenshot(browser, f"account-stepup-{lang}")
        code_input.send_keys(c.code(name))
        browser.find_element(By.ID, "stepup-submit").click()
        wait_for(browser, "#notice")
        c.clock.advance(30)
        assert c.services.requests.show(c.world.admin, req.id).request.status == (
            RequestStatus.APPROVED
        )
        approved = c.emitter.of_type("request.approved")[-1].record
        assert approved["Details"]["comment"] == ("確認済み" if lang == "ja" else "ok")
