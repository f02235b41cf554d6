"""Broker replicas as deployed: three real ``hoshu serve`` on one PostgreSQL.

The cluster is the replica tests' (:class:`tests.replicas.cluster.Cluster`): replica a
is the demo's broker, b and c share its keys, the demo's gateway is tunnelled to b and
c only, the instrument is the demo's real OpenSSH ``sshd``.  The engineer (tanaka)
signs in with password and TOTP (``hoshu login``), gets a short-lived SSH certificate
(``hoshu ssh-cert``) and then runs stock ``ssh`` with it, as a script would: every
session open is the whole path (front door, certificate, grant check, recording, the
tunnel or the peer link, the gateway, sshd) without asking for a code again.

Figures:

* ``replica_session_opens_per_s_1``: sessions (``ssh … true``) through replica b only,
  which holds a tunnel; ``replica_session_opens_per_s_3``: the same number spread over
  a, b and c (a forwards over the peer link), ``concurrency`` at a time;
* ``throughput_replica_local_MBps``: a recorded session's output (``head -c``) through
  b; ``throughput_replica_routed_MBps``: the same through a, whose bytes cross the
  peer link to b or c; ``replica_routed_vs_local`` their ratio;
* ``replica_failover_s``: SIGKILL of tunnel holder b, then new sessions through a until
  one succeeds (through c); ``replica_dead_detected_s``: until the database counts b's
  rows as gone (the bound is 15 s).

The PostgreSQL server is a throwaway one (:mod:`bench.pg`, fsync off).  Every loop is
bounded.
"""

from __future__ import annotations

import concurrent.futures
import io
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import pg
from bench.report import Results
from tests.replicas.cluster import Cluster
from tests.support.demoflow import request_approved, sign_in

KEYS = [
    "replica_session_opens_per_s_1",
    "replica_session_opens_per_s_3",
    "replica_session_open_p50_s_1",
    "replica_session_open_p50_s_3",
    "throughput_replica_local_MBps",
    "throughput_replica_routed_MBps",
    "replica_routed_vs_local",
    "replica_failover_s",
    "replica_dead_detected_s",
]
INSTRUMENT = "cobas-c503-1"
FAILOVER_BOUND_S = 60.0


@dataclass(frozen=True)
class ReplicaSizes:
    opens: int  # sessions per open-rate figure
    concurrency: int
    throughput_bytes: int
    throughput_runs: int


FULL = ReplicaSizes(opens=60, concurrency=6, throughput_bytes=64_000_000, throughput_runs=2)
# the suite's run: every figure measured, from as few sessions as a median and two at once
# need (the cluster's start and the failover's wait are most of its time)
QUICK = ReplicaSizes(opens=4, concurrency=2, throughput_bytes=1_000_000, throughput_runs=1)


def run(res: Results, quick: bool, work: Path) -> None:
    reason = pg.unavailable()
    if reason:
        res.missing(KEYS, reason)
        return
    sizes = QUICK if quick else FULL
    res.info["replicas"] = {
        "replicas": 3,
        "broker": "hoshu serve",
        "database": "PostgreSQL (throwaway, fsync off)",
        "client": "stock OpenSSH ssh with a certificate issued after password + TOTP",
        "sizes": sizes.__dict__,
    }
    work.mkdir(parents=True, exist_ok=True)
    with pg.throwaway_postgres() as url:
        # a short folder: the gateway's control socket path must fit AF_UNIX's 108 bytes
        c = Cluster(work / ".c", api_port=0, ssh_port=0, tunnel_port=0, database_url=url)
        try:
            c.start_cluster(("b", "c"))
            c.tunnel_to("b", "c")
            client = _engineer(c)
            _measure(res, c, client, sizes)
        finally:
            c.stop()


@dataclass
class Client:
    """Stock ``ssh`` as tanaka with the certificate, through one replica's front door."""

    root: Path
    ports: dict[str, int]
    cert: Path

    def argv(self, replica: str, command: str) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.root / "engineer" / "id_ed25519"),
            "-o",
            f"CertificateFile={self.cert}",
            "-o",
            f"UserKnownHostsFile={self.root / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(self.ports[replica]),
            f"tanaka+{INSTRUMENT}@127.0.0.1",
            command,
        ]

    def session(self, replica: str, command: str = "true", timeout: float = 60.0) -> float:
        """One session's wall time; raises when it fails."""
        t0 = time.monotonic()
        r = subprocess.run(
            self.argv(replica, command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"session through {replica} failed ({r.returncode}): "
                f"{r.stderr.decode(errors='replace').strip()[-300:]}"
            )
        return time.monotonic() - t0


def _engineer(c: Cluster) -> Client:
    """tanaka and sato signed in; a grant approved; tanaka's certificate."""
    sign_in(c, ("tanaka", "sato"))
    request_approved(
        c,
        INSTRUMENT,
        reason="replica benchmark",
        ticket="BENCH-1",
        plan="run commands",
        duration="2h",
    )
    cert = c.root / "engineer" / "id_ed25519-cert.pub"
    c.hoshu(
        "tanaka",
        "ssh-cert",
        "--key",
        str(c.root / "engineer" / "id_ed25519.pub"),
        "--out",
        str(cert),
    )
    return Client(c.root, {n: r.ssh_port for n, r in c.replicas.items()}, cert)


def _opens(client: Client, replicas: list[str], n: int, concurrency: int) -> tuple[float, float]:
    """(sessions per second, median session time) for ``n`` sessions over ``replicas``."""
    order = [replicas[i % len(replicas)] for i in range(n)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        times = list(pool.map(client.session, order))
    wall = time.monotonic() - t0
    return n / wall, statistics.median(times)


def _throughput(client: Client, replica: str, nbytes: int, runs: int) -> float:
    """MB/s of a recorded session's output (printable bytes, as a terminal shows), from
    its first byte to its last: the sign-in is in the session-open figures."""
    command = f"head -c {nbytes} /dev/zero | tr '\\0' x"
    best = 0.0
    for _ in range(runs):
        with subprocess.Popen(
            client.argv(replica, command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            out = proc.stdout
            assert isinstance(out, io.BufferedReader)
            first = out.read1(1 << 20)
            t0 = time.monotonic()
            got = len(first)
            while chunk := out.read1(1 << 20):
                got += len(chunk)
            took = time.monotonic() - t0
            proc.wait(timeout=600)
        if proc.returncode != 0 or got != nbytes:
            raise RuntimeError(f"throughput session through {replica}: {got} of {nbytes} bytes")
        best = max(best, (nbytes - len(first)) / max(took, 1e-6) / 1e6)
    return best


def _measure(res: Results, c: Cluster, client: Client, sizes: ReplicaSizes) -> None:
    for name in ("a", "b", "c"):  # warm up: host keys learnt, peer links dialled
        client.session(name)
    rate1, p50_1 = _opens(client, ["b"], sizes.opens, sizes.concurrency)
    res.put("replica_session_opens_per_s_1", rate1)
    res.put("replica_session_open_p50_s_1", p50_1)
    rate3, p50_3 = _opens(client, ["a", "b", "c"], sizes.opens, sizes.concurrency)
    res.put("replica_session_opens_per_s_3", rate3)
    res.put("replica_session_open_p50_s_3", p50_3)

    local = _throughput(client, "b", sizes.throughput_bytes, sizes.throughput_runs)
    routed = _throughput(client, "a", sizes.throughput_bytes, sizes.throughput_runs)
    res.put("throughput_replica_local_MBps", local)
    res.put("throughput_replica_routed_MBps", routed)
    res.put("replica_routed_vs_local", routed / local if local else None)

    gid = c.gateway_id()
    killed = time.monotonic()
    c.kill("b")
    failover: float | None = None
    while time.monotonic() - killed < FAILOVER_BOUND_S:
        try:
            client.session("a", timeout=20)
        except (RuntimeError, subprocess.TimeoutExpired):
            time.sleep(0.2)  # the next attempt, as an engineer's retry would be
            continue
        failover = time.monotonic() - killed
        break
    if failover is None:
        res.missing(["replica_failover_s"], f"no session through a within {FAILOVER_BOUND_S} s")
    else:
        res.put("replica_failover_s", failover)
    deadline = killed + FAILOVER_BOUND_S
    while "b" in c.holders(gid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if "b" in c.holders(gid):
        res.missing(["replica_dead_detected_s"], f"b still counted live after {FAILOVER_BOUND_S} s")
    else:
        res.put("replica_dead_detected_s", time.monotonic() - killed)
