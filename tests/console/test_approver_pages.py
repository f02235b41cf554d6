"""The approver's emergency reviews, work reports and host keys, over HTTP.

One seeded broker app per module whose control plane writes into a real audit log
(hash chain, shipped into a real event index), so the work reports are the API's.
Each form calls the service the API route calls; every forgotten path is tried:
another hospital's approver, the hospital admin or auditor where the table says
no, the engineer who did the work, a report whose SHA-256 is not the one read.
Every POST carries a fresh TOTP step-up code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from audit import new_event
from audit.emitter import FanOut
from audit.index import EventQuery
from audit.service import AuditRuntime
from audit.testing import CapturingEmitter
from broker.access.model import Grant, Instrument
from broker.access.requests import NewRequest
from broker.access.services import Services
from broker.api.app import create_app
from broker.settings import BrokerSettings
from broker.store.db import Store
from broker.store.directory import StoreGatewayDirectory
from tests.console.auditdesk import audit_runtime, indexed
from tests.console.conftest import (
    Console,
    csrf_of,
    screenshot,
    serving,
    sign_in,
    signed_in,
    visible_text,
    wait_for,
)
from tests.control.conftest import T0, build_world, make_context, openssh_public_key
from tests.support import FakeClock, poll_sync
from wire import InventoryItem

SHA_A = "a" * 64


@dataclass
class Site:
    c: Console
    audit: AuditRuntime


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console-approver")
    with audit_runtime(tmp) as audit:
        store = Store(f"sqlite:///{tmp / 'hoshu.db'}")
        emitter = CapturingEmitter()
        clock = FakeClock(T0)
        services = Services.build(make_context(store, FanOut([emitter, audit.log]), clock))
        world = build_world(services, clock)
        app = create_app(BrokerSettings(data_dir=tmp / "data"), services=services)
        app.state.work_reports = audit.reports
        try:
            yield Site(Console(app, "", world, emitter, clock), audit)
        finally:
            store.close()


def post(c: Console, who: str, path: str, **fields: str) -> tuple[TestClient, httpx.Response]:
    http = signed_in(c, who)
    data = {"csrf": csrf_of(http, "/console/account"), "stepup_totp": c.code(who), **fields}
    c.clock.advance(30)
    response: httpx.Response = http.post(path, data=data, follow_redirects=False)
    return http, response


def refusals(c: Console, action: str) -> list[Any]:
    return [
        e for e in c.emitter.events if e.type.endswith(".refused") and e.get("Operation") == action
    ]


def session_events(site: Site, grant: Grant, sid: str, commands: list[str]) -> str:
    """A recorded shell session under ``grant`` as the front door writes it."""
    log = site.audit.log
    cols: dict[str, Any] = dict(
        GrantId=grant.id,
        HospitalId=grant.hospital_id,
        TargetHostname=grant.instruments[0],
        TargetPortNumber=22,
        TargetSessionId=sid,
        ActorUsername="eng",
    )
    log.emit(new_event("session.started", clock=site.c.clock, details={"kind": "shell"}, **cols))
    for cmd in commands:
        log.emit(new_event("session.command", clock=site.c.clock, details={"command": cmd}, **cols))
    last = log.emit(
        new_event(
            "session.ended",
            clock=site.c.clock,
            RecordingSHA256=SHA_A,
            RecordingSize=1234,
            NetworkDuration=60_000,
            **cols,
        )
    )
    return str(last.get("EventUid"))


def test_emergency_reviews_show_the_sessions_and_only_an_approver_of_the_hospital_reviews(
    site: Site,
) -> None:
    c = site.c
    w = c.world
    w.s.estate.update_policy(
        w.actors["hadmin"],
        "hoshi-hospital",
        {"emergency_allowed": True, "emergency_max_duration_s": 1800},
    )
    g = w.s.grants.start_emergency(
        w.actors["eng"], NewRequest(["cobas-1"], 1800, "<b>analyser down</b> at night")
    )
    indexed(site.audit, session_events(site, g, "sess-emerg-1", ["systemctl status"]))

    http = signed_in(c, "appr", "en")
    page = http.get("/console/emergencies")
    assert page.status_code == 200
    item = page.text.split(f'id="emergency-{g.id}"')[1].split("</article>")[0]
    assert "<b>analyser" not in item and "&lt;b&gt;analyser down&lt;/b&gt;" in item
    text = visible_text(item)
    assert "eng" in text and "cobas-1" in text and SHA_A in text
    # the other hospital's approver does not see it, and cannot review it
    assert g.id not in signed_in(c, "other-appr").get("/console/emergencies").text
    for who in ("other-appr", "hadmin", "eng", "aud"):
        before = len(refusals(c, "emergency.review"))
        _, r = post(c, who, f"/console/emergencies/{g.id}/review", verdict="accepted")
        assert r.status_code in (403, 404), (who, r.status_code)
        assert len(refusals(c, "emergency.review")) == before + 1, who
    with c.services.ctx.uow() as tx:
        assert tx.get(Grant, g.id).reviewed_at is None  # type: ignore[union-attr]
    _, r = post(c, "appr", f"/console/emergencies/{g.id}/review", verdict="sideways")
    assert r.status_code == 422
    _, r = post(
        c, "appr", f"/console/emergencies/{g.id}/review", verdict="accepted", comment="ok <i>"
    )
    assert r.status_code == 303 and r.headers["location"].endswith("done=emergency_reviewed")
    reviewed = c.emitter.of_type("emergency.reviewed")[-1]
    assert reviewed.get("GrantId") == g.id and reviewed.details["verdict"] == "accepted"
    assert g.id not in http.get("/console/emergencies").text


def ended_grant_with_report(site: Site, plan: str) -> Grant:
    c = site.c
    w = c.world
    req = c.request(["cobas-1"], "calibration", work_plan=plan, ticket="T-42")
    view = w.s.requests.approve(w.actors["appr2"], req.id, "")
    assert view.grant is not None
    grant = view.grant
    uid = session_events(site, grant, f"sess-{grant.id}", ["cat /var/log/<x>", "reboot"])
    w.s.grants.revoke(w.actors["appr2"], grant.id, "done")
    indexed(site.audit, uid)
    indexed(site.audit, c.emitter.of_type("grant.revoked")[-1])
    report = site.audit.reports.generate(grant.id)
    poll_sync(
        lambda: site.audit.reports.status(grant.id)["generated"], 15, "report.generated indexed"
    )
    assert report["plan"]["work_plan"] == plan
    return grant


def test_work_report_is_shown_printable_and_signed_by_an_approver_of_the_hospital_only(
    site: Site,
) -> None:
    c = site.c
    grant = ended_grant_with_report(site, "1. stop the line\n2. swap the <lamp>")
    http = signed_in(c, "appr", "ja")
    listed = http.get("/console/reports")
    assert listed.status_code == 200 and f'data-grant="{grant.id}"' in listed.text
    page = http.get(f"/console/reports/{grant.id}")
    assert page.status_code == 200
    assert "swap the &lt;lamp&gt;" in page.text and "<lamp>" not in page.text
    assert "cat /var/log/&lt;x&gt;" in page.text and SHA_A in page.text and "T-42" in page.text
    sha = site.audit.reports.build(grant.id)["report_sha256"]
    assert f'data-sha256="{sha}"' in page.text and 'id="sign-form"' in page.text
    css = http.get("/console/static/console.css").text
    assert "@media print" in css and ".noprint" in css
    # another hospital's approver cannot even read it
    assert signed_in(c, "other-appr").get(f"/console/reports/{grant.id}").status_code == 404

    # the forgotten paths: the engineer who did the work, an approver of another
    # hospital, the hospital's auditor and admin; and a report other than the one read
    for who in ("eng", "other-appr", "aud", "hadmin"):
        before = len(refusals(c, "reports.sign"))
        _, r = post(c, who, f"/console/reports/{grant.id}/sign", report_sha256=sha)
        assert r.status_code == 403, (who, r.status_code)
        assert len(refusals(c, "reports.sign")) == before + 1, who
    _, r = post(c, "appr", f"/console/reports/{grant.id}/sign", report_sha256="b" * 64)
    assert r.status_code == 409
    assert not site.audit.reports.status(grant.id)["signed"]

    _, r = post(c, "appr", f"/console/reports/{grant.id}/sign", report_sha256=sha, comment="ok")
    assert r.status_code == 303, r.text
    poll_sync(lambda: site.audit.reports.status(grant.id)["signed"], 15, "report.signed indexed")
    assert site.audit.reports.status(grant.id)["signed_by"] == "appr"
    page = http.get(f"/console/reports/{grant.id}")
    assert 'id="signed"' in page.text and 'id="sign-form"' not in page.text
    assert f'data-grant="{grant.id}"' not in http.get("/console/reports").text
    signed = list(site.audit.index.iterate(EventQuery(grant_id=grant.id, types=("report.signed",))))
    assert len(signed) == 1 and signed[0]["Details"]["report_sha256"] == sha


def test_changed_host_key_is_accepted_only_by_that_hospitals_approver_or_admin(
    site: Site,
) -> None:
    c = site.c
    w = c.world
    token = w.s.gateways.issue_token(w.actors["hadmin"], "hoshi-hospital").token
    gw = w.s.gateways.enroll(token, openssh_public_key(), "kensa-gw9", "1.0").gateway_id
    d = StoreGatewayDirectory(w.s)

    def present(fp: str) -> None:
        item = InventoryItem("las-line-a", "10.0.0.11", (22,), "ssh", "chem", "x", True, fp)
        d.record_inventory(gw, [item])

    def pending() -> str | None:
        with c.services.ctx.uow() as tx:
            inst = tx.one(Instrument, name="las-line-a")
            assert inst is not None
            return inst.pending_host_key_fingerprint

    present("SHA256:old-key")
    present("SHA256:new-key")
    http = signed_in(c, "appr", "en")
    page = http.get("/console/host-keys")
    item = page.text.split('id="hostkey-las-line-a"')[1].split("</article>")[0]
    assert "SHA256:old-key" in item and "SHA256:new-key" in item
    assert "las-line-a" not in signed_in(c, "other-appr").get("/console/host-keys").text
    for who in ("other-appr", "eng", "aud"):
        _, r = post(c, who, "/console/host-keys/las-line-a/accept", fingerprint="SHA256:new-key")
        assert r.status_code in (403, 404), (who, r.status_code)
        assert pending() == "SHA256:new-key", who
    _, r = post(c, "appr", "/console/host-keys/las-line-a/accept", fingerprint="SHA256:other")
    assert r.status_code == 409 and pending() == "SHA256:new-key"
    _, r = post(c, "appr", "/console/host-keys/las-line-a/accept", fingerprint="SHA256:new-key")
    assert r.status_code == 303 and pending() is None
    assert c.emitter.of_type("instrument.key_accepted")[-1].get("Object") == "las-line-a"
    assert 'id="hostkey-las-line-a"' not in http.get("/console/host-keys").text
    # the hospital's IT (its admin) may accept too
    present("SHA256:third-key")
    _, r = post(c, "hadmin", "/console/host-keys/las-line-a/accept", fingerprint="SHA256:third-key")
    assert r.status_code == 303 and pending() is None


def test_the_three_pages_in_a_real_browser_in_japanese_and_english(
    site: Site, browser: webdriver.Chrome
) -> None:
    """Headless Chromium: the approver's three pages with something waiting on each
    (screenshots ja and en into docs/images/console/), and a work report signed off
    by keyboard through the TOTP step-up."""
    c = site.c
    w = c.world
    w.s.estate.update_policy(
        w.actors["hadmin"],
        "hoshi-hospital",
        {"emergency_allowed": True, "emergency_max_duration_s": 1800},
    )
    g = w.s.grants.start_emergency(
        w.actors["eng2"], NewRequest(["las-line-a"], 1800, "line A stopped: sample jam")
    )
    indexed(site.audit, session_events(site, g, "sess-emerg-2", ["journalctl -n 50"]))
    grant = ended_grant_with_report(site, "1. check the lamp hours\n2. replace the lamp")
    token = w.s.gateways.issue_token(w.actors["hadmin"], "hoshi-hospital").token
    gw = w.s.gateways.enroll(token, openssh_public_key(), "kensa-gw8", "1.0").gateway_id
    d = StoreGatewayDirectory(w.s)
    for fp in ("SHA256:q2Xk0lRkG7tT1o0bS3m8b1mK9n3cJ3yXJw4m1f3fQ0c", "SHA256:Zr8pLw3n"):
        d.record_inventory(
            gw, [InventoryItem("lis-server", "10.0.0.12", (22,), "ssh", "lab", "x", True, fp)]
        )
    with serving(c.app) as url:
        c.url = url
        sign_in(browser, c, "appr")
        for lang in ("ja", "en"):
            browser.get(f"{url}/console/lang/{lang}?next=/console/emergencies")
            wait_for(browser, f"html[lang={lang}]")
            wait_for(browser, f"#emergency-{g.id}")
            screenshot(browser, f"emergencies-{lang}")
            browser.get(f"{url}/console/reports/{grant.id}")
            wait_for(browser, "#sign-form")
            screenshot(browser, f"report-{lang}")
            browser.get(f"{url}/console/host-keys")
            wait_for(browser, "#hostkey-lis-server")
            screenshot(browser, f"host-keys-{lang}")
        # sign off by keyboard: the comment, Tab to the button, Enter; then the step-up code
        browser.get(f"{url}/console/reports/{grant.id}")
        comment = wait_for(browser, "#comment")
        comment.send_keys("checked against the plan")
        comment.send_keys(Keys.TAB)
        WebDriverWait(browser, 10, poll_frequency=0.05).until(
            lambda d: d.switch_to.active_element.get_attribute("id") == "sign"
        )
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        # the sign-in's TOTP counts as a step-up for five minutes: a code is asked only after
        found = wait_for(browser, "#stepup-code, #signed", timeout=30)
        if found.get_attribute("id") == "stepup-code":
            found.send_keys(c.code("appr"))
            c.clock.advance(30)
            found.send_keys(Keys.ENTER)
            wait_for(browser, "#signed", timeout=30)
        assert "Signed off by appr" in browser.find_element(By.ID, "signed").text
        assert site.audit.reports.status(grant.id)["signed_by"] == "appr"
