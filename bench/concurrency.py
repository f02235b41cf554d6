"""Many recorded sessions at once through ``hoshu serve``, and many sign-ins at once.

At each level N (FULL: 1, 10, 50, 100) N sessions are live together through the
deployed broker (:mod:`bench.deployed`): ``max(1, N // 5)`` type keystrokes into
``cat`` in a pty (echo round trips, :func:`bench.probes.echo_round_trips`), the rest
(at least one) print a fixed number of bytes (a bulk transfer, recorded).  Figures:

* ``throughput_aggregate_MBps_at_N_sessions``: the bytes all bulk sessions deliver
  between the moment every one of them has started and the moment the first ends,
  over that window (the whole run's bytes over its span when the window is empty);
* ``echo_p50/p99_ms_at_N_sessions``: the keystrokes typed while the bulk runs;
* ``broker_cpu_s_per_GB_recorded_at_N_sessions``: CPU-seconds of the ``hoshu serve``
  process (``/proc/<pid>/stat``: user + system, with reaped children) per GB of
  session output it relayed and recorded;
* ``broker_rss_MiB_per_session``: (peak RSS while the largest level is live minus RSS
  before it) / its sessions;
* ``sshd_cpu_s_per_GB_chain``: the same CPU figure for the OpenSSH bastion ``sshd``
  (master and every child) of the chain (:mod:`bench.openssh_chain`), with 10 bulk
  sessions through ProxyJump and the reverse tunnel;
* ``logins_per_s_N_engineers``: N engineers (created and TOTP-enrolled first) sign in
  at once with password + TOTP on ``POST /v1/auth/login``.

Every session has a byte count and a deadline; a level that overruns is killed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pyotp

from bench import probes
from bench.report import Results
from bench.sshd import BenchError

if TYPE_CHECKING:
    from bench.deployed import Deployed, DeployedSizes

GB = 1e9
LEVEL_DEADLINE_S = 600.0
MIN_BULK_BYTES = 16_000_000
# the front door drops a connection while more than 20 from one address are still
# signing in (FrontDoorOptions.max_pending_per_source, a flood guard); every session
# here comes from 127.0.0.1, so at most this many are started and not yet flowing
MAX_SIGNING_IN = 12
ECHO_START_GAP_S = 0.25
ECHO_RETRIES = 5
ECHO_RETRY_S = 2.0
FLOOD_REFUSAL = "too many sign-ins in progress"
CHAIN_SESSIONS = 10


def level_keys(n: int) -> list[str]:
    return [
        f"throughput_aggregate_MBps_at_{n}_sessions",
        f"echo_p50_ms_at_{n}_sessions",
        f"echo_p99_ms_at_{n}_sessions",
        f"broker_cpu_s_per_GB_recorded_at_{n}_sessions",
    ]


KEYS = [
    *level_keys(50),
    "broker_cpu_s_per_GB_recorded",
    "sshd_cpu_s_per_GB_chain",
    "broker_rss_MiB_per_session",
    "logins_per_s_100_engineers",
]


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds incl. reaped children) of a live process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return int(fields[1]), ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants, each with its reaped children:
    a child that ends between two readings moves into its parent's count, so
    differences of this figure are what the tree spent."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    if pid not in stats:
        raise BenchError(f"process {pid} is gone")
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats[p][1]
        todo.extend(children.get(p, []))
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


@dataclass
class Bulk:
    """One bulk session read on a thread of its own."""

    argv: list[str]
    expected: int
    got: int = 0
    first: float | None = None
    end: float | None = None
    error: str = ""
    proc: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while data := os.read(fd, 1 << 20):
            if self.first is None:
                self.first = time.monotonic()
            self.got += len(data)
        self.end = time.monotonic()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        if self.got != self.expected:
            self.error = (
                f"{self.got} of {self.expected} bytes: {err.decode(errors='replace')[-300:]}"
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


@dataclass
class Level:
    sessions: int
    bulk_bytes: int
    aggregate_MBps: float
    echo_ms: list[float]
    cpu_s: float
    rss_before: float
    rss_peak: float
    echo_under_load: bool
    echo_sign_ins_refused: int = 0  # refused by the flood guard and tried again


def run_level(
    pid: int,
    bulk_argv: Any,
    echo_argv: list[str],
    n: int,
    level_bytes: int,
    samples: int,
    min_bulk: int = MIN_BULK_BYTES,
) -> Level:
    """N sessions at once: ``bulk_argv(nbytes)`` gives a bulk session's command line."""
    n_echo = max(1, n // 5)
    n_bulk = max(1, n - n_echo)
    per = max(level_bytes // n_bulk, min_bulk)
    rss_before, cpu0 = rss_mib(pid), tree_cpu_s(pid)
    bulks = [Bulk(bulk_argv(per), per) for _ in range(n_bulk)]
    deadline = time.monotonic() + LEVEL_DEADLINE_S
    echoes: list[list[float]] = []
    errors: list[str] = []
    echo_end: list[float] = []
    refused: list[int] = []

    def echo() -> None:
        # the flood guard refuses a sign-in while 20 from 127.0.0.1 are pending, and on a
        # loaded broker the bulk sessions' sign-ins can still be pending: the engineer is
        # told to try again shortly, and the harness does so, a bounded number of times
        for attempt in range(ECHO_RETRIES + 1):
            try:
                rtts = probes.echo_round_trips(echo_argv, samples, timeout=LEVEL_DEADLINE_S)
            except BenchError as exc:
                if FLOOD_REFUSAL in str(exc) and attempt < ECHO_RETRIES:
                    refused.append(attempt)
                    time.sleep(ECHO_RETRY_S)  # "try again shortly", as the refusal says
                    continue
                errors.append(str(exc))
            else:
                echoes.append(rtts)
            break
        echo_end.append(time.monotonic())

    try:
        for b in bulks:
            while (
                sum(1 for o in bulks if o.proc and o.first is None and o.end is None)
                >= MAX_SIGNING_IN
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)  # polling the reader threads: a start slot frees up
            b.start()
        # the window opens when every bulk session delivers (or one has already ended)
        while time.monotonic() < deadline:
            if all(b.first is not None for b in bulks) or any(b.end for b in bulks):
                break
            time.sleep(0.02)  # polling the reader threads' progress
        t_open, bytes_open = time.monotonic(), sum(b.got for b in bulks)
        threads = [threading.Thread(target=echo, daemon=True) for _ in range(n_echo)]
        for t in threads:
            t.start()
            time.sleep(ECHO_START_GAP_S)  # pacing the echo sessions' sign-ins (flood guard)
        rss_peak = rss_mib(pid)
        t_close: float | None = None
        bytes_close = 0
        while time.monotonic() < deadline:
            rss_peak = max(rss_peak, rss_mib(pid))
            if t_close is None and any(b.end for b in bulks):
                t_close, bytes_close = time.monotonic(), sum(b.got for b in bulks)
            if all(b.end for b in bulks) and not any(t.is_alive() for t in threads):
                break
            time.sleep(0.05)  # sampling RSS and the window while the sessions run
        else:
            raise BenchError(f"{n} sessions did not finish within {LEVEL_DEADLINE_S} s")
        for b in bulks:
            assert b.thread is not None
            b.thread.join(timeout=30)
    finally:
        for b in bulks:
            b.kill()
    failed = [b.error for b in bulks if b.error] + errors
    if failed:
        raise BenchError(f"{len(failed)} of {n} sessions failed: {failed[0]}")
    cpu = tree_cpu_s(pid) - cpu0
    if t_close is not None and t_close > t_open + 0.2 and bytes_close > bytes_open:
        aggregate = (bytes_close - bytes_open) / probes.MB / (t_close - t_open)
    else:
        starts = [b.first for b in bulks if b.first is not None]
        ends = [b.end for b in bulks if b.end is not None]
        aggregate = n_bulk * per / probes.MB / max(max(ends) - min(starts), 1e-6)
    return Level(
        sessions=n_echo + n_bulk,
        bulk_bytes=n_bulk * per,
        aggregate_MBps=aggregate,
        echo_ms=[x * 1000 for e in echoes for x in e],
        cpu_s=cpu,
        rss_before=rss_before,
        rss_peak=rss_peak,
        echo_under_load=t_close is None or max(echo_end, default=0) <= t_close,
        echo_sign_ins_refused=len(refused),
    )


def run(res: Results, d: Deployed, sizes: DeployedSizes, work: Path) -> None:
    from bench.deployed import bulk_command

    pid = d.broker_pid
    probes.first_byte_time(d.ssh("echo", "warm"))
    info: dict[str, Any] = {"store": d.store, "levels": {}}
    res.info["concurrency"] = info
    cpu_total, bytes_total = 0.0, 0
    largest: Level | None = None
    for n in sizes.levels:
        try:
            lv = run_level(
                pid,
                lambda nbytes: d.ssh(bulk_command(nbytes)),
                d.ssh("cat", tty=True),
                n,
                sizes.level_bytes,
                sizes.echo_samples,
                sizes.min_bulk_bytes,
            )
        except BenchError as exc:  # one level lost; the other levels and figures go on
            res.missing(level_keys(n), f"the level of {n} sessions failed: {exc}")
            info["levels"][str(n)] = {"failed": str(exc), "loadavg": list(os.getloadavg())}
            continue
        summary = probes.summarize(lv.echo_ms)
        res.put(f"throughput_aggregate_MBps_at_{n}_sessions", lv.aggregate_MBps)
        res.put(f"echo_p50_ms_at_{n}_sessions", summary.p50, 4)
        res.put(f"echo_p99_ms_at_{n}_sessions", summary.p99, 4)
        res.put(f"broker_cpu_s_per_GB_recorded_at_{n}_sessions", lv.cpu_s / (lv.bulk_bytes / GB))
        info["levels"][str(n)] = {
            "sessions_live": lv.sessions,
            "bulk_bytes": lv.bulk_bytes,
            "broker_cpu_s": round(lv.cpu_s, 2),
            "rss_MiB_before": round(lv.rss_before, 1),
            "rss_MiB_peak": round(lv.rss_peak, 1),
            "echo_samples": len(lv.echo_ms),
            "echo_all_under_bulk_load": lv.echo_under_load,
            "echo_sign_ins_refused_then_retried": lv.echo_sign_ins_refused,
            "loadavg": list(os.getloadavg()),
        }
        cpu_total += lv.cpu_s
        bytes_total += lv.bulk_bytes
        largest = lv
    at50 = res.figures.get("broker_cpu_s_per_GB_recorded_at_50_sessions")
    if at50 is not None or bytes_total:
        res.put(
            "broker_cpu_s_per_GB_recorded",
            at50 if at50 is not None else cpu_total / (bytes_total / GB),
        )
    if largest is not None:
        res.put(
            "broker_rss_MiB_per_session",
            max(largest.rss_peak - largest.rss_before, 0.0) / largest.sessions,
        )
    res.section("chain sshd CPU", ["sshd_cpu_s_per_GB_chain"], lambda: chain_cpu(res, sizes, work))
    res.section(
        "logins at once",
        [f"logins_per_s_{sizes.logins}_engineers"],
        lambda: logins(res, d, sizes.logins),
    )


def chain_cpu(res: Results, sizes: DeployedSizes, work: Path) -> None:
    """The bastion ``sshd``'s CPU per GB: CHAIN_SESSIONS bulk sessions through the chain."""
    from bench.deployed import bulk_command
    from bench.openssh_chain import openssh_lab

    work.mkdir(parents=True, exist_ok=True)
    payload = probes.make_payload(work / "payload.txt", 100_000)
    with openssh_lab(work / "chain", payload) as lab:
        lab.chain("true")
        probes.first_byte_time(lab.chain("echo", "warm"))
        n = CHAIN_SESSIONS
        per = max(sizes.level_bytes // n, 1)
        pid = lab.bastion.proc.pid
        cpu0 = tree_cpu_s(pid)
        bulks = [Bulk(lab.chain(bulk_command(per)), per) for _ in range(n)]
        try:
            for b in bulks:
                b.start()
            for b in bulks:
                assert b.thread is not None
                b.thread.join(timeout=LEVEL_DEADLINE_S)
        finally:
            for b in bulks:
                b.kill()
        failed = [b.error for b in bulks if b.error or b.end is None]
        if failed:
            raise BenchError(f"chain bulk session failed: {failed[0] or 'timed out'}")
        cpu = tree_cpu_s(pid) - cpu0
    res.put("sshd_cpu_s_per_GB_chain", cpu / (n * per / GB))
    res.info.setdefault("concurrency", {})["chain"] = {
        "sessions": n,
        "bytes": n * per,
        "bastion_sshd_cpu_s": round(cpu, 2),
    }


def logins(res: Results, d: Deployed, n: int) -> None:
    """``n`` engineers, created and enrolled first, sign in at once with password + TOTP."""
    api = d.demo.api
    admin = json.loads((d.demo.root / "users" / "admin" / "token.json").read_text())
    headers = {"Authorization": f"Bearer {admin['access_token']}"}
    password = "Bench-Engineer-Login-2026"

    def enrol(i: int) -> tuple[str, str]:
        name = f"bench-eng-{i:03d}"
        with httpx.Client(base_url=api, timeout=120) as http:
            http.post(
                "/v1/users",
                headers=headers,
                json={
                    "name": name,
                    "full_name": f"Bench Engineer {i}",
                    "org": "acme-labs",
                    "roles": ["engineer"],
                    "password": password,
                },
            ).raise_for_status()
            first = http.post("/v1/auth/login", json={"username": name, "password": password})
            first.raise_for_status()
            bearer = {"Authorization": f"Bearer {first.json()['access_token']}"}
            uri = http.post("/v1/auth/totp/enroll", headers=bearer)
            uri.raise_for_status()
            secret = pyotp.parse_uri(uri.json()["otpauth_uri"]).secret
            done = http.post(
                "/v1/auth/totp/confirm",
                headers=bearer,
                json={"code": pyotp.TOTP(secret).now()},
            )
            if done.status_code != 200:
                raise BenchError(f"TOTP confirmation of {name}: {done.status_code} {done.text}")
        return name, secret

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        codes = dict(pool.map(enrol, range(n)))
    barrier = threading.Barrier(n)

    def sign_in(name: str) -> tuple[float, int]:
        with httpx.Client(base_url=api, timeout=120) as http:
            barrier.wait(timeout=60)
            t0 = time.monotonic()
            # the next step's code, as a phone a few seconds ahead shows: the broker takes
            # it for up to 60 s, long enough for a queue of 100 password checks
            code = pyotp.TOTP(codes[name]).at(time.time() + 30)
            r = http.post(
                "/v1/auth/login",
                json={"username": name, "password": password, "totp_code": code},
            )
            return t0, r.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(sign_in, codes))
    took = time.monotonic() - min(t for t, _ in answers)
    refused = [status for _, status in answers if status != 200]
    # every engineer had the right password and code: a refusal is the broker's failure
    res.put(f"logins_failed_{n}_engineers", len(refused))
    if len(refused) == n:
        raise BenchError(f"every sign-in failed (HTTP {sorted(set(refused))})")
    res.put(f"logins_per_s_{n}_engineers", (n - len(refused)) / took)
    res.info.setdefault("concurrency", {})["logins"] = {
        "engineers": n,
        "seconds": round(took, 3),
        "failed_http_status": sorted(set(refused)),
        "loadavg": list(os.getloadavg()),
    }
