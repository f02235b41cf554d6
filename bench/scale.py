"""Scale: idle gateways held by one broker process, its memory, a restart.

The broker (:mod:`bench.scale_broker`) and the gateways
(:mod:`bench.scale_gateways`, one client process per step) are separate
processes on loopback.  Steps add gateways until 1,000, 5,000 and 10,000 are
connected (the file-descriptor limit permitting); at each step the broker's
resident memory is read from ``/proc``.  At the largest step the broker opens
channels through random tunnels to an instrument service (``channel_opens_per_s``,
formerly ``session_opens_per_s``: both are written), then it is killed and started
again, and the time until every gateway is connected again is measured.  hoshu's own
tunnel endpoint takes one last step at ``Sizes.gateways_required`` (10,000).
Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.openssh_chain import start_source
from bench.report import Results
from bench.sizes import Sizes
from bench.sshd import BenchError, free_port

KEYS = [
    "gateways_connected",
    "broker_rss_MiB_at_max_gateways",
    "reconnect_all_s",
    "channel_opens_per_s",  # also written as session_opens_per_s, its earlier name
]
STEP_DEADLINE = 300.0
STEP_DEADLINE_REAL = 150.0
CPU_SAMPLE_S = 5.0  # 1 s for quick-mode steps (under 100 gateways)
RAMP_PER_S = 150.0  # first connections of a step: gateways started per second, in all
PER_PROCESS_REAL = 2500  # each hoshu gateway holds ~4 descriptors (socket, audit chain)
RECONNECT_DEADLINE = 180.0
ENROL_DEADLINE = 900.0  # the first start of a store-backed broker enrols every gateway
ROOT = str(Path(__file__).resolve().parent.parent)


class Proc:
    """A child speaking a line protocol on stdin/stdout, with read deadlines."""

    def __init__(self, argv: list[str]) -> None:
        self.name = argv[2]
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            cwd=ROOT,
            text=True,
            bufsize=1,
        )

    def ask(self, line: str | None, timeout: float = 60.0) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        if line is not None:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not ready:
            raise BenchError(f"no answer from {self.name} within {timeout:.0f} s")
        answer = self.p.stdout.readline()
        if not answer:
            raise BenchError(f"{self.name} exited ({self.p.poll()})")
        return answer.strip()

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.p.pid}/status").read_text()
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise BenchError("no VmRSS")

    def stop(self, kill: bool = False) -> None:
        if self.p.poll() is None:
            if kill:
                self.p.kill()
            else:
                try:
                    assert self.p.stdin is not None
                    self.p.stdin.write("quit\n")
                    self.p.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)


def _broker(port: int, gateways: int, target: int, real: Path | None) -> Proc:
    """The broker process; hoshu's endpoint (``real``) over a SQLite store in ``real``,
    which enrols the gateways it lacks before it answers ready."""
    store = ["--store", f"sqlite:///{real / 'store.sqlite'}"] if real else []
    b = Proc(
        [
            sys.executable,
            "-m",
            "bench.scale_broker",
            "--port",
            str(port),
            "--gateways",
            str(gateways),
            "--target-port",
            str(target),
            *(["--real", str(real)] if real else []),
            *store,
        ]
    )
    if json.loads(b.ask(None, ENROL_DEADLINE if real else 120)).get("ready") is not True:
        raise BenchError("the broker did not start")
    return b


def _connected(b: Proc) -> int:
    return int(json.loads(b.ask("count"))["connected"])


def _wait_connected(b: Proc, want: int, deadline_s: float) -> tuple[int, float]:
    t0 = time.monotonic()
    n = _connected(b)
    while n < want and time.monotonic() - t0 < deadline_s:
        time.sleep(0.25)
        n = _connected(b)
    return n, time.monotonic() - t0


def feasible_steps(steps: tuple[int, ...], res: Results) -> list[int]:
    """Drop steps the file-descriptor limit cannot hold (broker: one per gateway)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    ok = [s for s in steps if s + 200 <= limit]
    if len(ok) < len(steps):
        res.notes.append(
            f"scale: steps {[s for s in steps if s not in ok]} skipped: the "
            f"file-descriptor hard limit is {limit}"
        )
    return ok


def real_available() -> bool:
    from bench.hoshu_path import missing_parts

    return not missing_parts()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(res: Results, sizes: Sizes, work: Path, listener: str = "auto") -> None:
    """hoshu's tunnel endpoint with hoshu gateway agents (the figures), and the bare
    asyncssh listener with minimal clients (the floor), as far as each is available."""
    real = listener == "real" or (listener == "auto" and real_available())
    res.info["scale"] = {}
    # the requirement's count (10,000) is the last step, unless --max-gateways caps below it
    steps_real = sizes.gateway_steps_real
    if sizes.gateways_required <= max(sizes.gateway_steps):
        steps_real = tuple(sorted({*steps_real, sizes.gateways_required}))
    if real:
        res.section(
            "scale: hoshu tunnel endpoint",
            KEYS,
            lambda: one_run(res, steps_real, sizes, work / "real", real=True, suffix=""),
        )
    if listener == "minimal" or (listener == "auto" and not real):
        res.section(
            "scale: bare asyncssh",
            KEYS,
            lambda: one_run(
                res, sizes.gateway_steps, sizes, work / "minimal", real=False, suffix=""
            ),
        )
    elif listener == "auto":
        floor = [k + "_asyncssh_floor" for k in KEYS]
        res.section(
            "scale: bare asyncssh floor",
            floor,
            lambda: one_run(
                res,
                sizes.gateway_steps,
                sizes,
                work / "minimal",
                real=False,
                suffix="_asyncssh_floor",
            ),
        )


def one_run(
    res: Results, wanted: tuple[int, ...], sizes: Sizes, work: Path, *, real: bool, suffix: str
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    broker_dir = work / "broker" if real else None
    steps = feasible_steps(wanted, res)
    if not steps:
        res.missing([k + suffix for k in KEYS], "the file-descriptor limit allows no step")
        return
    top = steps[-1]
    banner = work / "banner.txt"
    banner.write_bytes(b"SSH-2.0-instrument\r\n")
    source_procs: list[subprocess.Popen[bytes]] = []
    clients: list[Proc] = []
    broker: Proc | None = None
    port = free_port()
    deadline = STEP_DEADLINE_REAL if real else STEP_DEADLINE
    info: dict[str, Any] = {
        "listener": (
            "hoshu tunnel endpoint (broker.tunnel.endpoint) over the store's gateway "
            "directory (SQLite) + hoshu gateway agents"
            if real
            else "minimal asyncssh listen_reverse (bench.scale_broker) + minimal "
            "connect_reverse clients"
        ),
        "steps": {},
    }
    res.info["scale"]["real" if real else "minimal"] = info

    def put(key: str, value: float | int | None, nd: int = 1) -> None:
        res.put(key + suffix, value, nd)

    try:
        target = start_source(banner, source_procs)
        broker = _broker(port, top, target, broker_dir)
        info["broker_rss_MiB_idle"] = round(broker.rss_mib(), 1)
        have = 0
        for step in steps:
            per_proc = PER_PROCESS_REAL if real else step
            firsts = range(have, step, per_proc)
            for first in firsts:
                count = min(per_proc, step - first)
                clients.append(
                    Proc(
                        [
                            sys.executable,
                            "-m",
                            "bench.scale_gateways",
                            "--port",
                            str(port),
                            "--first",
                            str(first),
                            "--count",
                            str(count),
                            "--allowed-port",
                            str(target),
                            "--ramp",
                            str(RAMP_PER_S / len(firsts)),
                            *(["--real", str(work / "gateways")] if real else []),
                        ]
                    )
                )
            have = step
            n, took = _wait_connected(broker, step, deadline)
            c0, t0 = cpu_seconds(broker.p.pid), time.monotonic()
            time.sleep(CPU_SAMPLE_S if step >= 100 else 1.0)
            cpu = 100 * (cpu_seconds(broker.p.pid) - c0) / (time.monotonic() - t0)
            n = max(n, _connected(broker))
            rss = broker.rss_mib()
            info["steps"][str(step)] = {
                "connected": n,
                "connect_s": round(took, 1),
                "broker_rss_MiB": round(rss, 1),
                "broker_cpu_pct_idle": round(cpu, 1),
            }
            if n < step:  # the figures "at <step> gateways" would be false: not recorded
                res.missing(
                    [f"broker_rss_MiB_at_{step}_gateways{suffix}"],
                    f"only {n} of {step} gateways were connected",
                )
                put(f"broker_rss_MiB_at_{n}_of_{step}_gateways", rss)
                if step == 5000 and not suffix:
                    res.failed["broker_rss_5000"] = f"only {n} of 5,000 gateways connected"
            else:
                put(f"broker_rss_MiB_at_{step}_gateways", rss)
                put(f"broker_cpu_pct_at_{step}_gateways", cpu)
                put("gateways_connected", n, 0)
                put("broker_rss_MiB_at_max_gateways", rss)
            if n < step:
                res.notes.append(
                    f"scale{suffix}: only {n} of {step} gateways were connected "
                    f"{deadline:.0f} s after they were started; larger steps "
                    "were not attempted"
                )
                top = n
                break
        for conc in (1, 16):
            r = json.loads(broker.ask(f"opens {sizes.scale_session_opens} {conc}", 120))
            rate = (r["opens"] - r["errors"]) / r["seconds"]
            put("channel_opens_per_s" if conc == 16 else "channel_opens_sequential_per_s", rate)
            if r["errors"]:
                res.notes.append(
                    f"scale{suffix}: {r['errors']} of {r['opens']} channel opens "
                    f"failed (concurrency {conc})"
                )
        t_kill = time.monotonic()
        broker.stop(kill=True)
        broker = _broker(port, max(steps), target, broker_dir)
        t_ready = time.monotonic()
        n, took = _wait_connected(broker, top, RECONNECT_DEADLINE)
        info["restart_to_ready_s"] = round(t_ready - t_kill, 2)
        info["reconnect_gateways"] = top
        info["reconnected"] = n
        if n >= top:
            put("reconnect_all_s", took, 2)
            put(f"reconnect_all_s_at_{top}_gateways", took, 2)
            put("reconnect_all_from_kill_s", time.monotonic() - t_kill, 2)
        else:
            why = (
                f"only {n} of {top} gateways reconnected within "
                f"{RECONNECT_DEADLINE:.0f} s of the broker restart"
            )
            res.missing([f"reconnect_all_s{suffix}"], why)
            if not suffix:
                res.failed["reconnect_all"] = why
        put("broker_rss_MiB_after_reconnect", broker.rss_mib())
    finally:
        for c in clients:
            c.stop()
        if broker is not None:
            broker.stop()
        for p in source_procs:
            p.terminate()
            p.wait(timeout=10)
