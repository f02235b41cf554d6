"""The engineer's console pages over HTTP: requesting access with the API's fields and
checks, my requests and grants, SSH keys, the ssh_config download, and every
forgotten path (another role, another engineer, HTML, oversized fields).

One seeded broker app per module (tests/console/conftest.py), through TestClient.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from broker.access.model import RequestStatus
from broker.assembly import console_ssh_config
from tests.console.conftest import Console, csrf_of, signed_in, site, visible_text
from tests.control.apihelp import auth, session_token
from tests.control.conftest import openssh_public_key

FORM = "/console/my/request"


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with site(tmp_path_factory.mktemp("console-engineer")) as console:
        yield console


def requests_of(c: Console, name: str) -> list[str]:
    return [r.reason for r in c.services.requests.list_requests(c.world.actors[name], None)]


def send(http: TestClient, **fields: str) -> httpx.Response:
    data = {"csrf": csrf_of(http, FORM), "duration": "60", **fields}
    response: httpx.Response = http.post("/console/my/requests", data=data)
    return response


def test_engineer_requests_access_and_the_approver_sees_every_field(c: Console) -> None:
    """The form's request is the API's: the same fields reach the approver's inbox, the
    same request.created event is written, and it is listed on my requests page."""
    http = signed_in(c, "eng", "en")
    form = http.get(FORM)
    assert form.status_code == 200 and "cobas-1" in form.text and "tsuki-1" in form.text
    c.emitter.clear()
    r = send(
        http,
        instruments="cobas-1",
        ports="22, 8080",
        duration="90",
        reason="replace the reagent probe",
        ticket="ACME-1234",
        work_plan="1. stop the analyzer\n2. swap the probe",
    )
    assert r.status_code == 200 and "sent to the hospital" in r.text
    [created] = c.emitter.of_type("request.created")
    assert created.record["ActorUsername"] == "eng"
    [mine] = [
        x
        for x in c.services.requests.list_requests(c.world.actors["eng"], "pending")
        if x.reason == "replace the reagent probe"
    ]
    assert (mine.instruments, mine.ports, mine.duration_s) == (["cobas-1"], [22, 8080], 5400)
    assert (mine.ticket, mine.file_transfer, mine.emergency) == ("ACME-1234", False, False)
    assert mine.work_plan == "1. stop the analyzer\n2. swap the probe"
    page = visible_text(http.get("/console/my/requests").text)
    assert "replace the reagent probe" in page and "Waiting for approval" in page
    inbox = signed_in(c, "appr", "en").get("/console/inbox").text
    assert f'data-request="{mine.id}"' in inbox and "ACME-1234" in inbox
    assert "swap the probe" in inbox


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"instruments": "no-such-thing", "reason": "unknown instrument"}, 404),
        ({"instruments": "cobas-1", "ports": "3389", "reason": "port not offered"}, 422),
        ({"instruments": "cobas-1 tsuki-1", "reason": "two hospitals"}, 422),
        ({"instruments": "lis-server", "reason": "no contract"}, 403),
        ({"instruments": "cobas-1", "reason": "   "}, 422),
        ({"instruments": "cobas-1", "reason": "too short", "duration": "0"}, 422),
        ({"instruments": "cobas-1", "reason": "past the policy", "duration": "600"}, 422),
        ({"instruments": "cobas-1", "reason": "bad port", "ports": "22, 70000"}, 422),
        ({"instruments": "", "reason": "no instrument"}, 422),
    ],
)
def test_bad_requests_are_refused_as_the_api_refuses_them(
    c: Console, fields: dict[str, str], status: int
) -> None:
    """Each bad request gets the API's answer (status) and changes nothing."""
    http = signed_in(c, "eng")
    before = requests_of(c, "eng")
    r = send(http, **fields)
    assert r.status_code == status, r.text
    assert 'id="error"' in r.text
    assert requests_of(c, "eng") == before
    # the API says the same about the same request
    body: dict[str, object] = {
        "instruments": [n for n in fields["instruments"].split() if n] or [],
        "reason": fields["reason"],
        "duration_s": int(fields.get("duration", "60")) * 60,
    }
    if fields.get("ports"):
        body["ports"] = [int(p) for p in fields["ports"].split(",")]
    api = TestClient(c.app, raise_server_exceptions=False)
    token = session_token(c.services, c.world.users["eng"])
    answer = api.post("/v1/requests", json=body, headers=auth(token))
    assert answer.status_code == status, answer.text
    assert requests_of(c, "eng") == before


def test_html_in_every_free_text_field_is_shown_escaped(c: Console) -> None:
    """Reason, ticket and work plan are shown as text, to the engineer and the approver."""
    http = signed_in(c, "eng")
    send(
        http,
        instruments="cobas-1",
        reason='<script>alert("r")</script>',
        ticket="<img src=x onerror=alert(1)>",
        work_plan="<b onmouseover=alert(2)>plan</b>",
    )
    for page in (
        http.get("/console/my/requests").text,
        signed_in(c, "appr").get("/console/inbox").text,
    ):
        assert "<script>alert" not in page and "<img src=x" not in page and "<b onm" not in page
        assert "&lt;script&gt;alert(&#34;r&#34;)&lt;/script&gt;" in page
        assert "&lt;img src=x onerror=alert(1)&gt;" in page


@pytest.mark.parametrize(
    ("field", "length"), [("reason", 2001), ("ticket", 201), ("work_plan", 20001)]
)
def test_an_oversized_field_is_refused_with_an_event_and_no_change(
    c: Console, field: str, length: int
) -> None:
    http = signed_in(c, "eng")
    before = requests_of(c, "eng")
    c.emitter.clear()
    fields = {"instruments": "cobas-1", "reason": "oversized probe", field: "x" * length}
    r = send(http, **fields)
    assert r.status_code == 422 and 'data-key="error.invalid"' in r.text
    assert requests_of(c, "eng") == before
    if length <= 20000:  # past the longest form field the form itself is refused
        [refused] = c.emitter.of_type("request.refused")
        assert refused.record["EventResultDetails"] == "field_too_long"
        assert refused.record["ActorUsername"] == "eng"


def test_other_roles_cannot_use_the_engineer_pages_or_request_as_someone_else(
    c: Console,
) -> None:
    """An approver gets 403 and the refusal event on every engineer page and form; a
    request names its requester from the session, never from the form."""
    http = signed_in(c, "appr")
    c.emitter.clear()
    for path in ("/console/my/requests", FORM, "/console/my/instruments", "/console/my/keys"):
        r = http.get(path)
        assert r.status_code == 403 and 'data-key="error.forbidden"' in r.text, path
    assert len(c.emitter.of_type("admin.refused")) == 4
    token = csrf_of(http, "/console/inbox")
    before = requests_of(c, "eng")
    r = http.post(
        "/console/my/requests",
        data={
            "csrf": token,
            "instruments": "cobas-1",
            "reason": "as eng",
            "duration": "60",
            "requester": "eng",
        },
    )
    assert r.status_code == 403
    [refused] = c.emitter.of_type("request.refused")
    assert refused.record["ActorUsername"] == "appr"
    assert requests_of(c, "eng") == before
    # an engineer's extra "requester" field changes nothing: the request is the caller's
    eng2 = signed_in(c, "eng2")
    send(eng2, instruments="cobas-1", reason="made by eng2", requester="eng")
    assert "made by eng2" in requests_of(c, "eng2") and "made by eng2" not in requests_of(c, "eng")


def test_an_engineer_cancels_only_their_own_request_and_ends_only_their_own_grant(
    c: Console,
) -> None:
    theirs = c.request(["cobas-1"], "eng's own", engineer="eng")
    other = signed_in(c, "eng2")
    r = other.post(f"/console/my/requests/{theirs.id}/cancel", data={"csrf": csrf_of(other, FORM)})
    assert r.status_code in (403, 404)
    assert c.services.requests.show(c.world.admin, theirs.id).request.status == "pending"
    mine = signed_in(c, "eng")
    r = mine.post(f"/console/my/requests/{theirs.id}/cancel", data={"csrf": csrf_of(mine, FORM)})
    assert r.status_code == 200 and 'id="notice"' in r.text
    assert c.services.requests.show(c.world.admin, theirs.id).request.status == (
        RequestStatus.CANCELLED
    )
    granted = c.request(["cobas-1"], "to end early", engineer="eng")
    view = c.services.requests.approve(c.world.actors["appr"], granted.id)
    assert view.grant is not None
    r = other.post(f"/console/my/grants/{view.grant.id}/end", data={"csrf": csrf_of(other, FORM)})
    assert r.status_code in (403, 404)
    page = mine.get("/console/my/requests").text
    assert f'data-grant="{view.grant.id}"' in page
    c.emitter.clear()
    r = mine.post(f"/console/my/grants/{view.grant.id}/end", data={"csrf": csrf_of(mine, FORM)})
    assert r.status_code == 200
    [ended] = c.emitter.of_type("grant.expired")
    assert ended.record["GrantId"] == view.grant.id
    assert f'action="/console/my/grants/{view.grant.id}/end"' not in r.text


def test_ssh_keys_are_registered_with_the_apis_checks(c: Console) -> None:
    http = signed_in(c, "eng2", "en")
    line = openssh_public_key() + " <b>laptop</b>"
    c.emitter.clear()
    r = http.post(
        "/console/my/keys", data={"csrf": csrf_of(http, "/console/my/keys"), "public_key": line}
    )
    assert r.status_code == 200 and "has been registered" in r.text
    assert c.emitter.of_type("admin.change")
    [key] = c.services.people.list_keys(c.world.actors["eng2"])
    assert key.fingerprint in r.text and "&lt;b&gt;laptop&lt;/b&gt;" in r.text
    # the same key again, a DSA key, a line that is no key: refused, nothing added
    for bad, status in ((line, 409), ("ssh-dss AAAAB3NzaC1kc3M=", 422), ("hello", 422)):
        r = http.post(
            "/console/my/keys",
            data={"csrf": csrf_of(http, "/console/my/keys"), "public_key": bad},
        )
        assert r.status_code == status, bad
    assert len(c.services.people.list_keys(c.world.actors["eng2"])) == 1
    r = http.post(
        f"/console/my/keys/{key.id}/revoke", data={"csrf": csrf_of(http, "/console/my/keys")}
    )
    assert r.status_code == 200 and "has been retired" in r.text and key.fingerprint not in r.text
    # another engineer cannot retire it (the same rule as the API)
    other = signed_in(c, "eng")
    r = other.post(
        f"/console/my/keys/{key.id}/revoke", data={"csrf": csrf_of(other, "/console/my/keys")}
    )
    assert r.status_code == 404


def test_ssh_config_download_is_what_hoshu_ssh_config_prints(c: Console, tmp_path: Path) -> None:
    """Without a front door the page says so (503); with one, the download is the text
    the CLI prints for the instruments of my live grants, with the pinned broker key."""
    http = signed_in(c, "eng2", "en")
    r = http.get("/console/my/ssh-config")
    assert r.status_code == 503 and 'data-key="error.unavailable"' in r.text
    host_key = openssh_public_key()
    c.app.state.ssh_config = console_ssh_config(c.app.state.settings, host_key)
    try:
        req = c.request(["las-line-a"], "ssh config probe", engineer="eng2")
        c.services.requests.approve(c.world.actors["appr"], req.id)
        c.services.requests.approve(c.world.actors["appr2"], req.id)  # a critical instrument
        r = http.get("/console/my/ssh-config")
    finally:
        del c.app.state.ssh_config
    assert r.status_code == 200
    assert r.headers["content-disposition"] == 'attachment; filename="hoshu_ssh_config"'
    assert r.headers["content-type"].startswith("text/plain")
    key_file = tmp_path / "broker_host_key.pub"
    key_file.write_text(host_key + "\n")
    settings = c.app.state.settings
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli.main",
            "ssh-config",
            "--user",
            "eng2",
            "--instrument",
            "las-line-a",
            "--broker-host",
            settings.ssh_host,
            "--broker-port",
            str(settings.ssh_port),
            "--host-key-file",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert r.text == cli.stdout
    assert "Host las-line-a.hoshu" in r.text and "User eng2+las-line-a" in r.text


def test_the_engineers_navigation_shows_only_their_pages(c: Console) -> None:
    eng = signed_in(c, "eng").get("/console/my/requests").text
    nav = eng.split("<nav", 1)[1].split("</nav>", 1)[0]
    assert "/console/my/request" in nav and "/console/my/keys" in nav
    assert "/console/inbox" not in nav and "/console/admin" not in nav
    assert "/console/grants" not in nav and "/console/sessions" not in nav
    appr = signed_in(c, "appr").get("/console/inbox").text
    nav = appr.split("<nav", 1)[1].split("</nav>", 1)[0]
    assert "/console/inbox" in nav and "/console/my/" not in nav and "/console/admin" not in nav


def test_emergency_access_follows_the_hospital_policy(c: Console) -> None:
    """Refused (policy event, no grant) where the hospital does not allow it; started
    at once, with the approvers alerted, where it does."""
    http = signed_in(c, "eng2")
    c.emitter.clear()
    fields = {
        "csrf": csrf_of(http, FORM),
        "instruments": "cobas-1",
        "reason": "analyzer down at night",
        "duration": "30",
    }
    r = http.post("/console/my/emergency", data=fields)
    assert r.status_code == 422 and 'data-key="error.policy"' in r.text
    assert c.emitter.of_type("request.refused")
    hospital = c.world.hospital.name
    c.services.estate.update_policy(c.world.admin, hospital, {"emergency_allowed": True})
    try:
        r = http.post("/console/my/emergency", data={**fields, "csrf": csrf_of(http, FORM)})
        assert r.status_code == 200 and 'id="notice"' in r.text
        grants = c.services.grants.list_grants(c.world.actors["eng2"], live_only=True)
        assert any(g.emergency for g in grants)
        assert any(t.startswith("emergency.") for t in c.emitter.types())
    finally:
        c.services.estate.update_policy(c.world.admin, hospital, {"emergency_allowed": False})


def test_a_request_without_its_csrf_token_or_from_another_site_changes_nothing(
    c: Console,
) -> None:
    http = signed_in(c, "eng")
    before = requests_of(c, "eng")
    fields = {"instruments": "cobas-1", "reason": "csrf probe", "duration": "60"}
    c.emitter.clear()
    r = http.post("/console/my/requests", data=fields)
    assert r.status_code == 403 and 'data-key="error.csrf"' in r.text
    r = http.post(
        "/console/my/requests",
        data={**fields, "csrf": csrf_of(http, FORM)},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and 'data-key="error.csrf"' in r.text
    assert requests_of(c, "eng") == before
    refused = c.emitter.of_type("request.refused")
    assert [e.record["EventResultDetails"] for e in refused] == ["csrf_failed", "csrf_failed"]


def test_an_engineer_reads_the_approvers_comment_on_a_decided_request(c: Console) -> None:
    """A denial's comment reaches the engineer's page, as text."""
    req = c.request(["cobas-1"], "comment probe", engineer="eng2")
    c.services.requests.deny(c.world.actors["appr"], req.id, "<b>not today</b>: 検査中")
    page = signed_in(c, "eng2", "en").get("/console/my/requests").text
    row = page.split(f'data-request="{req.id}"', 1)[1].split("</tr>", 1)[0]
    assert "Denied" in row and "&lt;b&gt;not today&lt;/b&gt;: 検査中" in row
    assert "<b>not today" not in page
