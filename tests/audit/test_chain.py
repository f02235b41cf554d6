"""The hash-chained log: appends verify, and each kind of tampering is caught."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from audit import InvalidEvent, UnknownEventType, new_event
from audit.chain import ChainLog, read_events, verify
from audit.errors import ChainError
from audit.testing import CapturingEmitter


def _fill(path: Path, n: int) -> None:
    with ChainLog(path) as log:
        for i in range(n):
            log.emit(new_event("admin.change", ActorUsername=f"admin{i}", Operation="update"))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_appended_events_verify(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _fill(log, 5)
    result = verify(log)
    assert result.ok and result.count == 5
    assert [e.get("ChainSeq") for e in read_events(log)] == [1, 2, 3, 4, 5]


def test_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _fill(log, 3)
    _fill(log, 2)
    assert verify(log).count == 5 and verify(log).ok


def test_edited_event_is_caught_at_its_position(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _fill(log, 5)
    lines = _lines(log)
    rec = json.loads(lines[2])
    rec["ActorUsername"] = "someone-else"
    lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    log.write_text("".join(lines))
    result = verify(log)
    assert not result.ok and result.first_bad == 3


def test_deleted_event_is_caught(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _fill(log, 5)
    lines = _lines(log)
    del lines[1]
    log.write_text("".join(lines))
    result = verify(log)
    assert not result.ok and result.first_bad == 2


def test_reordered_events_are_caught(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _fill(log, 5)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    log.write_text("".join(lines))
    assert verify(log).first_bad == 2


def test_truncated_tail_is_caught(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _fill(log, 5)
    log.write_text("".join(_lines(log)[:3]))
    result = verify(log)
    assert not result.ok and "truncated" in result.reason and result.first_bad == 4


def test_tampered_log_cannot_be_appended_to(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _fill(log, 2)
    log.write_text(log.read_text().replace("admin1", "admin9"))
    with pytest.raises(ChainError, match="fails verification"):
        ChainLog(log)


def test_second_writer_process_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    with ChainLog(log):
        # flock is per open file description: a second open behaves like another process
        with pytest.raises(ChainError, match="another process"):
            ChainLog(log)


def test_concurrent_appends_stay_chained(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    with ChainLog(log) as chain:

        def worker(k: int) -> None:
            for i in range(200):
                chain.emit(new_event("session.command", details={"command": f"{k}-{i}"}))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    result = verify(log)
    assert result.ok and result.count == 800


def test_unknown_types_columns_and_details_are_refused() -> None:
    with pytest.raises(UnknownEventType):
        new_event("no.such.type")
    with pytest.raises(InvalidEvent):
        new_event("user.login", NotAColumn="x")
    with pytest.raises(InvalidEvent):
        new_event("user.login", details={"undeclared": 1})


def test_secret_details_never_reach_the_log(tmp_path: Path) -> None:
    cap = CapturingEmitter()
    cap.emit(new_event("user.mfa_failed", details={"totp_code": "123456"}))
    assert "123456" not in cap.events[0].to_json()
    log = tmp_path / "audit.log"
    with ChainLog(log) as chain:
        chain.emit(cap.events[0])
    assert "123456" not in log.read_text()


def test_giant_event_is_refused_and_the_log_stays_intact(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    with ChainLog(log) as chain:
        chain.emit(new_event("user.logout"))
        with pytest.raises(InvalidEvent, match="larger than"):
            chain.append_many(
                [
                    new_event("user.logout"),
                    new_event("session.command", details={"command": "x" * 5_000_000}),
                ]
            )
        chain.emit(new_event("user.logout"))
    assert verify(log).ok and verify(log).count == 2


def test_full_disk_gives_a_clear_error_and_leaves_no_half_line(tmp_path: Path) -> None:
    """A write that hits the file-size limit (as a full disk would) is refused and cut back."""
    import subprocess
    import sys

    log = tmp_path / "audit.log"
    script = f"""
import resource, signal, sys
from audit import new_event
from audit.chain import ChainLog
from audit.errors import ChainError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
log = ChainLog({str(log)!r})
log.emit(new_event("user.logout"))
resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))
n = 1
try:
    while True:
        log.emit(new_event("session.command", details={{"command": "x" * 300}}))
        n += 1
except ChainError as exc:
    print(n, exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    written, _, message = out.stdout.strip().partition(" ")
    assert "cannot write audit log" in message
    result = verify(log)
    assert result.ok and result.count == int(written)
    assert log.read_bytes().endswith(b"}\n")


def test_fsync_mode_group_commits_concurrent_appends(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    with ChainLog(log, fsync=True) as chain:

        def worker(k: int) -> None:
            for i in range(50):
                chain.emit(new_event("session.command", details={"command": f"{k}-{i}"}))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert chain.synced_seq == chain.seq == 200
    assert verify(log).ok and verify(log).count == 200


def test_a_line_cut_by_a_crash_is_dropped_on_reopen_and_ignored_by_verify(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    _fill(log, 3)
    with open(log, "ab") as f:
        f.write(b'{"ChainSeq":4,"EventType":"user.lo')  # the writer died mid-line
    assert verify(log).ok and verify(log).count == 3  # as a live verify would see it
    _fill(log, 2)
    result = verify(log)
    assert result.ok and result.count == 5
