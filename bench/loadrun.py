"""``python -m bench.loadrun``: a bounded load run through ``hoshu serve``, for before and
after comparisons of one change (the ``deployed`` section's harness, smaller).

One store, the given levels of concurrent recorded sessions (:func:`bench.concurrency.
run_level`), optionally the login burst and a stdlib sampling profile of the broker
(:mod:`bench.sampler`).  Prints one JSON document; writes nothing else that is kept.
``HOSHU_EVENT_LOOP`` and any other ``HOSHU_`` setting given with ``--env`` go to the
broker; ``--env PYTHONPATH=<a copy of broker/ wire/ audit/>`` runs the broker from that
copy, so two versions can be measured turn about on the same machine.  Per level it
reports, besides the ``deployed`` figures, the broker's user and system CPU and its read
and write system calls per MB; before the levels, its CPU with no session running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import concurrency, pg, probes
from bench.deployed import bulk_command, deployed

HERE = Path(__file__).resolve().parent
IDLE_S = 10.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadrun", description=__doc__)
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--levels", type=int, nargs="*", default=[10, 50])
    ap.add_argument("--level-bytes", type=int, default=100_000_000)
    ap.add_argument("--min-bulk-bytes", type=int, default=2_000_000)
    ap.add_argument("--echo-samples", type=int, default=200)
    ap.add_argument("--logins", type=int, default=0, help="engineers signing in at once")
    ap.add_argument("--profile", type=Path, default=None, help="sampler output prefix")
    ap.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for the broker")
    args = ap.parse_args(argv)
    env: dict[str, str] = dict(kv.split("=", 1) for kv in args.env)
    if args.profile is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(HERE / "sampler"), str(HERE.parent), os.environ.get("PYTHONPATH", "")]
        )
        env["BENCH_SAMPLE_OUT"] = str(args.profile)
    out: dict[str, Any] = {"store": args.store, "env": args.env, "levels": {}}
    out["loadavg_start"] = list(os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp"))
    try:
        if args.store == "postgres":
            with pg.throwaway_postgres() as url:
                _run(args, env, url, work, out)
        else:
            _run(args, env, None, work, out)
    except Exception:
        for log in work.glob("*/logs/broker.log"):
            print(log.read_text()[-3000:])
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(out, indent=1))
    return 0


def _run(
    args: argparse.Namespace, env: dict[str, str], url: str | None, work: Path, out: dict[str, Any]
) -> None:
    with deployed(work, args.store, url, env) as d:
        pid = d.broker_pid
        probes.first_byte_time(d.ssh("echo", "warm"))
        # what the broker spends with no session at all (its pollers and timers): part of
        # every level's CPU figure, whatever it relays
        c0, t0 = concurrency.tree_cpu_s(pid), time.monotonic()
        time.sleep(IDLE_S)  # measuring the idle broker over a fixed span
        out["idle_cpu_s_per_s"] = round(
            (concurrency.tree_cpu_s(pid) - c0) / (time.monotonic() - t0), 4
        )
        for n in args.levels:
            t0 = time.monotonic()
            user0, sys0 = _user_sys(pid)
            io0 = _io(pid)
            lv = concurrency.run_level(
                pid,
                lambda nbytes: d.ssh(bulk_command(nbytes)),
                d.ssh("cat", tty=True),
                n,
                args.level_bytes,
                args.echo_samples,
                args.min_bulk_bytes,
            )
            user1, sys1 = _user_sys(pid)
            io1 = _io(pid)
            s = probes.summarize(lv.echo_ms)
            out["levels"][str(n)] = {
                "aggregate_MBps": round(lv.aggregate_MBps, 2),
                "echo_p50_ms": round(s.p50, 2),
                "echo_p99_ms": round(s.p99, 2),
                "cpu_s_per_GB": round(lv.cpu_s / (lv.bulk_bytes / 1e9), 1),
                # the broker process alone (no children): time in Python and in the kernel
                "user_s": round(user1 - user0, 2),
                "system_s": round(sys1 - sys0, 2),
                # read and write system calls of the broker (socket sends included: the
                # event loop writes to sockets with write/writev), per MB relayed
                "reads_per_MB": round((io1["syscr"] - io0["syscr"]) / (lv.bulk_bytes / 1e6), 1),
                "writes_per_MB": round((io1["syscw"] - io0["syscw"]) / (lv.bulk_bytes / 1e6), 1),
                "rss_MiB_per_session": round(max(lv.rss_peak - lv.rss_before, 0) / lv.sessions, 3),
                "echo_under_load": lv.echo_under_load,
                "seconds": round(time.monotonic() - t0, 1),
                "loadavg": list(os.getloadavg()),
            }
        if args.logins:
            from bench.report import Results

            res = Results("quick", progress=work / "p.json")
            concurrency.logins(res, d, args.logins)
            out["logins"] = {k: v for k, v in res.figures.items() if "login" in k}
            out["logins_info"] = res.info.get("concurrency", {}).get("logins")


def _user_sys(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` itself, from ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _io(pid: int) -> dict[str, int]:
    """The I/O counters of process ``pid`` (``/proc/<pid>/io``: syscr, syscw, ...)."""
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return {k: int(v) for k, v in (line.split(": ", 1) for line in lines)}


if __name__ == "__main__":
    raise SystemExit(main())
