"""The approver's console in a real headless Chromium against a real broker on loopback.

What a hospital approver sees and does: signs in with password and TOTP, sees the
pending requests of their own hospital only, approves one with a comment (the grant
exists and the audit log names the approver), sees the progress of a two-approver
request, denies one; a form sent without its CSRF token changes nothing; an engineer
cannot open the inbox; the page switches to English.  Screenshots of the inbox (ja,
en) and the sign-in page go into docs/images/console/.
"""

from __future__ import annotations

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from broker.access.model import GrantStatus, RequestStatus
from tests.console.conftest import Console, screenshot, sign_in, wait_for

# one broker and one browser for the module, and its tests build on one another (the
# grants page revokes the grant approved before): one xdist worker runs them, in order
pytestmark = pytest.mark.xdist_group("console-browser")


def _inbox_ids(driver: webdriver.Chrome) -> set[str]:
    return {
        a.get_attribute("data-request") or ""
        for a in driver.find_elements(By.CSS_SELECTOR, "article.request")
    }


def _decide(driver: webdriver.Chrome, request_id: str, button: str, comment: str) -> None:
    card = wait_for(driver, f"#request-{request_id}")
    card.find_element(By.TAG_NAME, "textarea").send_keys(comment)
    card.find_element(By.CSS_SELECTOR, f"button.{button}").click()
    wait_for(driver, "#notice")


def test_sign_in_page_in_japanese_by_default(console: Console, browser: webdriver.Chrome) -> None:
    """A browser asking for Japanese first gets the Japanese sign-in page."""
    browser.delete_all_cookies()
    browser.get(f"{console.url}/console/")
    wait_for(browser, "#signin")
    assert browser.current_url.endswith("/console/login?m=signed_out")
    assert browser.find_element(By.TAG_NAME, "h1").text == "サインイン"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "ja"
    screenshot(browser, "login-ja", docs=False)


def test_approver_sees_only_own_hospital_and_approves(
    console: Console, browser: webdriver.Chrome
) -> None:
    """The inbox shows every field of the own hospital's request and not the other
    hospital's; approving with a comment issues the grant, in the store and the log."""
    c = console
    mine = c.request(
        ["cobas-1"],
        "試薬プローブの交換 <b>bold</b>",
        ticket="INC-2041",
        work_plan="1. 分析装置を停止\n2. プローブ交換\n3. 精度管理を確認",
        ports=[22, 8080],
    )
    critical = c.request(
        ["las-line-a"],
        "搬送ラインのセンサー校正",
        ticket="INC-2042",
        work_plan="1. ライン停止\n2. センサー校正",
    )
    other = c.request(["tsuki-1"], "other hospital's request")
    sign_in(browser, c, "appr")
    wait_for(browser, f"#request-{mine.id}")
    ids = _inbox_ids(browser)
    assert {mine.id, critical.id} <= ids and other.id not in ids
    card = browser.find_element(By.ID, f"request-{mine.id}")
    text = card.text
    for shown in (
        "eng",
        "acme-labs",
        "cobas-1",
        "22, 8080",
        "INC-2041",
        "プローブ交換",
        "承認時から 1 時間 0 分",
        "承認 0 / 1 名",
    ):
        assert shown in text, shown
    # free text is shown as text, never as markup
    assert "<b>bold</b>" in card.find_element(By.CSS_SELECTOR, ".reason").text
    assert "承認 0 / 2 名" in browser.find_element(By.ID, f"request-{critical.id}").text

    c.emitter.clear()
    _decide(browser, mine.id, "approve", "交換作業を承認します")
    assert "承認しました" in browser.find_element(By.ID, "notice").text
    assert mine.id not in _inbox_ids(browser)
    view = c.services.requests.show(c.world.admin, mine.id)
    assert view.request.status == RequestStatus.APPROVED
    assert view.grant is not None and view.grant.status == GrantStatus.ACTIVE
    approved = c.emitter.of_type("request.approved")
    assert [
        (e.record["ActorUsername"], e.record["RequestId"], e.record["Details"]["comment"])
        for e in approved
    ] == [("appr", mine.id, "交換作業を承認します")]
    assert [e.record["GrantId"] for e in c.emitter.of_type("grant.created")] == [view.grant.id]


def test_two_approvers_see_progress(console: Console, browser: webdriver.Chrome) -> None:
    """A critical instrument needs two approvers: the first approval is progress, the
    second approver sees who approved, and their approval issues the grant."""
    c = console
    req = c.request(["las-line-a"], "two approvers needed", ticket="INC-3001")
    sign_in(browser, c, "appr")
    _decide(browser, req.id, "approve", "first approval")
    assert "もう一人の承認者" in browser.find_element(By.ID, "notice").text
    card = browser.find_element(By.ID, f"request-{req.id}")
    assert "承認 1 / 2 名" in card.text and "承認済みです" in card.text
    assert not card.find_elements(By.CSS_SELECTOR, "button.approve")
    assert c.services.requests.show(c.world.admin, req.id).grant is None

    sign_in(browser, c, "appr2")
    card = wait_for(browser, f"#request-{req.id}")
    assert "承認 1 / 2 名" in card.text and "appr" in card.text and "first approval" in card.text
    _decide(browser, req.id, "approve", "second approval")
    assert "承認しました" in browser.find_element(By.ID, "notice").text
    view = c.services.requests.show(c.world.admin, req.id)
    assert view.request.status == RequestStatus.APPROVED and view.grant is not None
    assert sorted(c.services.people.names({d.approver_id for d in view.decisions}).values()) == [
        "appr",
        "appr2",
    ]


def test_deny_with_comment(console: Console, browser: webdriver.Chrome) -> None:
    c = console
    req = c.request(["cobas-1"], "to be denied")
    sign_in(browser, c, "appr")
    c.emitter.clear()
    _decide(browser, req.id, "deny", "作業日程を再調整してください")
    assert "却下しました" in browser.find_element(By.ID, "notice").text
    assert c.services.requests.show(c.world.admin, req.id).request.status == RequestStatus.DENIED
    [denied] = c.emitter.of_type("request.denied")
    assert denied.record["ActorUsername"] == "appr"
    assert denied.record["Details"]["comment"] == "作業日程を再調整してください"


def test_form_without_csrf_token_changes_nothing(
    console: Console, browser: webdriver.Chrome
) -> None:
    """The approve form with its CSRF token removed: 403 page, refusal event, still pending."""
    c = console
    req = c.request(["cobas-1"], "csrf probe")
    sign_in(browser, c, "appr")
    card = wait_for(browser, f"#request-{req.id}")
    browser.execute_script("arguments[0].querySelector('input[name=csrf]').remove()", card)
    c.emitter.clear()
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    error = wait_for(browser, "#error")
    assert error.get_attribute("data-key") == "error.csrf"
    assert c.services.requests.show(c.world.admin, req.id).request.status == RequestStatus.PENDING
    [refused] = c.emitter.of_type("request.refused")
    assert refused.record["ActorUsername"] == "appr"
    assert refused.record["EventResultDetails"] == "csrf_failed"
    assert refused.record["RequestId"] == req.id
    assert c.emitter.of_type("request.approved") == []


def test_engineer_cannot_open_the_inbox(console: Console, browser: webdriver.Chrome) -> None:
    c = console
    c.emitter.clear()
    sign_in(browser, c, "eng")  # an engineer lands on their own requests
    browser.get(f"{c.url}/console/inbox")
    error = wait_for(browser, "#error")
    assert error.get_attribute("data-key") == "error.forbidden"
    assert "権限がありません" in error.text
    refused = c.emitter.of_type("admin.refused")
    assert [(e.record["ActorUsername"], e.record["Operation"]) for e in refused] == [
        ("eng", "console.inbox")
    ]


def test_switch_to_english_is_remembered(console: Console, browser: webdriver.Chrome) -> None:
    """The language link turns the page English; the choice holds on the next page.
    The inbox and grants pages are photographed in both languages for the docs."""
    c = console
    eng = c.world.actors["eng"]
    for r in c.services.requests.list_requests(c.world.admin, "pending"):
        c.services.requests.cancel(eng, r.id)
    c.request(
        ["cobas-1"],
        "試薬プローブの交換（測定値のばらつき）",
        ticket="INC-2050",
        work_plan="1. 分析装置を停止\n2. 試薬プローブを交換\n3. 精度管理試料で確認",
        ports=[22, 8080],
    )
    c.clock.advance(60)  # the inbox lists the older request first
    two = c.request(
        ["las-line-a"],
        "搬送ラインのセンサー校正",
        ticket="INC-2051",
        work_plan="1. ライン停止を検査室に連絡\n2. センサー校正\n3. 搬送テスト",
    )
    c.services.requests.approve(c.world.actors["appr2"], two.id, "夜間帯なら可")
    sign_in(browser, c, "appr")
    wait_for(browser, f"#request-{two.id}")
    screenshot(browser, "inbox-ja", docs=False)
    wait_for(browser, "#lang-en").click()
    wait_for(browser, "html[lang=en]")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Approval inbox"
    assert "1 of 2 approvals" in browser.find_element(By.ID, f"request-{two.id}").text
    screenshot(browser, "inbox-en", docs=False)
    # a grant of its own to revoke, so the test does not lean on the ones approved before
    ours = c.request(["cobas-1"], "フィルター交換", ticket="INC-2052")
    c.services.requests.approve(c.world.actors["appr"], ours.id, "了解")
    grant = c.services.requests.show(c.world.admin, ours.id).grant
    assert grant is not None and grant.status == GrantStatus.ACTIVE
    grant_id = grant.id
    browser.get(f"{c.url}/console/grants")
    assert wait_for(browser, "h1").text == "Grants"
    row = wait_for(browser, f"#grants-active tr[data-grant='{grant_id}']")
    row.find_element(By.NAME, "comment").send_keys("work finished early")
    row.find_element(By.CSS_SELECTOR, "button.deny").click()
    assert "revoked" in wait_for(browser, "#notice").text
    assert browser.find_element(By.CSS_SELECTOR, f"#grants-ended [data-grant='{grant_id}']")
    [g] = [g for g in c.services.grants.list_grants(c.world.admin) if g.id == grant_id]
    assert g.status == GrantStatus.REVOKED
    screenshot(browser, "grants-en", docs=False)
    wait_for(browser, "#lang-ja").click()
    wait_for(browser, "html[lang=ja]")
    assert browser.find_element(By.TAG_NAME, "h1").text == "許可"
    screenshot(browser, "grants-ja", docs=False)
