"""Data-path measurements: OpenSSH direct, the OpenSSH chain, and hoshu.

All paths reach the same instrument ``sshd`` and the same byte source, with
the same client, cipher and probes (:mod:`bench.probes`), in one run.
"""

from __future__ import annotations

import contextlib
import statistics
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench import hoshu_path, probes
from bench.hoshu_path import HoshuLab
from bench.openssh_chain import OpenSSHLab, openssh_lab
from bench.report import Results
from bench.sizes import Sizes
from bench.sshd import have_openssh

OPENSSH_KEYS = [
    "throughput_openssh_direct_MBps",
    "throughput_openssh_chain_MBps",
    "throughput_openssh_chain_forward_MBps",
    "throughput_openssh_direct_forward_MBps",
    "session_open_openssh_chain_s",
    "session_open_openssh_direct_s",
    "echo_p50_openssh_chain_ms",
    "echo_p99_openssh_chain_ms",
    "echo_p50_openssh_direct_ms",
    "echo_p99_openssh_direct_ms",
]
HOSHU_KEYS = [
    "throughput_forward_MBps",
    "throughput_recorded_MBps",
    "session_open_s",
    "session_open_p95_s",
    "echo_p50_ms",
    "echo_p99_ms",
]


class Paths:
    """The measurements of every available path, interleaved so that the load other
    work puts on the machine falls on all paths alike."""

    def __init__(
        self,
        res: Results,
        sizes: Sizes,
        lab: OpenSSHLab,
        hl: HoshuLab | None,
        hoshu_suffix: str,
        with_openssh: bool,
    ) -> None:
        self.res, self.sizes, self.lab, self.hl = res, sizes, lab, hl
        self.sfx = hoshu_suffix
        self.openssh = with_openssh
        self.samples: dict[str, list[float]] = {}
        self.failed: dict[str, str] = {}

    def attempt(self, key: str, fn: Callable[[], float]) -> None:
        """Take one sample of ``key``; a failure is noted and the key left unmeasured."""
        if key in self.failed:
            return
        try:
            self.samples.setdefault(key, []).append(fn())
        except Exception as exc:  # reported; the other paths go on
            traceback.print_exc()
            self.failed[key] = f"{type(exc).__name__}: {exc}"

    def hoshu_cat(self) -> float:
        assert self.hl is not None
        argv, env = self.hl.login("cat", str(self.lab.payload))
        return probes.command_throughput(argv, self.sizes.throughput_bytes, env=env)

    def hoshu_open(self) -> float:
        assert self.hl is not None
        argv, env = self.hl.login("echo", "ok")
        return probes.first_byte_time(argv, env=env)

    def throughput(self) -> None:
        n, lab = self.sizes.throughput_bytes, self.lab
        payload = str(lab.payload)
        for _ in range(self.sizes.throughput_runs):
            if self.openssh:
                self.attempt(
                    "throughput_openssh_chain_MBps",
                    lambda: probes.command_throughput(lab.chain("cat", payload), n),
                )
            if self.hl is not None:
                self.attempt(f"throughput_recorded_MBps{self.sfx}", self.hoshu_cat)
            if self.openssh:
                self.attempt(
                    "throughput_openssh_direct_MBps",
                    lambda: probes.command_throughput(lab.direct("cat", payload), n),
                )
        forwards: list[tuple[str, Callable[[], contextlib.AbstractContextManager[int]]]] = []
        if self.openssh:
            forwards.append(("throughput_openssh_chain_forward_MBps", partial(lab.forward, True)))
        if self.hl is not None:
            forwards.append((f"throughput_forward_MBps{self.sfx}", self.hl.forward))
        if self.openssh:
            forwards.append(("throughput_openssh_direct_forward_MBps", partial(lab.forward, False)))
        for _ in range(self.sizes.throughput_runs):
            for key, opener in forwards:

                def one(
                    opener: Callable[[], contextlib.AbstractContextManager[int]] = opener,
                ) -> float:
                    with opener() as port:
                        return probes.forward_throughput(port, n)

                self.attempt(key, one)

    def opens(self) -> None:
        for _ in range(self.sizes.session_opens):
            if self.openssh:
                self.attempt(
                    "session_open_openssh_chain_s",
                    lambda: probes.first_byte_time(self.lab.chain("echo", "ok")),
                )
            if self.hl is not None:
                self.attempt(f"session_open_s{self.sfx}", self.hoshu_open)
            if self.openssh:
                self.attempt(
                    "session_open_openssh_direct_s",
                    lambda: probes.first_byte_time(self.lab.direct("echo", "ok")),
                )

    def echo(self) -> None:
        k = self.sizes.echo_samples
        if self.openssh:
            self.attempt(
                "echo_openssh_chain",
                lambda: _echo(self.res, "_openssh_chain", self.lab.chain("cat", tty=True), k),
            )
        if self.hl is not None:
            hl = self.hl

            def hoshu() -> float:
                argv, env = hl.login("cat", tty=True)
                return _echo(self.res, self.sfx, argv, k, env)

            self.attempt(f"echo{self.sfx}", hoshu)
        if self.openssh:
            self.attempt(
                "echo_openssh_direct",
                lambda: _echo(self.res, "_openssh_direct", self.lab.direct("cat", tty=True), k),
            )

    def record(self) -> None:
        res = self.res
        for key, values in self.samples.items():
            if key.endswith("_MBps") or key.endswith("_MBps" + self.sfx):
                res.put(key, statistics.fmean(values), 1)
                res.info.setdefault("throughput_runs_MBps", {})[key] = [round(v, 1) for v in values]
            elif key.startswith("session_open"):
                res.put(key, statistics.median(values), 4)
                p95 = key.replace("session_open_", "session_open_p95_", 1)
                res.put(p95, probes.percentile(values, 95), 4)
        for key, why in self.failed.items():
            if key.startswith("echo"):
                part = key[4:]
                names = (
                    [f"echo_p50{part}_ms", f"echo_p99{part}_ms"]
                    if part.startswith("_open")
                    else [f"echo_p50_ms{part}", f"echo_p99_ms{part}"]
                )
            elif key.startswith("session_open"):
                names = [key, key.replace("session_open_", "session_open_p95_", 1)]
            else:
                names = [key]
            res.missing(names, why)


def _echo(
    res: Results, suffix: str, argv: list[str], samples: int, env: dict[str, str] | None = None
) -> float:
    s = probes.summarize(probes.echo_round_trips(argv, samples, env=env))
    res.put(
        f"echo_p50_ms{suffix}" if not suffix.startswith("_openssh") else f"echo_p50{suffix}_ms",
        s.p50 * 1000,
        4,
    )
    res.put(
        f"echo_p99_ms{suffix}" if not suffix.startswith("_openssh") else f"echo_p99{suffix}_ms",
        s.p99 * 1000,
        4,
    )
    return s.p99


def run(
    res: Results,
    sizes: Sizes,
    work: Path,
    *,
    with_openssh: bool,
    with_hoshu: bool,
    hoshu_mode: str = "auto",
    profile: Path | None = None,
) -> None:
    reason = have_openssh()
    keys = (OPENSSH_KEYS if with_openssh else []) + (HOSHU_KEYS if with_hoshu else [])
    if reason:
        res.missing(keys, reason)
        return
    payload = probes.make_payload(work / "payload.txt", sizes.throughput_bytes)
    res.info["payload"] = {
        "bytes": sizes.throughput_bytes,
        "content": "base64 text lines",
        "remote_command": "cat <payload>",
    }

    def body() -> None:
        with openssh_lab(work / "openssh", payload) as lab:
            started: list[HoshuLab] = []
            sfx = ""
            if with_hoshu:
                sfx = hoshu_path.suffix_for(hoshu_mode)
                res.section(
                    "hoshu start",
                    HOSHU_KEYS,
                    lambda: started.append(
                        hoshu_path.start(
                            res, sizes, lab, work / "hoshu", mode=hoshu_mode, profile=profile
                        )
                    ),
                )
            hl = started[0] if started else None
            paths = Paths(res, sizes, lab, hl, sfx, with_openssh)
            try:
                res.section("throughput", keys, paths.throughput)
                res.section("session open", keys, paths.opens)
                res.section("echo", keys, paths.echo)
                paths.record()
                if hl is not None:
                    hoshu_path.check_recordings(res, hl, sizes, sfx)
            finally:
                if hl is not None:
                    hl.stop()

    res.section("data paths", keys, body)
