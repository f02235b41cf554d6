"""The benchmark harness runs end to end in quick mode and writes a complete results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import hoshu_path, pg
from bench.openssh_bench import OPENSSH_KEYS
from bench.report import REQUIRED_KEYS, TARGETS
from bench.sshd import have_openssh

ROOT = Path(__file__).resolve().parents[2]
# the quick benchmark runs once for the module (a whole broker, gateway and sshd): its
# set-up needs more than the suite's default per-test limit on a busy machine
pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--work", str(tmp / "work")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp / "work").exists(), "the scratch directory is removed after the run"
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _noted(doc: dict[str, Any], key: str) -> bool:
    return any(key in note and note.startswith("not measured") for note in doc["notes"])


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_every_required_figure_is_a_number_or_explained(quick_results: dict[str, Any]) -> None:
    """Each required key is present; a null figure always has a 'not measured' note."""
    for key in REQUIRED_KEYS:
        assert key in quick_results, key
        value = quick_results[key]
        assert _number(value) or (value is None and _noted(quick_results, key)), key


def test_openssh_side_is_measured_where_openssh_runs(quick_results: dict[str, Any]) -> None:
    """Direct OpenSSH and the bastion + reverse tunnel chain give positive figures."""
    reason = have_openssh()
    for key in OPENSSH_KEYS:
        if reason is None:
            assert _number(quick_results[key]) and quick_results[key] > 0, key
        else:
            assert _noted(quick_results, key), key


def test_scale_and_audit_figures_are_measured(quick_results: dict[str, Any]) -> None:
    """Gateways connect, the broker's memory is read, appends and SQLite queries are timed."""
    assert quick_results["gateways_connected"] == 20
    assert quick_results["broker_rss_MiB_at_max_gateways"] > 0
    assert quick_results["reconnect_all_s"] >= 0
    assert quick_results["session_opens_per_s"] > 0
    assert quick_results["audit_append_per_s"] > 0
    assert quick_results["audit_query_p95_ms_sqlite"] >= quick_results["audit_query_p50_ms_sqlite"]
    if pg.unavailable() is None:
        assert quick_results["audit_query_p95_ms_postgres"] > 0


def test_ratios_targets_and_machine_are_reported(quick_results: dict[str, Any]) -> None:
    """Ratios are derived from the figures; every target has a verdict; the machine is named."""
    direct = quick_results["throughput_openssh_direct_MBps"]
    chain = quick_results["throughput_openssh_chain_MBps"]
    if direct and chain:
        assert quick_results["ratios"]["chain_vs_direct"] == pytest.approx(chain / direct, rel=0.01)
    assert set(quick_results["targets"]) == {t.name for t in TARGETS}
    for verdict in quick_results["targets"].values():
        assert verdict["met"] in (True, False, None)
        if verdict["value"] is None:
            assert verdict["met"] is None
    assert quick_results["mode"] == "quick"
    assert quick_results["cipher"] == "aes128-gcm@openssh.com"
    assert quick_results["machine"]["cpus"] >= 1
    assert quick_results["sizes"]["throughput_bytes"] > 0


def test_hoshu_data_path_is_measured_through_front_door_tunnel_and_gateway(
    quick_results: dict[str, Any],
) -> None:
    """With the front door, tunnel and gateway in the build, hoshu's figures are real numbers."""
    absent = hoshu_path.missing_parts(("broker.frontdoor.door", *hoshu_path.TUNNEL_PARTS))
    for key in hoshu_path.KEYS:
        if not absent and have_openssh() is None:
            assert _number(quick_results[key]) and quick_results[key] > 0, key
        else:
            assert _noted(quick_results, key), key
    if not absent and have_openssh() is None:
        assert quick_results["hoshu"]["mode"] == "tunnel"
        assert quick_results["hoshu"]["recordings_tunnel"]["files"] >= 1
