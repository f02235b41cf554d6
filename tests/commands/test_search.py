"""``hoshu audit search --command``: auditors find the commands run, typed or exec."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from audit import new_event
from audit.index import AuditIndex, EventQuery
from audit.testing import CapturingEmitter
from audit.workreports import ReportService
from broker.api import errors
from broker.api.routes.audit import build_router
from broker.cli import audit as cli
from broker.cli.main import main
from tests.audit.conftest import _auth


def _command(
    cmd: str, hospital: str, type_: str = "session.command", **details: object
) -> Mapping[str, Any]:
    return new_event(
        type_,
        HospitalId=hospital,
        TargetHostname="cobas-c503-1",
        ActorUsername="sato",
        TargetSessionId="s1",
        details={"command": cmd, **details},
    ).record


@pytest.fixture
def index(tmp_path: Path) -> AuditIndex:
    index = AuditIndex.from_url(f"sqlite:///{tmp_path / 'i.db'}")
    index.add(
        [
            _command("rm -rf /tmp/old", "h-okayama", source="shell", prompt="$", offset=1.5),
            _command("ls -l", "h-okayama", source="shell", prompt="$", offset=2.0),
            _command("cat notes.txt", "h-okayama", prompt="rm$", cwd="/rm"),
            _command("rm -rf /", "h-okayama", "session.command_denied", pattern="rm"),
            _command("rm 検体.csv", "h-okayama", source="shell"),
            _command("rm -f /var/log/x", "h-handa", source="shell"),
            new_event("ssh.login", ActorUsername="rm", HospitalId="h-okayama").record,
        ]
    )
    return index


@pytest.fixture
def cli_as(
    index: AuditIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], None]]:
    app = FastAPI()
    errors.install(app)
    em = CapturingEmitter()
    app.include_router(
        build_router(
            index=index,
            reports=ReportService(index, em),
            recordings_dir=tmp_path,
            emitter=em,
            authenticate=_auth,
            sink_status=lambda: [],
        )
    )
    with TestClient(app) as client:

        class NoClose:
            def __enter__(self) -> TestClient:
                return client

            def __exit__(self, *exc: object) -> None:
                return None

        def login(who: str) -> None:
            client.headers["Authorization"] = f"Bearer {who}"
            monkeypatch.setattr(cli, "client_factory", lambda args: NoClose())

        yield login


def test_search_by_command_text(index: AuditIndex) -> None:
    found = index.search(EventQuery(command="rm")).events
    assert sorted(e["Details"]["command"] for e in found) == [
        "rm -f /var/log/x",
        "rm -rf /",
        "rm -rf /tmp/old",
        "rm 検体.csv",
    ]
    # the text must be in the command itself: not in the prompt, not in another field
    assert all(e["EventType"] != "ssh.login" for e in found)
    assert [e["Details"]["command"] for e in index.search(EventQuery(command="検体")).events] == [
        "rm 検体.csv"
    ]
    # LIKE's wildcards are plain text here
    assert index.search(EventQuery(command="%")).events == []
    assert [e["Details"]["command"] for e in index.search(EventQuery(command="e_n")).events] == []


def test_cli_search_command_for_an_auditor_sees_only_the_own_hospital(
    cli_as: Callable[[str], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_as("okayama-auditor")
    assert main(["--json", "audit", "search", "--command", "rm -rf"]) == 0
    out = capsys.readouterr().out
    events = (
        json.loads(out)["events"]
        if out.lstrip().startswith("{")
        else [json.loads(x) for x in out.splitlines() if x.strip()]
    )
    commands = sorted(e["Details"]["command"] for e in events)
    assert commands == ["rm -rf /", "rm -rf /tmp/old"]
    cli_as("engineer")
    assert main(["audit", "search", "--command", "rm"]) == 1
    assert "forbidden" in capsys.readouterr().err.lower()
