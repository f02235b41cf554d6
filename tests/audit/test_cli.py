"""``hoshu audit ...`` and ``hoshu report sign`` as an operator or auditor uses them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from audit import new_event
from audit.chain import ChainLog
from audit.signing import CheckpointSigner
from audit.testing import CapturingEmitter
from broker.cli import audit as cli
from broker.cli.main import main


def _log(tmp_path: Path) -> tuple[Path, Path]:
    """A broker's closed log, and its public key as pinned at set-up (kept elsewhere)."""
    key = tmp_path / "broker" / "keys" / "audit_signing_key"
    signer = CheckpointSigner.load_or_create(key)
    log = tmp_path / "broker" / "audit" / "audit.log"
    with ChainLog(log, signer=signer, checkpoint_every=5) as chain:
        for i in range(12):
            chain.emit(new_event("admin.change", ActorUsername=f"admin{i}"))
    pinned = tmp_path / "auditor" / "audit_signing_key.pub"
    pinned.parent.mkdir()
    pinned.write_bytes(signer.public_pem())
    return log, pinned


def test_verify_reports_ok_and_names_the_first_tampered_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pub = _log(tmp_path)
    args = ["audit", "verify", "--log", str(log), "--key", str(pub), "--checkpoint-every", "5"]
    assert main(args) == 0
    assert "OK: 15 events, 3 checkpoints (signatures checked)" in capsys.readouterr().out
    log.write_text(log.read_text().replace('"admin7"', '"someone"'))
    assert main(args) == 1
    assert "TAMPERED: first bad position 9" in capsys.readouterr().out


def test_verify_against_a_checkpoint_from_the_siem_catches_truncation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, pub = _log(tmp_path)
    cp = log.with_name("audit.log.checkpoint").read_text()
    lines = log.read_text().splitlines(keepends=True)[:4]
    log.write_text("".join(lines))
    log.with_name("audit.log.head").unlink()
    assert (
        main(
            [
                "--json",
                "audit",
                "verify",
                "--log",
                str(log),
                "--key",
                str(pub),
                "--checkpoint-every",
                "5",
                "--checkpoint",
                cp,
            ]
        )
        == 1
    )
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["first_bad_position"] == 5 and "truncated" in out["reason"]


# Signs the CLI in as the named person; returns the events it emits.
AsUser = Callable[[str], CapturingEmitter]


@pytest.fixture
def as_user(api: tuple[TestClient, CapturingEmitter], monkeypatch: pytest.MonkeyPatch) -> AsUser:
    client, em = api

    def login(who: str) -> CapturingEmitter:
        client.headers["Authorization"] = f"Bearer {who}"
        monkeypatch.setattr(cli, "client_factory", lambda args: _NoClose(client))
        return em

    return login


class _NoClose:
    """The in-process client, left open across commands."""

    def __init__(self, client: TestClient) -> None:
        self.c = client

    def __enter__(self) -> TestClient:
        return self.c

    def __exit__(self, *exc: object) -> None:
        return None


def test_search_and_export(
    as_user: AsUser,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    as_user("okayama-auditor")
    assert main(["audit", "search", "--engineer", "sato", "--type", "request.created"]) == 0
    out = capsys.readouterr().out
    assert "request.created" in out and "sato" in out
    dest = tmp_path / "out.csv"
    assert main(["audit", "export", "--format", "csv", "-o", str(dest), "--session", "s1"]) == 0
    rows = dest.read_text().splitlines()
    assert rows[0].startswith("TimeGenerated,EventUid") and len(rows) == 4
    assert (
        main(
            ["audit", "search", "--start", "2026-05-01T00:00:00Z", "--end", "2026-04-01T00:00:00Z"]
        )
        == 1
    )
    assert "after its start" in capsys.readouterr().err


def test_play_replays_the_recording_for_allowed_people_only(
    as_user: AsUser, capsys: pytest.CaptureFixture[str]
) -> None:
    as_user("okayama-approver")
    assert main(["audit", "play", "s1", "--speed", "100"]) == 0
    assert "$ ls" in capsys.readouterr().out
    as_user("handa-approver")
    assert main(["audit", "play", "s1"]) == 1
    assert "forbidden" in capsys.readouterr().err


def test_report_sign_records_the_sign_off(
    as_user: AsUser, capsys: pytest.CaptureFixture[str]
) -> None:
    as_user("okayama-auditor")
    assert main(["audit", "report", "g1", "--generate", "--format", "html", "--lang", "ja"]) == 0
    assert "計画の範囲内" in capsys.readouterr().out
    em = as_user("okayama-approver")
    assert main(["report", "sign", "g1", "--comment", "確認済み"]) == 0
    assert "signed: report for grant g1 (inside_plan" in capsys.readouterr().out
    assert em.of_type("report.signed")[0].get("ActorUsername") == "yamada"
    assert main(["report", "sign", "g1"]) == 1
    assert "already signed" in capsys.readouterr().err


def test_compliance_map_is_printed_from_the_same_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "compliance"]) == 0
    out = capsys.readouterr().out
    assert "25  not met" in out and "tests/audit/test_checkpoints.py::" in out
    assert main(["--json", "audit", "compliance"]) == 0
    rows = json.loads(capsys.readouterr().out)["controls"]
    assert {r["status"] for r in rows} <= {"met", "partly", "not met"} and len(rows) == 23


def test_outbox_shows_backlog_and_a_corrupt_cursor_can_be_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from audit.outbox import Cursor, CursorStore

    monkeypatch.setenv("HOSHU_DATA_DIR", str(tmp_path / "data"))
    log_path = tmp_path / "data" / "audit" / "audit.log"
    with ChainLog(log_path) as chain:
        for _ in range(10):
            chain.emit(new_event("user.logout"))
    store = CursorStore(tmp_path / "data" / "audit" / "cursors")
    store.save("fluentd", Cursor())
    store.path("syslog").write_text("{garbage")
    assert main(["audit", "outbox"]) == 1
    out = capsys.readouterr().out
    assert "fluentd" in out and "behind       10" in out and "unreadable" in out
    assert main(["audit", "outbox", "--reset", "syslog=4"]) == 0
    assert store.load("syslog").seq == 4
    assert main(["audit", "outbox", "--reset", "syslog=99"]) == 1
    assert "no position 99" in capsys.readouterr().err


def test_an_unreachable_api_gives_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support import free_port

    assert main(["audit", "search", "--api", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach the hoshu API" in capsys.readouterr().err
