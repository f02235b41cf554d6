"""hoshu's data path: engineer ``ssh`` -> front door (MFA) -> tunnel -> gateway -> instrument.

Measured against the same instrument ``sshd`` and byte source as the OpenSSH
chain, with the same probes.  Until the SSH front door and the gateway agent
are part of the build, the figures are reported as not measured.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.openssh_chain import OpenSSHLab
from bench.report import Results
from bench.sizes import Sizes

KEYS = ["throughput_forward_MBps", "throughput_recorded_MBps", "session_open_s",
        "session_open_p95_s", "echo_p50_ms", "echo_p99_ms"]
NEEDED = ("broker.ssh.frontdoor", "broker.ssh.tunnel", "gateway.agent")


def missing_parts() -> list[str]:
    out = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            out.append(name)
    return out


def run(res: Results, sizes: Sizes, lab: OpenSSHLab, work: Path) -> None:
    absent = missing_parts()
    if absent:
        res.missing(KEYS, f"hoshu's data path is not in this build yet ({', '.join(absent)} "
                          "missing)")
        return
    res.missing(KEYS, "the benchmark harness does not yet drive the hoshu front door")
