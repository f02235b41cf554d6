"""Work reports (plan vs actual, ja/en, sign-off, unsigned alert) and the monthly review."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from audit import new_event
from audit.events import AuditEvent
from audit.index import AuditIndex
from audit.report import ReportError
from audit.report_render import render_html
from audit.review import build_review, record_review, render_review_html
from audit.workreports import ReportService
from tests.audit.planned import T0, at, plan_events
from tests.support import FakeClock


class IndexEmitter:
    """Emits straight into the index (as the log + index sink would, without the lag)."""

    def __init__(self, index: AuditIndex) -> None:
        self.index = index
        self.events: list[AuditEvent] = []

    def emit(self, event: AuditEvent) -> AuditEvent:
        self.index.add([event.record])
        self.events.append(event)
        return event


def _service(tmp_path: Path, clock: FakeClock) -> tuple[ReportService, IndexEmitter]:
    index = AuditIndex.from_url(f"sqlite:///{tmp_path / 'i.db'}")
    em = IndexEmitter(index)
    return ReportService(index, em, clock=clock, unsigned_after_days=7), em


def test_work_inside_the_plan_gets_an_inside_verdict_in_both_languages(tmp_path: Path) -> None:
    svc, em = _service(tmp_path, FakeClock(T0))
    svc.index.add([e.record for e in plan_events()])
    report = svc.generate("g1")
    assert report["verdict"] == "inside_plan" and report["reasons"] == []
    assert report["plan"]["engineer"] == "sato" and report["plan"]["approved_by"] == ["yamada"]
    s = report["actual"]["sessions"][0]
    assert s["recording_sha256"] == "ab" * 32 and s["duration_s"] == 2100.0
    ja, en = render_html(report, "ja"), render_html(report, "en")
    assert "計画の範囲内" in ja and "試薬プローブ交換" in ja and "Inside the plan" in en
    assert "<script>x" not in ja and "&lt;script&gt;" in ja
    gen = [e for e in em.events if e.type == "report.generated"]
    assert gen[0].details["report_sha256"] == report["report_sha256"]


def test_work_outside_the_plan_lists_every_reason(tmp_path: Path) -> None:
    svc, _ = _service(tmp_path, FakeClock(T0))
    common: dict[str, Any] = {"HospitalId": "h-okayama", "RequestId": "r1", "GrantId": "g1"}
    extra = [
        new_event(
            "session.started",
            clock=at(50),
            TargetHostname="lis-server",
            TargetPortNumber=22,
            TargetSessionId="s2",
            **common,
        ),
        new_event(
            "file.transferred",
            clock=at(55),
            TargetHostname="cobas-c503-1",
            TargetFileName="log.tgz",
            TargetFileSize=10,
            TargetFileSHA256="cd" * 32,
            NetworkDirection="Outbound",
            **common,
        ),
        new_event(
            "forward.refused",
            clock=at(56),
            TargetHostname="cobas-c503-1",
            TargetPortNumber=3389,
            EventResult="Failure",
            EventResultDetails="port not granted",
            **common,
        ),
        new_event(
            "session.started",
            clock=at(200),
            TargetHostname="cobas-c503-1",
            TargetPortNumber=22,
            TargetSessionId="s3",
            **common,
        ),
    ]
    svc.index.add([e.record for e in plan_events() + extra])
    report = svc.build("g1")
    assert report["verdict"] == "outside_plan"
    codes = {r["code"] for r in report["reasons"]}
    assert codes == {
        "instrument_not_in_plan",
        "file_not_in_plan",
        "refused_attempt",
        "outside_window",
    }
    assert report["actual"]["files"][0]["sha256"] == "cd" * 32
    ja, en = render_html(report, "ja"), render_html(report, "en")
    assert "計画の範囲外" in ja and "計画にないファイル転送" in ja
    assert "Outside the plan" in en and "Activity outside the approved window" in en


def test_sign_off_binds_the_report_hash_and_happens_once(tmp_path: Path) -> None:
    svc, _em = _service(tmp_path, FakeClock(T0))
    with pytest.raises(ReportError, match="no work report"):
        svc.sign("g1", "00", user_id="u-y", username="yamada")
    svc.index.add([e.record for e in plan_events()])
    report = svc.generate("g1")
    with pytest.raises(ReportError, match="changed since it was read"):
        svc.sign("g1", "0" * 64, user_id="u-y", username="yamada")
    signed = svc.sign(
        "g1", report["report_sha256"], user_id="u-y", username="yamada", comment="確認しました"
    )
    assert signed["EventType"] == "report.signed" and signed["ActorUsername"] == "yamada"
    assert svc.status("g1")["signed_by"] == "yamada"
    with pytest.raises(ReportError, match="already signed"):
        svc.sign("g1", report["report_sha256"], user_id="u-y", username="yamada")


def test_report_unsigned_after_the_allowed_days_raises_one_alert(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    svc, em = _service(tmp_path, clock)
    svc.index.add([e.record for e in plan_events("g1", "r1") + plan_events("g2", "r2")])
    svc.generate("g1")
    r2 = svc.generate("g2")
    svc.sign("g2", r2["report_sha256"], user_id="u-y", username="yamada")
    clock.now += timedelta(days=6)
    assert svc.check_unsigned() == []
    clock.now += timedelta(days=2)
    assert svc.check_unsigned() == ["g1"]
    assert svc.check_unsigned() == []  # once
    alert = next(e for e in em.events if e.type == "report.unsigned")
    assert alert.get("GrantId") == "g1" and alert.details["age_days"] == 8


def test_monthly_review_lists_failures_refusals_new_sources_emergencies_unsigned(
    tmp_path: Path,
) -> None:
    svc, em = _service(tmp_path, FakeClock(T0))
    h: dict[str, Any] = {"HospitalId": "h-okayama"}
    before = T0 - timedelta(days=20)
    events = [
        new_event(
            "ssh.login", clock=lambda: before, ActorUsername="sato", SrcIpAddr="10.0.0.5", **h
        ),
        new_event("ssh.login", clock=at(1), ActorUsername="sato", SrcIpAddr="10.0.0.5", **h),
        new_event("ssh.login", clock=at(2), ActorUsername="sato", SrcIpAddr="203.0.113.9", **h),
        new_event(
            "ssh.login",
            clock=at(3),
            ActorUsername="mallory",
            SrcIpAddr="198.51.100.1",
            EventResult="Failure",
            **h,
        ),
        new_event("user.mfa_failed", clock=at(4), ActorUsername="sato", **h),
        new_event(
            "session.refused",
            clock=at(5),
            ActorUsername="sato",
            EventResult="Failure",
            EventResultDetails="outside the grant window",
            **h,
        ),
        new_event("emergency.started", clock=at(6), ActorUsername="suzuki", GrantId="g9", **h),
        new_event(
            "ssh.login",
            clock=at(7),
            ActorUsername="other",
            SrcIpAddr="192.0.2.1",
            HospitalId="h-elsewhere",
            EventResult="Failure",
        ),
    ]
    svc.index.add([e.record for e in events + plan_events()])
    svc.generate("g1")
    review = build_review(svc.index, "2026-04", hospital_id="h-okayama", now=T0)
    assert review["failed_logins"]["count"] == 2
    assert review["failed_logins"]["by_user"] == {"mallory": 1, "sato": 1}
    assert review["off_window_attempts"]["by_reason"] == {"outside the grant window": 1}
    assert [(s["user"], s["source"]) for s in review["new_source_addresses"]] == [
        ("sato", "203.0.113.9")
    ]
    assert review["emergency_sessions"][0]["user"] == "suzuki"
    assert not review["emergency_sessions"][0]["reviewed"]
    assert [u["grant_id"] for u in review["unsigned_reports"]] == ["g1"]
    assert "ログイン失敗" in render_review_html(review, "ja")
    assert "New source addresses" in render_review_html(review, "en")
    record_review(review, em)
    assert em.events[-1].type == "review.generated"


def test_reports_are_generated_once_after_each_grant_ends(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    svc, em = _service(tmp_path, clock)
    ended = new_event(
        "grant.expired", clock=at(120), GrantId="g1", RequestId="r1", HospitalId="h-okayama"
    )
    svc.index.add([e.record for e in [*plan_events(), ended]])
    clock.now = T0 + timedelta(minutes=120, seconds=30)
    assert svc.generate_due(settle_s=60) == []  # late session events may still arrive
    clock.now = T0 + timedelta(minutes=125)
    assert svc.generate_due(settle_s=60) == ["g1"]
    assert svc.generate_due(settle_s=60) == []
    assert [e.get("GrantId") for e in em.events if e.type == "report.generated"] == ["g1"]
