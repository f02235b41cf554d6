"""The analyzer console language and the generated analyzer files (pure, no sockets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from labsim.datatree import QC_HEADER, write_analyzer_tree
from labsim.model import Instrument
from labsim.shell import MAX_LOG_LINES, AnalyzerConsole

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@pytest.fixture
def console(tmp_path: Path) -> AnalyzerConsole:
    files = write_analyzer_tree(tmp_path / "a", name="cobas-c503-1", model="Roche cobas c 503")
    now = iter([T0, T0 + timedelta(seconds=42), T0 + timedelta(seconds=50)])
    return AnalyzerConsole(
        name="cobas-c503-1", model="Roche cobas c 503", files=files, clock=lambda: next(now)
    )


def test_generated_files_are_deterministic(tmp_path: Path) -> None:
    """Two trees for the same instrument are identical; another instrument differs."""
    a = write_analyzer_tree(tmp_path / "a", name="cobas-c503-1", model="m")
    b = write_analyzer_tree(tmp_path / "b", name="cobas-c503-1", model="m")
    c = write_analyzer_tree(tmp_path / "c", name="cobas-c503-2", model="m")
    assert a.qc.read_text() == b.qc.read_text() != c.qc.read_text()
    assert a.qc.name == "2026-11-qc.csv"
    assert a.qc.read_text().splitlines()[0] == QC_HEADER
    assert a.config.read_text().count("[instrument]") == 1


def test_status_reports_uptime_from_the_injected_clock(console: AnalyzerConsole) -> None:
    console.term_size = (100, 30)
    reply = console.run("status")
    assert "uptime     : 42s" in reply.text
    assert "terminal   : 100x30" in reply.text


def test_show_log_limits_and_validates_the_count(console: AnalyzerConsole) -> None:
    """`show log n` prints the last n lines, never more than MAX_LOG_LINES."""
    with console.files.log.open("a") as fh:
        fh.writelines(f"line {i}\n" for i in range(300))
    assert console.run("show log 3").text.splitlines() == ["line 297", "line 298", "line 299"]
    assert len(console.run("show log 100000").text.splitlines()) == MAX_LOG_LINES
    assert console.run("show log ten").status == 2


def test_calibrate_accepts_known_assays_only(console: AnalyzerConsole) -> None:
    """Unknown assays are refused and leave the log unchanged."""
    before = console.files.log.read_text()
    assert console.run("calibrate XYZ").status == 2
    assert console.files.log.read_text() == before
    assert console.run("calibrate crea").text.startswith("calibrating CREA")
    assert console.files.log.read_text().endswith(
        "[CALIB] CREA calibration accepted, factor 1.012\n"
    )


def test_exit_ends_the_session_and_blank_lines_do_nothing(console: AnalyzerConsole) -> None:
    assert console.run("exit").close
    assert console.run("   ").text == ""
    assert "show qc" in console.run("help").text


def test_known_hosts_line_pins_the_host_key() -> None:
    inst = Instrument(
        name="x", host="127.0.0.1", ports=(2222,), protocol="ssh", department="d",
        model="m", backend="asyncssh", host_key="ssh-ed25519 AAAAC3Nz comment",
    )  # fmt: skip
    assert inst.known_hosts_line() == "[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nz"
