"""The benchmark's stdlib sampling profiler names where a process spends its time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import poll_sync

SAMPLER = Path(__file__).resolve().parents[2] / "bench" / "sampler"
BUSY = """
import time
def spin_here():
    end = time.monotonic() + 6
    while time.monotonic() < end:
        sum(range(1000))
spin_here()
"""


def test_the_sampler_counts_the_busy_function_of_a_serve_process(tmp_path: Path) -> None:
    out = tmp_path / "prof"
    env = {**os.environ, "PYTHONPATH": str(SAMPLER), "BENCH_SAMPLE_OUT": str(out)}
    proc = subprocess.Popen([sys.executable, "-c", BUSY, "serve"], env=env)
    try:
        found = poll_sync(lambda: sorted(tmp_path.glob("prof.*.json")), 20, "the first dump")
        doc = json.loads(found[0].read_text())
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert doc["samples"] > 100
    inclusive = dict(doc["inclusive"])
    assert inclusive.get("<string>:spin_here", 0) > 0.5 * (doc["samples"] - doc["idle"])
