"""One quick benchmark section run as ``./run bench`` runs it: ``python -m bench --quick
--only SECTION`` in a process of its own, its results file read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_section(tmp: Path, section: str, timeout_s: float) -> dict[str, Any]:
    """The results document of ``section``'s quick run in ``tmp`` (the run must succeed
    and leave no scratch directory behind)."""
    out = tmp / "results.json"
    argv = [sys.executable, "-m", "bench", "--quick", "--only", section]
    proc = subprocess.run(
        [*argv, "--out", str(out), "--work", str(tmp / "w")],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp / "w").exists(), "the scratch directory is removed after the run"
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc
