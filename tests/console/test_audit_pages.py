"""The auditor's console pages at the HTTP level, over a real audit trail.

A seeded broker app whose events go into a real hash-chained log, shipped into a
real event index, with recordings written by the broker's recorder into a file
recording store.  What an auditor gets: the search by engineer, instrument,
hospital, type and time (in Tokyo time) with paging; the same search exported as
CSV (formula cells neutralised) and JSON Lines, each an ``audit.exported`` event;
recordings listed and served for the player with the SHA-256 of the stored bytes
beside the one in the session's end event (a changed recording shows as not
matching); the chain verified with the broker's keys; the monthly review and the
compliance report.  And the forgotten paths: an approver, a hospital admin, an
engineer or a vendor's auditor calling the export URL directly; an auditor of one
hospital asking for another's events, review or recording.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from audit.emitter import FanOut
from audit.events import AuditEvent
from audit.recstore import RecordingStore, digest
from audit.recstore.blob import BlobStore
from audit.recstore.files import FileStore
from audit.service import AuditRuntime
from audit.testing import CapturingEmitter
from broker.access.services import Services
from broker.api.app import create_app
from broker.console.audit import MAX_EXPORT_ROWS, PAGE_SIZE
from broker.settings import BrokerSettings
from broker.store.db import Store
from tests.console.auditdesk import audit_runtime, indexed, install, record
from tests.console.conftest import Console
from tests.control.conftest import PASSWORD, T0, build_world, make_context
from tests.fixtures.azurite import Azurite
from tests.support import FakeClock

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
FORMULA = '=HYPERLINK("http://evil.example/","open")'


@dataclass
class Desk:
    c: Console
    audit: AuditRuntime
    recordings: Path
    mine: str  # a session of the auditor's hospital (hoshi), recorded
    theirs: str  # a session of the other hospital (tsuki), recorded


def _session(
    c: Console,
    recordings: Path,
    sid: str,
    hospital_id: str,
    instrument: str,
    text: str,
    store: RecordingStore | None = None,
) -> AuditEvent:
    eng = c.world.actors["eng"]
    s = c.services
    cols: dict[str, Any] = {
        "TargetSessionId": sid,
        "HospitalId": hospital_id,
        "TargetHostname": instrument,
    }
    s.ctx.emit(
        "session.started", eng, details={"kind": "shell", "recording": f"{sid}.cast"}, **cols
    )
    output = [b"$ echo hi\r\n", text.encode() + b"\r\n", b"$ exit\r\n"]
    summary = record(recordings, sid, output, store)
    return s.ctx.emit(
        "session.ended",
        eng,
        EventResultDetails="exited",
        RecordingSize=summary.size,
        RecordingSHA256=summary.sha256,
        details={"kind": "shell", "exit_status": 0, "recording": summary.path.name},
        **cols,
    )


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    tmp = tmp_path_factory.mktemp("console-audit")
    with audit_runtime(tmp) as audit:
        store = Store(f"sqlite:///{tmp / 'hoshu.db'}")
        capture = CapturingEmitter()
        clock = FakeClock(T0)
        services = Services.build(make_context(store, FanOut([audit.log, capture]), clock))
        world = build_world(services, clock)
        platform = services.people.org_of(world.admin.org_id)
        assert platform is not None
        world.add_user("paud", platform, ["auditor"])  # the platform's auditor
        app = create_app(BrokerSettings(data_dir=tmp / "data"), services=services)
        recordings = tmp / "recordings"
        install(app, audit, recordings)
        c = Console(app, "", world, capture, clock)
        _session(c, recordings, "s-hoshi-1", world.hospital.id, "cobas-1", "output-of-hoshi")
        _session(c, recordings, "s-tsuki-1", world.other_hospital.id, "tsuki-1", "tsuki-only")
        # a command line an engineer could type, that a spreadsheet would run
        last = services.ctx.emit(
            "session.command",
            world.actors["eng"],
            TargetSessionId="s-hoshi-1",
            HospitalId=world.hospital.id,
            TargetHostname="cobas-1",
            EventMessage=FORMULA,
            details={"command": FORMULA},
        )
        indexed(audit, last)
        try:
            yield Desk(c, audit, recordings, "s-hoshi-1", "s-tsuki-1")
        finally:
            store.close()


def signed_in(c: Console, name: str, lang: str = "ja") -> TestClient:
    http = TestClient(c.app, raise_server_exceptions=False, headers={"Accept-Language": lang})
    r = http.post(
        "/console/login",
        data={"username": name, "password": PASSWORD, "totp": c.code(name)},
        follow_redirects=False,
    )
    c.clock.advance(30)
    assert r.status_code == 303, r.text
    return http


def refusals(c: Console) -> list[tuple[str, str | None]]:
    return [
        (e.type, e.get("ActorUsername")) for e in c.emitter.events if e.type.endswith(".refused")
    ]


def rows(page: str, attr: str = "data-event") -> list[str]:
    return re.findall(rf'<tr {attr}="([^"]*)"', page)


def test_auditor_searches_own_hospital_by_each_filter_in_tokyo_time(desk: Desk) -> None:
    c = desk.c
    http = signed_in(c, "aud")
    r = http.get("/console/audit", params={"engineer": "eng", "type": "session.started"})
    assert r.status_code == 200, r.text
    assert 'data-type="session.started"' in r.text and "s-hoshi-1" in r.text
    assert "s-tsuki-1" not in r.text and "tsuki-1" not in r.text
    assert "Asia/Tokyo" in r.text and "JST" in r.text  # 2026-03-02 10:00 JST, the org's zone
    assert "2026-03-02 10:00 JST" in r.text
    by_instrument = http.get("/console/audit", params={"instrument": "cobas-1"}).text
    assert len(rows(by_instrument)) >= 3 and "tsuki-only" not in by_instrument
    by_hospital = http.get("/console/audit", params={"hospital": "hoshi-hospital"})
    assert by_hospital.status_code == 200 and "s-hoshi-1" in by_hospital.text
    # the time range is read in the organisation's zone: 10:00 JST is 01:00 UTC
    before = http.get("/console/audit", params={"session": "s-hoshi-1", "end": "2026-03-02T09:59"})
    assert rows(before.text) == [] and 'id="empty"' in before.text
    during = http.get(
        "/console/audit",
        params={"session": "s-hoshi-1", "start": "2026-03-02T09:59", "end": "2026-03-02T10:01"},
    )
    assert len(rows(during.text)) == 3
    bad = http.get("/console/audit", params={"start": "yesterday"})
    assert bad.status_code == 422 and 'data-key="error.invalid"' in bad.text


def test_paging_walks_every_matching_event_once(desk: Desk) -> None:
    c = desk.c
    eng = c.world.actors["eng"]
    last = None
    for n in range(PAGE_SIZE + 7):
        last = c.services.ctx.emit(
            "session.command",
            eng,
            TargetSessionId="s-paged",
            HospitalId=c.world.hospital.id,
            TargetHostname="las-line-a",
            details={"command": f"step {n}"},
        )
    assert last is not None
    indexed(desk.audit, last)
    http = signed_in(c, "aud")
    first = http.get("/console/audit", params={"session": "s-paged"}).text
    assert len(rows(first)) == PAGE_SIZE
    link = re.search(r'id="next-page" href="([^"]+)"', first)
    assert link, "no next page link"
    second = http.get(link.group(1).replace("&amp;", "&")).text
    assert len(rows(second)) == 7 and 'id="next-page"' not in second
    assert 'id="first-page"' in second
    assert not set(rows(first)) & set(rows(second))
    forged = http.get("/console/audit", params={"page": "not-a-token"})
    assert forged.status_code == 422


def test_hospital_auditor_is_refused_another_hospitals_events(desk: Desk) -> None:
    c = desk.c
    http = signed_in(c, "aud")
    c.emitter.clear()
    for url in ("/console/audit", "/console/audit/export", "/console/recordings"):
        r = http.get(url, params={"hospital": "tsuki-hospital", "format": "csv"})
        assert r.status_code == 403, (url, r.text[:200])
        assert 'data-key="error.forbidden"' in r.text
    assert refusals(c) == [("admin.refused", "aud")] * 3
    assert c.emitter.of_type("audit.exported") == []
    # asking for the other hospital's session by id finds nothing of it
    r = http.get("/console/audit", params={"session": desk.theirs})
    assert rows(r.text) == []


def test_export_csv_and_jsonl_have_every_row_and_neutralise_formulas(desk: Desk) -> None:
    c = desk.c
    http = signed_in(c, "aud")
    c.emitter.clear()
    r = http.get("/console/audit/export", params={"session": desk.mine, "format": "csv"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="hoshu-audit.csv"' in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(t["EventType"] for t in table) == [
        "session.command",
        "session.ended",
        "session.started",
    ]
    [command] = [t for t in table if t["EventType"] == "session.command"]
    assert command["EventMessage"] == "'" + FORMULA  # a text cell, not a formula
    assert all(not v.startswith(("=", "+", "-", "@")) for t in table for v in t.values())
    lines = http.get("/console/audit/export", params={"session": desk.mine, "format": "jsonl"})
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in lines.text.splitlines()]
    assert len(records) == 3 and {x["HospitalId"] for x in records} == {c.world.hospital.id}
    assert any(x["EventMessage"] == FORMULA for x in records)  # JSON Lines: as recorded
    exported = c.emitter.of_type("audit.exported")
    assert [(e.get("ActorUsername"), e.details["format"]) for e in exported] == [
        ("aud", "csv"),
        ("aud", "jsonl"),
    ]
    assert json.loads(exported[0].details["filters"]) == {"session": desk.mine}
    assert MAX_EXPORT_ROWS <= 100_000  # bounded
    assert http.get("/console/audit/export", params={"format": "xlsx"}).status_code == 422


@pytest.mark.parametrize("name", ["appr", "hadmin", "eng", "vaud"])
def test_only_auditors_may_export_even_by_the_url(desk: Desk, name: str) -> None:
    """The export URL called directly by someone whose role (or organisation) may not
    export from the console: 403 page, ``admin.refused``, nothing exported."""
    c = desk.c
    http = signed_in(c, name)
    c.emitter.clear()
    r = http.get("/console/audit/export", params={"format": "csv"})
    assert r.status_code == 403 and "EventType" not in r.text
    for page in ("/console/audit", "/console/recordings", f"/console/recordings/{desk.mine}/cast"):
        assert http.get(page).status_code == 403, page
    assert c.emitter.of_type("audit.exported") == []
    assert c.emitter.of_type("recording.viewed") == []
    assert [t for t, who in refusals(c) if who == name] and all(
        who == name for _t, who in refusals(c)
    )


def test_signed_out_export_goes_to_sign_in(desk: Desk) -> None:
    http = TestClient(desk.c.app, raise_server_exceptions=False)
    r = http.get("/console/audit/export?format=csv", follow_redirects=False)
    assert r.status_code == 303 and "/console/login" in r.headers["location"]


def test_recordings_list_player_and_sha_check(desk: Desk) -> None:
    c = desk.c
    http = signed_in(c, "aud", "en")
    listing = http.get("/console/recordings").text
    assert desk.mine in rows(listing, "data-session")
    assert desk.theirs not in listing
    page = http.get(f"/console/recordings/{desk.mine}")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval';" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert 'data-check="match"' in page.text
    size, sha = digest(FileStore(desk.recordings), f"{desk.mine}.cast")
    assert page.text.count(sha) == 2  # stored and recorded, side by side
    assert f'data-src="/console/recordings/{desk.mine}/cast"' in page.text
    assert "<script>" not in page.text and 'src="/console/static/audit/audit.js"' in page.text
    c.emitter.clear()
    cast = http.get(f"/console/recordings/{desk.mine}/cast")
    assert cast.status_code == 200 and cast.headers["x-recording-sha256"] == sha
    assert cast.content == (desk.recordings / f"{desk.mine}.cast").read_bytes()
    assert b"output-of-hoshi" in cast.content and len(cast.content) == size
    [viewed] = c.emitter.of_type("recording.viewed")
    assert (viewed.get("ActorUsername"), viewed.get("TargetSessionId")) == ("aud", desk.mine)
    assert viewed.get("RecordingSHA256") == sha
    # the other hospital's recording: refused by URL, a recording.refused naming it
    c.emitter.clear()
    for url in (f"/console/recordings/{desk.theirs}", f"/console/recordings/{desk.theirs}/cast"):
        assert http.get(url).status_code == 403, url
    assert [(e.type, e.get("TargetSessionId")) for e in c.emitter.events] == [
        ("recording.refused", desk.theirs)
    ] * 2
    assert http.get("/console/recordings/..%2Fetc").status_code in (404, 422)
    # a session nobody knows: as the API, the hospital's auditor learns nothing of it
    assert http.get("/console/recordings/no-such-session").status_code == 403
    assert signed_in(c, "paud").get("/console/recordings/no-such-session").status_code == 404


def test_a_changed_recording_shows_as_not_matching(desk: Desk) -> None:
    c = desk.c
    sid = "s-changed"
    _session(c, desk.recordings, sid, c.world.hospital.id, "cobas-1", "original")
    path = desk.recordings / f"{sid}.cast"
    path.write_bytes(path.read_bytes().replace(b"original", b"replaced"))
    ended = c.services.ctx.emit("user.login", None, details={})  # a marker after the session
    indexed(desk.audit, ended)
    http = signed_in(c, "aud")
    page = http.get(f"/console/recordings/{sid}").text
    assert 'data-check="mismatch"' in page


def test_a_recording_in_blob_storage_plays_with_its_sha_check(
    desk: Desk, azurite: Azurite, blob_container: str, blob_credential: Any
) -> None:
    """Recordings in Azure Blob storage (Azurite): written by the recorder, read back
    through the store in ranged reads, the same SHA-256 check."""
    c = desk.c
    blob = BlobStore(blob_container, blob_credential, connection_verify=str(azurite.cert))
    ended = _session(
        c, desk.recordings, "s-blob", c.world.hospital.id, "cobas-1", "from-blob", blob
    )
    assert not (desk.recordings / "s-blob.cast").exists()  # only in the blob
    indexed(desk.audit, ended)
    files = c.app.state.audit_desk
    c.app.state.audit_desk = replace(files, recordings=blob)
    try:
        http = signed_in(c, "aud")
        page = http.get("/console/recordings/s-blob").text
        assert 'data-check="match"' in page and str(ended.get("RecordingSHA256")) in page
        cast = http.get("/console/recordings/s-blob/cast")
        assert cast.status_code == 200 and b"from-blob" in cast.content
        assert cast.headers["x-recording-sha256"] == ended.get("RecordingSHA256")
        assert len(cast.content) == ended.get("RecordingSize")
    finally:
        c.app.state.audit_desk = files


def test_player_assets_are_served_by_the_broker(desk: Desk) -> None:
    http = TestClient(desk.c.app)
    js = http.get("/console/static/vendor/asciinema-player.min.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert b"AsciinemaPlayer" in js.content
    css = http.get("/console/static/vendor/asciinema-player.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    ours = http.get("/console/static/audit/audit.js")
    assert ours.status_code == 200 and b"AsciinemaPlayer.create" in ours.content
    assert http.get("/console/static/vendor/package.json").status_code == 404
    assert http.get("/console/static/vendor/..%2F..%2Fpackage.json").status_code == 404


def test_verify_runs_the_brokers_check_with_its_keys(desk: Desk) -> None:
    c = desk.c
    http = signed_in(c, "aud", "en")
    page = http.get("/console/audit/verify")
    assert page.status_code == 200 and 'id="verify-result"' not in page.text
    csrf = CSRF.search(page.text)
    assert csrf
    # without the form's token nothing runs
    before = desk.audit.log.seq
    refused = http.post("/console/audit/verify", data={})
    assert refused.status_code == 403 and 'data-key="error.csrf"' in refused.text
    r = http.post("/console/audit/verify", data={"csrf": csrf.group(1)})
    assert r.status_code == 200
    assert 'data-ok="true"' in r.text and "hash links and signatures checked" in r.text
    count = int(re.search(r'id="v-count">(\d+)<', r.text).group(1))  # type: ignore[union-attr]
    assert count >= before > 20
    assert int(re.search(r'id="v-checkpoints">(\d+)<', r.text).group(1)) >= 1  # type: ignore[union-attr]
    # the outcome is in the chain itself (as hoshu audit verify's daily run writes it)
    lines = Path(desk.audit.log.path).read_text().splitlines()
    assert any('"EventType":"audit.verified"' in x.replace(" ", "") for x in lines[-5:])
    # from another site's page: refused, nothing runs
    foreign = http.post(
        "/console/audit/verify",
        data={"csrf": csrf.group(1)},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403 and 'data-key="error.csrf"' in foreign.text
    # an approver may not run it
    appr = signed_in(c, "appr")
    assert appr.post("/console/audit/verify", data={}).status_code == 403


def test_monthly_review_and_compliance_report(desk: Desk) -> None:
    c = desk.c
    # a failed sign-in in March 2026 (the test clock), found by the review
    http = TestClient(c.app, raise_server_exceptions=False)
    http.post("/console/login", data={"username": "eng", "password": "wrong", "totp": "000000"})
    failed = [e for e in c.emitter.of_type("user.login") if e.get("EventResult") == "Failure"]
    assert failed
    indexed(desk.audit, failed[-1])
    paud = signed_in(c, "paud", "en")
    r = paud.get("/console/audit/review", params={"month": "2026-03"})
    assert r.status_code == 200, r.text
    assert "Monthly review — 2026-03" in r.text
    part = r.text.split('id="part-failed_logins"')[1].split("</section>")[0]
    assert "user.login" in part and "eng" in part
    assert int(re.search(r'data-findings="(\d+)"', r.text).group(1)) >= 1  # type: ignore[union-attr]
    assert "data-print" in r.text and "<script>" not in r.text
    # a hospital's auditor: their own hospital's review (the engineer's sign-in has none)
    aud = signed_in(c, "aud", "en")
    own = aud.get("/console/audit/review", params={"month": "2026-03"})
    assert own.status_code == 200 and "Monthly review — 2026-03 · hoshi-hospital" in own.text
    other = aud.get(
        "/console/audit/review", params={"month": "2026-03", "hospital": "tsuki-hospital"}
    )
    assert other.status_code == 403
    assert aud.get("/console/audit/review", params={"month": "March"}).status_code == 422
    ja = signed_in(c, "aud", "ja").get("/console/audit/compliance")
    assert ja.status_code == 200 and "コンプライアンス報告" in ja.text
    assert len(rows(ja.text, "data-control")) >= 20
    assert re.search(r'data-status="(met|partly|not met)"', ja.text)
    assert "充足" in ja.text
    assert signed_in(c, "eng").get("/console/audit/compliance").status_code == 403


def test_free_text_of_events_is_escaped(desk: Desk) -> None:
    c = desk.c
    event = c.services.ctx.emit(
        "session.command",
        c.world.actors["eng"],
        TargetSessionId="s-html",
        HospitalId=c.world.hospital.id,
        TargetHostname="cobas-1",
        EventMessage="<script>alert(1)</script><b>x</b>",
        details={"command": "echo"},
    )
    indexed(desk.audit, event)
    page = signed_in(c, "aud").get("/console/audit", params={"session": "s-html"}).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>alert" not in page and "<b>x</b>" not in page


def test_auditors_start_on_the_search_and_only_they_see_its_link(desk: Desk) -> None:
    aud = signed_in(desk.c, "aud")
    start = aud.get("/console/", follow_redirects=False)
    assert start.status_code == 303 and start.headers["location"] == "/console/audit"
    assert 'id="nav-audit"' in aud.get("/console/audit").text
    assert 'id="nav-audit"' not in signed_in(desk.c, "appr").get("/console/inbox").text


def test_pages_without_the_audit_trail_say_unavailable(tmp_path: Path) -> None:
    """A broker app without the audit trail (no ``audit_desk``): a clear 503 page."""
    from broker.console.audit import router
    from tests.console.conftest import site

    with site(tmp_path) as c:
        c.app.include_router(router)
        http = signed_in(c, "aud")
        for url in ("/console/audit", "/console/recordings", "/console/audit/export"):
            r = http.get(url)
            assert r.status_code == 503 and 'data-key="error.unavailable"' in r.text, url


def test_the_player_marks_each_typed_command_on_its_progress_bar(desk: Desk) -> None:
    """Commands typed in the session become the player's markers (time into the
    recording, the command line), escaped in the page; a command without a time is not."""
    c = desk.c
    sid = "s-hoshi-marks"
    _session(c, desk.recordings, sid, c.world.hospital.id, "cobas-1", "marked-output")
    last = None
    for offset, text in ((0.25, "ls -l"), (1.5, 'echo "<b>x</b>"'), (None, "no time")):
        last = c.services.ctx.emit(
            "session.command",
            c.world.actors["eng"],
            TargetSessionId=sid,
            HospitalId=c.world.hospital.id,
            TargetHostname="cobas-1",
            details={"command": text, "source": "shell", "offset": offset},
        )
    assert last is not None
    indexed(desk.audit, last)
    page = signed_in(c, "aud", "en").get(f"/console/recordings/{sid}")
    assert page.status_code == 200
    [raw] = re.findall(r'data-markers="([^"]*)"', page.text)
    assert "<b>" not in raw  # escaped as an attribute value
    assert sorted(json.loads(html.unescape(raw))) == [[0.25, "ls -l"], [1.5, 'echo "<b>x</b>"']]
