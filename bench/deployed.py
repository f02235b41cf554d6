"""hoshu as deployed: the probes through ``hoshu serve`` with its real store.

The broker is the demo's (:class:`hoshu_demo.demo.Demo`): ``hoshu serve`` with its
store (SQLite in its data directory, or PostgreSQL from :mod:`bench.pg` through
``HOSHU_DATABASE_URL``), the real hospital gateway (``hoshu-gateway``) and the lab's
real OpenSSH ``sshd`` as the instrument.  The engineer signs in with password and TOTP
(``hoshu login``), gets a short-lived SSH certificate (``hoshu ssh-cert``) and then
runs stock ``ssh`` with it, so every session is the whole path: front door,
certificate, grant check, recording, tunnel, gateway, sshd.

Figures per store (``_sqlite`` / ``_postgres``): ``session_open_s_deployed_*`` (``ssh``
start to the first byte of the command's output, median), ``throughput_recorded_MBps_
deployed_*`` (a recorded session's output), ``echo_p50/p99_ms_deployed_*``.  When
PostgreSQL runs here, the PostgreSQL broker also carries the concurrency figures
(:mod:`bench.concurrency`) and the login rate.  Every loop is bounded.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import pg, probes
from bench.report import Results
from hoshu_demo.demo import Demo
from tests.support.demoflow import request_approved, sign_in

INSTRUMENT = "cobas-c503-1"
STORES = ("sqlite", "postgres")
PER_STORE = (
    "session_open_s_deployed",
    "throughput_recorded_MBps_deployed",
    "echo_p50_ms_deployed",
    "echo_p99_ms_deployed",
)
KEYS = [f"{k}_{s}" for s in STORES for k in PER_STORE]


@dataclass(frozen=True)
class DeployedSizes:
    opens: int
    throughput_bytes: int
    echo_samples: int
    levels: tuple[int, ...]  # concurrent sessions
    level_bytes: int  # bytes of bulk output per level, split over its bulk sessions
    logins: int  # engineers signing in at once
    stores: tuple[str, ...]
    min_bulk_bytes: int = 16_000_000  # each bulk session prints at least this much


FULL = DeployedSizes(
    opens=10,
    throughput_bytes=64_000_000,
    echo_samples=300,
    levels=(1, 10, 50, 100),
    level_bytes=400_000_000,
    logins=100,
    stores=STORES,
)
# the suite's run: every figure measured, at the smallest sizes that still compare two
# levels (a level runs one echo session beside its bulk ones: 1 + 1, then 1 + 2)
QUICK = DeployedSizes(
    opens=1,
    throughput_bytes=1_000_000,
    echo_samples=12,
    levels=(1, 3),
    level_bytes=1_000_000,
    logins=2,
    stores=("sqlite",),
    min_bulk_bytes=1,
)


@dataclass
class Deployed:
    """A running ``hoshu serve`` with tanaka's certificate for stock ``ssh``."""

    demo: Demo
    cert: Path
    store: str

    @property
    def broker_pid(self) -> int:
        return self.demo.procs["broker"].pid

    def ssh(self, *args: str, tty: bool = False) -> list[str]:
        root = self.demo.root
        return [
            "ssh",
            "-F",
            "/dev/null",
            *(["-tt"] if tty else []),
            "-i",
            str(root / "engineer" / "id_ed25519"),
            "-o",
            f"CertificateFile={self.cert}",
            "-o",
            f"UserKnownHostsFile={root / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=30",
            "-p",
            str(self.demo.ssh_port),
            f"tanaka+{INSTRUMENT}@127.0.0.1",
            *args,
        ]


def bulk_command(nbytes: int) -> str:
    """Printable bytes, as a terminal shows (the recorder reads them all)."""
    return f"head -c {nbytes} /dev/zero | tr '\\0' x"


@contextlib.contextmanager
def deployed(
    work: Path,
    store: str,
    database_url: str | None = None,
    broker_env: dict[str, str] | None = None,
) -> Iterator[Deployed]:
    """The demo's broker on ``store`` (with ``broker_env`` added to its environment),
    an approved grant and tanaka's certificate."""
    env = {"HOSHU_DATABASE_URL": database_url} if database_url else {}
    env.update(broker_env or {})
    # a short folder: the gateway's control socket path must fit AF_UNIX's 108 bytes
    demo = Demo(work / f".d{store[0]}", api_port=0, ssh_port=0, tunnel_port=0, broker_env=env)
    try:
        demo.start()
        sign_in(demo, ("tanaka", "sato"))
        request_approved(
            demo,
            INSTRUMENT,
            reason="deployed benchmark",
            ticket="BENCH-2",
            plan="run commands",
            duration="2h",
        )
        cert = demo.root / "engineer" / "id_ed25519-cert.pub"
        demo.hoshu(
            "tanaka",
            "ssh-cert",
            "--key",
            str(demo.root / "engineer" / "id_ed25519.pub"),
            "--out",
            str(cert),
        )
        yield Deployed(demo, cert, store)
    finally:
        demo.stop()


def measure_paths(res: Results, d: Deployed, sizes: DeployedSizes) -> None:
    """The single-session probes of the data-path section, through ``hoshu serve``."""
    s = d.store
    probes.first_byte_time(d.ssh("echo", "warm"))  # host key learnt, tunnel channel warm
    opens = [probes.first_byte_time(d.ssh("echo", "x")) for _ in range(sizes.opens)]
    res.put(f"session_open_s_deployed_{s}", statistics.median(opens), 4)
    best = 0.0
    for _ in range(2):
        best = max(
            best,
            probes.command_throughput(
                d.ssh(bulk_command(sizes.throughput_bytes)), sizes.throughput_bytes
            ),
        )
    res.put(f"throughput_recorded_MBps_deployed_{s}", best)
    rtts = probes.echo_round_trips(d.ssh("cat", tty=True), sizes.echo_samples)
    summary = probes.summarize(rtts)
    res.put(f"echo_p50_ms_deployed_{s}", summary.p50 * 1000, 4)
    res.put(f"echo_p99_ms_deployed_{s}", summary.p99 * 1000, 4)


def run(res: Results, quick: bool, work: Path) -> None:
    sizes = QUICK if quick else FULL
    work.mkdir(parents=True, exist_ok=True)
    res.info["bench_broker"] = "hoshu serve"
    res.info["deployed"] = {
        "broker": "hoshu serve (the demo's set-up: real store, gateway, OpenSSH sshd)",
        "client": "stock OpenSSH ssh with a certificate issued after password + TOTP",
        "sizes": sizes.__dict__,
    }
    for store in sizes.stores:
        keys = [f"{k}_{store}" for k in PER_STORE]
        last = store == sizes.stores[-1]
        if store == "postgres":
            reason = pg.unavailable()
            if reason:
                res.missing(keys, reason)
                continue
            with pg.throwaway_postgres() as url, deployed(work, store, url) as d:
                _one(res, d, sizes, keys, last, work)
        else:
            with deployed(work, store) as d:
                _one(res, d, sizes, keys, last, work)


def _one(
    res: Results, d: Deployed, sizes: DeployedSizes, keys: list[str], last: bool, work: Path
) -> None:
    from bench import concurrency

    res.section(f"deployed paths ({d.store})", keys, lambda: measure_paths(res, d, sizes))
    if last:  # the concurrency figures on the last store measured (PostgreSQL when present)
        res.info["concurrency_store"] = d.store
        res.section(
            f"concurrency ({d.store})",
            concurrency.KEYS,
            lambda: concurrency.run(res, d, sizes, work / "conc"),
        )
