"""The auditor API: scoping by hospital, recording access rules, exports, sign-off."""

from __future__ import annotations

import csv
import io

from fastapi.testclient import TestClient

from audit.testing import CapturingEmitter


def _get(client: TestClient, who: str, url: str, **kw: object):  # type: ignore[no-untyped-def]
    return client.get(url, headers={"Authorization": f"Bearer {who}"}, **kw)


def test_hospital_staff_see_only_their_hospital(api: tuple[TestClient, CapturingEmitter]) -> None:
    client, _ = api
    own = _get(client, "okayama-auditor", "/v1/audit/events").json()["events"]
    assert own and {e["HospitalId"] for e in own} == {"h-okayama"}
    other = _get(client, "okayama-auditor", "/v1/audit/events?hospital=h-handa").json()
    assert other["events"] == []
    everyone = _get(client, "platform-auditor", "/v1/audit/events").json()["events"]
    assert {e["HospitalId"] for e in everyone} == {"h-okayama", "h-handa"}
    r = _get(client, "engineer", "/v1/audit/events")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert _get(client, "nobody", "/v1/audit/events").status_code == 401


def test_bad_queries_get_a_clear_400(api: tuple[TestClient, CapturingEmitter]) -> None:
    client, _ = api
    r = _get(
        client,
        "platform-auditor",
        "/v1/audit/events?start=2026-05-01T00:00:00Z&end=2026-04-01T00:00:00Z",
    )
    assert r.status_code == 400 and "after its start" in r.json()["error"]["message"]
    r = _get(client, "platform-auditor", "/v1/audit/events?start=yesterday")
    assert r.status_code == 400 and "ISO 8601" in r.json()["error"]["message"]


def test_export_csv_is_scoped_and_logged(api: tuple[TestClient, CapturingEmitter]) -> None:
    client, em = api
    r = _get(client, "okayama-approver", "/v1/audit/export?format=csv&type=session.started")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert r.status_code == 200 and [row["EventType"] for row in rows] == ["session.started"]
    assert em.of_type("audit.exported")[0].get("ActorUsername") == "yamada"


def test_recordings_only_for_the_hospitals_approvers_auditors_and_platform_auditors(
    api: tuple[TestClient, CapturingEmitter],
) -> None:
    client, em = api
    for who in ("okayama-approver", "okayama-auditor", "platform-auditor"):
        r = _get(client, who, "/v1/recordings/s1")
        assert r.status_code == 200, who
        assert "$ ls" in r.text and len(r.headers["X-Recording-SHA256"]) == 64
    for who in ("handa-approver", "okayama-admin", "platform-admin", "engineer"):
        assert _get(client, who, "/v1/recordings/s1").status_code == 403, who
    assert len(em.of_type("recording.viewed")) == 3
    assert len(em.of_type("recording.refused")) >= 3
    assert _get(client, "platform-auditor", "/v1/recordings/..%2Fx").status_code in (400, 404)


def test_report_sign_off_by_the_hospitals_approver_only(
    api: tuple[TestClient, CapturingEmitter],
) -> None:
    client, _ = api
    gen = client.post(
        "/v1/reports/g1/generate", headers={"Authorization": "Bearer okayama-auditor"}
    )
    assert gen.status_code == 201
    sha = gen.json()["report_sha256"]
    html = _get(client, "okayama-auditor", "/v1/reports/g1?format=html&lang=en")
    assert "Inside the plan" in html.text
    assert _get(client, "handa-approver", "/v1/reports/g1").status_code == 404
    for who, status in (
        ("okayama-auditor", 403),
        ("handa-approver", 403),
        ("readonly-approver", 403),
        ("okayama-approver", 201),
        ("okayama-approver", 409),
    ):
        r = client.post(
            "/v1/reports/g1/sign",
            json={"report_sha256": sha},
            headers={"Authorization": f"Bearer {who}"},
        )
        assert r.status_code == status, (who, r.text)
    assert _get(client, "okayama-auditor", "/v1/reports/g1").json()["status"]["signed"]


def test_review_and_sink_status(api: tuple[TestClient, CapturingEmitter]) -> None:
    client, _ = api
    r = _get(client, "okayama-auditor", "/v1/reviews/2026-04?format=html&lang=ja")
    assert r.status_code == 200 and "定期ログレビュー" in r.text, r.text
    assert _get(client, "okayama-auditor", "/v1/reviews/April").status_code == 400
    assert _get(client, "okayama-auditor", "/v1/audit/sinks").status_code == 403
    assert _get(client, "platform-admin", "/v1/audit/sinks").json()["sinks"][0]["sink"] == "fluentd"
