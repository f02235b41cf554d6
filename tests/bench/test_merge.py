"""``python -m bench --merge``: a partial run updates the results file without losing the
figures, notes and load averages of the sections it did not run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.report import Results

ROOT = Path(__file__).resolve().parents[2]


def _full_run(path: Path) -> dict[str, Any]:
    """An earlier full run: data path, scale and audit figures, one of them missing."""
    res = Results("full")
    res.info["machine"] = {"loadavg_at_start": [1.0, 1.0, 1.0], "loadavg_at_end": [2.0, 2.0, 2.0]}
    res.info["section_seconds"] = {"throughput": 10.0, "scale": 300.0}
    res.put("throughput_recorded_MBps", 75.2)
    res.put("throughput_openssh_chain_MBps", 84.2)
    res.put("session_opens_per_s", 105.6)
    res.put("audit_append_per_s", 55083.0, 0)
    res.missing(["echo_p99_ms_at_50_sessions"], "the deployed section was not run")
    res.notes.append("audit_append_per_s measured with the chain on tmpfs")
    return res.write(path)


def _partial_run(path: Path, merge: bool) -> dict[str, Any]:
    """A later run of the deployed section only."""
    res = Results("full")
    res.info["machine"] = {"loadavg_at_start": [9.5, 8.0, 6.0], "loadavg_at_end": [9.9, 9.0, 7.0]}
    res.info["bench_broker"] = "hoshu serve"

    def deployed() -> None:
        res.put("echo_p99_ms_at_50_sessions", 80.0, 4)
        res.put("broker_cpu_s_per_GB_recorded", 30.0)
        res.put("sshd_cpu_s_per_GB_chain", 5.0)
        res.notes.append("echo_p99_ms_at_50_sessions measured beside a CI run")

    def broken() -> None:
        raise RuntimeError("no PostgreSQL")

    res.section("concurrency (sqlite)", ["echo_p99_ms_at_50_sessions"], deployed)
    res.section("audit durable chain", ["audit_append_per_s"], broken)
    return res.write(path, merge=merge)


def test_a_partial_run_replaces_only_what_it_measured(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    _full_run(path)
    doc = _partial_run(path, merge=True)
    assert json.loads(path.read_text()) == doc
    # measured now: the new figures, their ratio and verdict
    assert doc["echo_p99_ms_at_50_sessions"] == 80.0
    assert doc["ratios"]["broker_cpu_vs_sshd_per_GB"] == 6.0
    assert doc["targets"]["broker_cpu_per_GB"]["met"] is False
    assert doc["targets"]["echo_p99_at_50_sessions"]["met"] is False
    assert doc["bench_broker"] == "hoshu serve"
    # not measured now: the earlier figures stay, with their ratios and verdicts
    assert doc["throughput_recorded_MBps"] == 75.2
    assert doc["ratios"]["recorded_vs_chain"] == 0.893
    assert doc["channel_opens_per_s"] == doc["session_opens_per_s"] == 105.6
    # a section that failed now does not wipe the earlier figure
    assert doc["audit_append_per_s"] == 55083.0
    assert doc["targets"]["audit_append"]["met"] is True
    # the note about the figure measured anew is gone; the others stay; the new ones join
    notes = doc["notes"]
    assert not any("the deployed section was not run" in n for n in notes)
    assert "audit_append_per_s measured with the chain on tmpfs" in notes
    assert "echo_p99_ms_at_50_sessions measured beside a CI run" in notes
    assert any("no PostgreSQL" in n and n.endswith("from an earlier run)") for n in notes)
    # a figure the partial run had no section for is not called missing
    assert not any("throughput_recorded_MBps" in n for n in notes)
    # the load of each run and of each section the new run ran
    assert [r["loadavg_at_start"] for r in doc["runs"]] == [[1.0, 1.0, 1.0], [9.5, 8.0, 6.0]]
    conc = doc["sections"]["concurrency (sqlite)"]
    assert len(conc["loadavg_at_start"]) == 3 and len(conc["loadavg_at_end"]) == 3
    assert conc["notes"] == ["echo_p99_ms_at_50_sessions measured beside a CI run"]
    assert any("no PostgreSQL" in n for n in doc["sections"]["audit durable chain"]["notes"])
    assert doc["section_seconds"]["scale"] == 300.0
    assert "concurrency (sqlite)" in doc["section_seconds"]


def test_merging_twice_keeps_every_section_and_run(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    _full_run(path)
    _partial_run(path, merge=True)
    doc = _partial_run(path, merge=True)
    assert len(doc["runs"]) == 3
    assert set(doc["sections"]) == {"concurrency (sqlite)", "audit durable chain"}
    assert doc["throughput_recorded_MBps"] == 75.2


def test_without_merge_a_partial_run_writes_only_its_own_figures(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    _full_run(path)
    doc = _partial_run(path, merge=False)
    assert doc["throughput_recorded_MBps"] is None
    assert "runs" not in doc


def test_merge_into_a_missing_file_writes_the_run(tmp_path: Path) -> None:
    doc = _partial_run(tmp_path / "new.json", merge=True)
    assert doc["echo_p99_ms_at_50_sessions"] == 80.0
    assert doc["throughput_recorded_MBps"] is None


def test_the_command_line_merges_a_partial_run(tmp_path: Path) -> None:
    """``python -m bench --quick --only audit --merge``: the audit figures are replaced, the
    data path figure written before stays."""
    path = tmp_path / "results.json"
    _full_run(path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--only",
            "audit",
            "--merge",
            "--out",
            str(path),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(path.read_text())
    assert doc["throughput_recorded_MBps"] == 75.2
    assert doc["audit_append_per_s"] != 55083.0 and doc["audit_append_per_s"] > 0
    assert doc["sections"]["audit append"]["loadavg_at_start"]
    assert len(doc["runs"]) == 2 and doc["runs"][1]["mode"] == "quick"
    assert doc["mode"] == "merged"
