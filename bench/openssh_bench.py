"""Data-path measurements: OpenSSH direct, the OpenSSH chain, and hoshu.

All paths reach the same instrument ``sshd`` and the same byte source, with
the same client, cipher and probes (:mod:`bench.probes`), in one run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import probes
from bench.openssh_chain import OpenSSHLab, openssh_lab
from bench.report import Results
from bench.sizes import Sizes
from bench.sshd import have_openssh

OPENSSH_KEYS = [
    "throughput_openssh_direct_MBps", "throughput_openssh_chain_MBps",
    "throughput_openssh_chain_forward_MBps", "throughput_openssh_direct_forward_MBps",
    "session_open_openssh_chain_s", "session_open_openssh_direct_s",
    "echo_p50_openssh_chain_ms", "echo_p99_openssh_chain_ms",
    "echo_p50_openssh_direct_ms", "echo_p99_openssh_direct_ms",
]
HOSHU_KEYS = [
    "throughput_forward_MBps", "throughput_recorded_MBps", "session_open_s",
    "session_open_p95_s", "echo_p50_ms", "echo_p99_ms",
]


def mean_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.fmean(fn() for _ in range(runs))


def measure_openssh(res: Results, sizes: Sizes, lab: OpenSSHLab) -> None:
    n, runs, payload = sizes.throughput_bytes, sizes.throughput_runs, str(lab.payload)
    res.put("throughput_openssh_direct_MBps",
            mean_of(runs, lambda: probes.command_throughput(lab.direct("cat", payload), n)), 1)
    res.put("throughput_openssh_chain_MBps",
            mean_of(runs, lambda: probes.command_throughput(lab.chain("cat", payload), n)), 1)
    for via_chain, key in ((True, "throughput_openssh_chain_forward_MBps"),
                           (False, "throughput_openssh_direct_forward_MBps")):
        with lab.forward(via_chain) as port:
            res.put(key, mean_of(runs, partial(probes.forward_throughput, port, n)), 1)
    for name, argv in (("chain", lab.chain), ("direct", lab.direct)):
        opens = [probes.first_byte_time(argv("echo", "ok")) for _ in range(sizes.session_opens)]
        res.put(f"session_open_openssh_{name}_s", statistics.median(opens), 4)
        res.put(f"session_open_p95_openssh_{name}_s", probes.percentile(opens, 95), 4)
        echo = probes.summarize(probes.echo_round_trips(argv("cat", tty=True),
                                                        sizes.echo_samples))
        res.put(f"echo_p50_openssh_{name}_ms", echo.p50 * 1000, 4)
        res.put(f"echo_p99_openssh_{name}_ms", echo.p99 * 1000, 4)


def run(res: Results, sizes: Sizes, work: Path, *, with_openssh: bool,
        with_hoshu: bool, hoshu_mode: str = "auto", profile: Path | None = None) -> None:
    reason = have_openssh()
    keys = (OPENSSH_KEYS if with_openssh else []) + (HOSHU_KEYS if with_hoshu else [])
    if reason:
        res.missing(keys, reason)
        return
    payload = probes.make_payload(work / "payload.txt", sizes.throughput_bytes)
    res.info["payload"] = {"bytes": sizes.throughput_bytes, "content": "base64 text lines",
                           "remote_command": "cat <payload>"}

    def body() -> None:
        with openssh_lab(work / "openssh", payload) as lab:
            if with_openssh:
                res.section("openssh", OPENSSH_KEYS, lambda: measure_openssh(res, sizes, lab))
            if with_hoshu:
                from bench import hoshu_path

                res.section("hoshu", HOSHU_KEYS,
                            lambda: hoshu_path.run(res, sizes, lab, work / "hoshu",
                                                   mode=hoshu_mode, profile=profile))

    res.section("openssh lab", keys, body)
