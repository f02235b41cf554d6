"""What-if experiment: ``python -m bench.whatif [--bytes N] [--rounds R] [--out PATH]``.

Measures hoshu's recorded session, port forward and keystroke echo as built,
and with changes applied inside the benchmark's own broker and gateway
processes only (the product is not changed): 256 KiB packets on the channels
the broker opens through a tunnel; the OpenSSH chain beside them.  Variants
are interleaved round by round.  Writes ``bench/whatif.json``, which
``python -m bench.render`` puts into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import probes
from bench.hoshu_path import HoshuLab
from bench.openssh_chain import openssh_lab

HERE = Path(__file__).resolve().parent
VARIANTS: tuple[tuple[str, dict[str, bool]], ...] = (
    ("default", {}),
    ("tunnel", {"what_if_tunnel": True}),
)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.whatif")
    ap.add_argument("--bytes", type=int, default=300_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--echo", type=int, default=500)
    ap.add_argument("--out", type=Path, default=HERE / "whatif.json")
    ap.add_argument("--work", type=Path, default=HERE / "work-whatif")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    n = args.bytes
    payload = probes.make_payload(args.work / "payload.txt", n)
    runs: dict[str, list[float]] = {}
    failed: dict[str, str] = {}

    def add(key: str, value: float) -> None:
        runs.setdefault(key, []).append(value)

    try:
        with openssh_lab(args.work / "openssh", payload) as lab:
            for rnd in range(args.rounds):
                for label, flags in VARIANTS:
                    hl = HoshuLab(lab, args.work / f"{label}{rnd}", 8, "tunnel")
                    hl.cfg.update(flags)
                    (hl.work / "bench.json").write_text(json.dumps(hl.cfg))
                    try:
                        if label in failed:
                            continue
                        hl.start()
                        argv, env = hl.login("cat", str(payload))
                        add(f"{label}_rec_MBps", probes.command_throughput(argv, n, env=env))
                        with hl.forward() as port:
                            add(f"{label}_fwd_MBps", probes.forward_throughput(port, n))
                        argv, env = hl.login("cat", tty=True)
                        s = probes.summarize(probes.echo_round_trips(argv, args.echo, env=env))
                        add(f"{label}_echo_p50_ms", s.p50 * 1000)
                        add(f"{label}_echo_p99_ms", s.p99 * 1000)
                    except Exception as exc:  # a variant that does not work is reported
                        failed[label] = f"{type(exc).__name__}: {exc}"
                    finally:
                        hl.stop()
                add("chain_rec_MBps", probes.command_throughput(lab.chain("cat", str(payload)), n))
                with lab.forward(True) as port:
                    add("chain_fwd_MBps", probes.forward_throughput(port, n))
                s = probes.summarize(probes.echo_round_trips(lab.chain("cat", tty=True), args.echo))
                add("chain_echo_p50_ms", s.p50 * 1000)
                add("chain_echo_p99_ms", s.p99 * 1000)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    doc: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bytes": n,
        "rounds": args.rounds,
        "echo_samples": args.echo,
        "failed": failed,
        "mean": {k: round(statistics.fmean(v), 3) for k, v in runs.items()},
        "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()},
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for label, why in failed.items():
        print(f"{label}: failed: {why}")
    for k in sorted(doc["mean"]):
        print(f"{k:28} {doc['mean'][k]:>10}  {doc['runs'][k]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
