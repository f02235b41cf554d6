"""The live-session and gateway pages at the HTTP level: without a front door there is
no live session; who may open the pages; the watch script is our own and allowed by
the Content-Security-Policy (``connect-src 'self'`` for its stream, no inline script)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.console.conftest import Console, signed_in, site


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with site(tmp_path_factory.mktemp("console-live-http")) as console:
        yield console


def test_without_a_front_door_no_session_is_live(c: Console) -> None:
    http = signed_in(c, "appr", "en")
    r = http.get("/console/sessions")
    assert r.status_code == 200 and 'id="empty"' in r.text
    r = http.get("/console/sessions/s0001")
    assert r.status_code == 404 and 'data-key="error.not_found"' in r.text
    assert http.get("/console/sessions/s0001/stream").status_code == 404


def test_engineers_and_auditors_do_not_open_the_pages(c: Console) -> None:
    c.emitter.clear()
    for name in ("eng", "aud"):
        http = signed_in(c, name, "en")
        assert http.get("/console/sessions").status_code == 403
        assert http.get("/console/gateway").status_code == 403
    refused = [
        (e.record["ActorUsername"], e.record["Operation"])
        for e in c.emitter.of_type("admin.refused")
    ]
    assert refused == [
        ("eng", "console.sessions"),
        ("eng", "console.gateway"),
        ("aud", "console.sessions"),
        ("aud", "console.gateway"),
    ]


def test_the_watch_script_is_ours_and_allowed_by_the_policy(c: Console) -> None:
    http = TestClient(c.app)
    r = http.get("/console/static/live.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert "fetch(" in r.text and "innerHTML" not in r.text  # text only, never markup
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
