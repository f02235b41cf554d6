"""The approver's held commands page and the auditor's "command contains" filter, over HTTP.

A seeded broker app (its events into a real hash-chained log shipped into a real
event index).  The live-session registry the console reads (``app.state.live_sessions``,
as ``broker.assembly`` sets it) holds sessions with a held line each: the approver of
the session's hospital sees it (escaped), allows or refuses it with a fresh TOTP
step-up, and the hold is answered in her name, as ``POST /v1/holds/{id}/allow|refuse``
would.  The forgotten paths: another hospital's approver, the engineer, the
hospital's auditor and admin, a form without its CSRF token, a form from another
site: 403, a refusal event naming the hold, and the line keeps waiting.
One test serves the console on its own event loop with the relay's real
``HeldCommand``: Allow resolves its answer future there, in the approver's name.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from audit.emitter import FanOut
from audit.service import AuditRuntime
from audit.testing import CapturingEmitter
from broker.access.services import Services
from broker.api.app import create_app
from broker.live.holds import HeldCommand
from broker.settings import BrokerSettings
from broker.store.db import Store
from tests.console.auditdesk import audit_runtime, indexed, install
from tests.console.conftest import Console, client, csrf_of, signed_in, visible_text
from tests.control.conftest import PASSWORD, T0, build_world, make_context
from tests.support import FakeClock, poll

EVIL = "<script>alert(1)</script> && rm -rf /tmp/x"


@dataclass
class Hold:
    """A held line as the relay keeps it (``broker.live.holds.HeldCommand``'s fields)."""

    session_id: str
    instrument: str
    hospital_id: str
    username: str
    command: str
    reason: str
    held_at: datetime
    deadline: datetime
    hold_id: str
    answers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return not self.answers

    def decide(self, decision: str, by: str) -> bool:
        if self.answers:
            return False
        self.answers.append((decision, by))
        return True


@dataclass
class Live:
    session_id: str
    hold: Hold | None


@dataclass
class Registry:
    sessions: list[Live] = field(default_factory=list)

    def list(self) -> list[Live]:
        return list(self.sessions)


@dataclass
class Site:
    c: Console
    audit: AuditRuntime
    live: Registry

    def hold(self, hold_id: str, command: str, *, hospital: str = "") -> Hold:
        w = self.c.world
        now = self.c.services.ctx.now()
        h = Hold(
            session_id=f"s-{hold_id}",
            instrument="cobas-1" if not hospital else "tsuki-1",
            hospital_id=hospital or w.hospital.id,
            username="eng",
            command=command,
            reason="a test hold",
            held_at=now,
            deadline=now + timedelta(hours=2),
            hold_id=hold_id,
        )
        self.live.sessions.append(Live(h.session_id, h))
        return h


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console-holds")
    with audit_runtime(tmp) as audit:
        store = Store(f"sqlite:///{tmp / 'hoshu.db'}")
        emitter = CapturingEmitter()
        clock = FakeClock(T0)
        services = Services.build(make_context(store, FanOut([emitter, audit.log]), clock))
        world = build_world(services, clock)
        app = create_app(BrokerSettings(data_dir=tmp / "data"), services=services)
        install(app, audit, Path(tmp / "recordings"))
        live = Registry()
        app.state.live_sessions = lambda: live
        try:
            yield Site(Console(app, "", world, emitter, clock), audit, live)
        finally:
            store.close()


def post(
    c: Console, who: str, path: str, *, csrf: bool = True, **headers: str
) -> tuple[TestClient, httpx.Response]:
    http = signed_in(c, who)
    data = {"stepup_totp": c.code(who)}
    if csrf:
        data["csrf"] = csrf_of(http, "/console/account")
    c.clock.advance(30)
    response: httpx.Response = http.post(path, data=data, headers=headers, follow_redirects=False)
    return http, response


def refusals(c: Console, hold_id: str) -> list[Any]:
    return [
        e for e in c.emitter.events if e.type.endswith(".refused") and e.get("Object") == hold_id
    ]


def test_the_approver_sees_the_held_line_escaped_and_allows_it(site: Site) -> None:
    c = site.c
    h = site.hold("h-aaaa000000000001", EVIL)
    http = signed_in(c, "appr")
    page = http.get("/console/holds")
    assert page.status_code == 200
    assert f'data-hold="{h.hold_id}"' in page.text
    assert "<script>alert(1)</script>" not in page.text  # escaped, not markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    text = visible_text(page.text)
    assert EVIL in text and "a test hold" in text
    row = re.search(rf'data-hold="{h.hold_id}".*?</tr>', page.text, re.S)
    assert row and ">cobas-1<" in row.group(0) and ">eng<" in row.group(0)
    left = re.search(r'class="left">(\d+):(\d\d)<', row.group(0))
    assert left and 0 < int(left.group(1)) <= 120  # minutes left of the two hours
    assert 'href="/console/holds"' in http.get("/console/inbox").text  # in the nav
    _, r = post(c, "appr", f"/console/holds/{h.hold_id}/allow")
    assert r.status_code == 303 and r.headers["location"].endswith("done=hold_allowed")
    assert h.answers == [("allowed", "appr")]
    after = http.get("/console/holds?done=hold_allowed").text
    assert f'data-hold="{h.hold_id}"' not in after and 'id="notice"' in after
    # answered already: not waiting any more, a second answer changes nothing
    _, r = post(c, "appr", f"/console/holds/{h.hold_id}/refuse")
    assert r.status_code == 404 and h.answers == [("allowed", "appr")]


def test_refuse_answers_in_the_approvers_name(site: Site) -> None:
    c = site.c
    h = site.hold("h-aaaa000000000002", "touch held-two")
    _, r = post(c, "appr2", f"/console/holds/{h.hold_id}/refuse")
    assert r.status_code == 303 and r.headers["location"].endswith("done=hold_refused")
    assert h.answers == [("refused", "appr2")]


@pytest.mark.parametrize("who", ["other-appr", "eng", "aud", "hadmin"])
def test_nobody_but_the_hospitals_approver_answers(site: Site, who: str) -> None:
    c = site.c
    h = site.hold(f"h-bbbb{abs(hash(who)) % 10**12:012d}", "touch held-probe")
    c.emitter.clear()
    _, r = post(c, who, f"/console/holds/{h.hold_id}/allow")
    assert r.status_code == 403, r.text
    assert h.pending  # the line keeps waiting
    [refused] = refusals(c, h.hold_id) or [None]
    if who == "other-appr":  # allowed the action, refused by the hospital rule: names the hold
        assert refused is not None and refused.get("ActorUsername") == who
        assert refused.get("TargetSessionId") == h.session_id
    else:  # refused by the table before the hold is looked up
        assert [e for e in c.emitter.events if e.type.endswith(".refused")]
    # nor may they list it
    page = signed_in(c, who).get("/console/holds")
    assert h.hold_id not in page.text
    assert page.status_code == (200 if who == "other-appr" else 403)
    nav = signed_in(c, who).get("/console/account").text
    assert ('href="/console/holds"' in nav) == (who == "other-appr")  # linked only for who may


def test_another_hospitals_hold_is_not_listed_to_this_approver(site: Site) -> None:
    c = site.c
    h = site.hold("h-cccc000000000001", "touch tsuki-only", hospital=c.world.other_hospital.id)
    assert h.hold_id not in signed_in(c, "appr").get("/console/holds").text
    assert h.hold_id in signed_in(c, "other-appr").get("/console/holds").text
    _, r = post(c, "appr", f"/console/holds/{h.hold_id}/allow")
    assert r.status_code == 403 and h.pending


def test_no_csrf_or_a_foreign_origin_changes_nothing(site: Site) -> None:
    c = site.c
    h = site.hold("h-dddd000000000001", "touch held-csrf")
    c.emitter.clear()
    _, r = post(c, "appr", f"/console/holds/{h.hold_id}/allow", csrf=False)
    assert r.status_code == 403 and 'data-key="error.csrf"' in r.text
    _, r = post(c, "appr", f"/console/holds/{h.hold_id}/allow", Origin="https://evil.example")
    assert r.status_code == 403 and 'data-key="error.csrf"' in r.text
    assert h.pending
    details = [
        e.record.get("EventResultDetails") for e in c.emitter.events if e.type.endswith(".refused")
    ]
    assert details.count("csrf_failed") == 2
    _, r = post(c, "appr", f"/console/holds/{h.hold_id}/allow", Origin="http://testserver")
    assert r.status_code == 303 and h.answers == [("allowed", "appr")]


def test_signed_out_is_sent_to_sign_in_and_answers_nothing(site: Site) -> None:
    h = site.hold("h-eeee000000000001", "touch held-anon")
    http = client(site.c)
    r = http.get("/console/holds", follow_redirects=False)
    assert r.status_code != 200 and h.hold_id not in r.text
    r = http.post(f"/console/holds/{h.hold_id}/allow", follow_redirects=False)
    assert "/console/holds?done" not in r.headers.get("location", "") and h.pending


def test_the_auditors_search_finds_a_command(site: Site) -> None:
    c = site.c
    w = c.world
    cols: dict[str, Any] = {
        "TargetSessionId": "s-cmd-1",
        "HospitalId": w.hospital.id,
        "TargetHostname": "cobas-1",
    }
    eng = w.actors["eng"]
    c.services.ctx.emit("session.command", eng, details={"command": "ls /var/log"}, **cols)
    last = c.services.ctx.emit(
        "session.command_held", eng, details={"command": "rm -rf /data/qc"}, **cols
    )
    indexed(site.audit, last)
    http = signed_in(c, "aud")
    page = http.get("/console/audit", params={"command": "rm -rf"})
    assert page.status_code == 200 and 'id="f-command"' in page.text
    assert 'value="rm -rf"' in page.text  # the filter stays in the form
    found = re.findall(r'data-type="([^"]+)"', page.text)
    assert found == ["session.command_held"], found  # the ls line is not found
    assert "s-cmd-1" in visible_text(page.text)
    every = http.get("/console/audit", params={"session": "s-cmd-1"}).text
    assert sorted(re.findall(r'data-type="([^"]+)"', every)) == [
        "session.command",
        "session.command_held",
    ]


@asynccontextmanager
async def served(app: object) -> AsyncIterator[str]:
    """``app`` served by uvicorn on this event loop (the relay's, as in ``hoshu serve``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await poll(lambda: server.started, 10, "the console's HTTP server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def test_a_real_held_line_is_released_on_the_relays_loop(site: Site) -> None:
    """The relay's own hold (``broker.live.holds.HeldCommand``, its answer a future on
    the loop the console serves on, as in ``hoshu serve``): Allow resolves it."""
    c = site.c
    now = c.services.ctx.now()
    real = HeldCommand(
        session_id="s-real-1",
        instrument="cobas-1",
        hospital_id=c.world.hospital.id,
        username="eng",
        command="systemctl restart analyzer",
        reason="a test hold",
        pattern=r"\bsystemctl\b",
        held_at=now,
        deadline=now + timedelta(hours=1),
    )
    site.live.sessions.append(Live(real.session_id, real))  # type: ignore[arg-type]
    async with served(c.app) as url, httpx.AsyncClient(base_url=url) as http:
        r = await http.post(
            "/console/login",
            data={"username": "appr", "password": PASSWORD, "totp": c.code("appr")},
        )
        c.clock.advance(30)
        assert r.status_code in (200, 303)
        page = (await http.get("/console/holds")).text
        assert f'data-hold="{real.hold_id}"' in page and "systemctl restart analyzer" in page
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert token
        r = await http.post(
            f"/console/holds/{real.hold_id}/allow",
            data={"csrf": token.group(1), "stepup_totp": c.code("appr")},
        )
        c.clock.advance(30)
        assert r.status_code in (200, 303), r.text
    assert await asyncio.wait_for(real.decision, 5) == ("allowed", "appr")
