"""``python -m bench [--quick] [--out PATH] [--only SECTION ...] [--merge]``.

Runs the sections in order (OpenSSH and hoshu data paths, scale, audit) and
writes the results file even when a section fails: its figures are then
``null`` and ``notes`` carries the reason.  Every loop is bounded; the full
run takes well under 30 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from bench.report import Results, machine
from bench.sizes import FULL, QUICK, Sizes
from bench.sshd import CIPHER, KEX

HERE = Path(__file__).resolve().parent
SECTIONS = (
    "openssh",
    "hoshu",
    "scale",
    "audit",
    "replicas",
    "commands",
    "deployed",
    "desktop",  # VNC and RDP desktops
    "desktop-rdp",  # the RDP desktop's part of it alone
)
# whole brokers of their own: their quick runs are tests of their own
QUICK_SKIPS = ("replicas", "deployed", "desktop", "desktop-rdp")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (the test suite's mode)")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument(
        "--work",
        type=Path,
        default=HERE / "work",
        help="scratch directory (deleted afterwards unless --keep)",
    )
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="replace only the figures this run measured in --out, keep the others",
    )
    ap.add_argument("--only", nargs="*", choices=SECTIONS, default=None)
    ap.add_argument(
        "--max-gateways",
        type=int,
        default=None,
        help="cap the largest gateway count of the scale section",
    )
    ap.add_argument(
        "--hoshu-mode",
        choices=("auto", "direct", "tunnel"),
        default="auto",
        help="direct: the front door straight to the instrument (no tunnel)",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write a pyinstrument profile of the hoshu broker process here (desktop: "
        "the bench's sampler, PATH.<pid>.json per process of the demo)",
    )
    ap.add_argument(
        "--scale-listener",
        choices=("auto", "minimal", "real"),
        default="auto",
        help="real: hoshu's tunnel endpoint and gateway agents (auto: if built)",
    )
    args = ap.parse_args(argv)
    if args.only is None:
        args.only = [s for s in SECTIONS if not (args.quick and s in QUICK_SKIPS)]
    # A terminated run still stops its servers and writes what it measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = QUICK if args.quick else FULL
    if args.max_gateways is not None:
        cap = args.max_gateways
        steps = tuple(s for s in sizes.gateway_steps if s <= cap) or (cap,)
        real = tuple(s for s in sizes.gateway_steps_real if s <= cap) or (cap,)
        sizes = Sizes(**{**sizes.__dict__, "gateway_steps": steps, "gateway_steps_real": real})
    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    os.environ.setdefault("PYTHONPATH", str(HERE.parent))
    res = Results("quick" if args.quick else "full", progress=work / "progress.json")
    res.info["machine"] = machine()
    res.info["cipher"] = CIPHER
    res.info["kex"] = KEX
    res.info["sizes"] = sizes.__dict__
    started = time.monotonic()
    try:
        _run(res, sizes, work, args)
    finally:
        res.info["machine"]["loadavg_at_end"] = list(os.getloadavg())
        res.info["total_seconds"] = round(time.monotonic() - started, 1)
        doc = res.write(args.out, merge=args.merge)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    for key in sorted(k for k, v in doc.items() if isinstance(v, int | float) or v is None):
        print(f"  {key:42} {doc[key]}")
    for name, t in doc["targets"].items():
        print(f"  target {name:30} value={t['value']} met={t['met']}")
    return 0


def _run(res: Results, sizes: Sizes, work: Path, args: argparse.Namespace) -> None:
    from bench import audit_bench, openssh_bench, scale

    only: list[str] = args.only
    if "openssh" in only or "hoshu" in only:
        openssh_bench.run(
            res,
            sizes,
            work,
            with_openssh="openssh" in only,
            with_hoshu="hoshu" in only,
            hoshu_mode=args.hoshu_mode,
            profile=args.profile,
        )
    if "scale" in only:
        res.section(
            "scale", scale.KEYS, lambda: scale.run(res, sizes, work / "scale", args.scale_listener)
        )
    if "audit" in only:
        res.section(
            "audit append",
            ["audit_append_per_s"],
            lambda: audit_bench.measure_append(res, work / "audit", sizes.audit_appends),
        )
        sqlite_url = f"sqlite:///{work / 'audit' / 'index.sqlite'}"
        res.section(
            "audit sqlite",
            ["audit_query_p95_ms_sqlite", "audit_query_p50_ms_sqlite"],
            lambda: audit_bench.measure_index(
                res, sqlite_url, "sqlite", sizes.audit_events, sizes.audit_queries
            ),
        )
        res.section(
            "audit postgres",
            ["audit_query_p95_ms_postgres", "audit_query_p50_ms_postgres"],
            lambda: _postgres(res, sizes),
        )
        res.section(
            "audit durable chain",
            ["audit_durable_append_per_s_256_producers"],
            lambda: _durable(res, sizes),
        )

    if "commands" in only:
        from bench import commands_bench

        res.section(
            "shell commands",
            commands_bench.KEYS,
            lambda: commands_bench.run(res, work / "commands"),
        )
    if "deployed" in only:
        from bench import deployed

        deployed.run(res, args.quick, work / "deployed")
    if "desktop" in only or "desktop-rdp" in only:
        from bench import desktop_bench

        vnc = "desktop" in only
        res.section(  # the demo's set-up; its VNC and RDP parts are sections of their own
            "desktop demo",
            [*(desktop_bench.KEYS if vnc else []), *desktop_bench.RDP_KEYS],
            lambda: desktop_bench.run(
                res, sizes, work / "desktop", vnc=vnc, rdp=True, profile=args.profile
            ),
        )
    if "replicas" in only:
        from bench import replicas

        res.section(
            "replicas",
            replicas.KEYS,
            lambda: replicas.run(res, args.quick, work / "replicas"),
        )


def _postgres(res: Results, sizes: Sizes) -> None:
    from bench import audit_bench, pg

    reason = pg.unavailable()
    if reason:
        res.missing(["audit_query_p95_ms_postgres", "audit_query_p50_ms_postgres"], reason)
        return
    with pg.throwaway_postgres() as url:
        audit_bench.measure_index(res, url, "postgres", sizes.audit_events, sizes.audit_queries)


def _durable(res: Results, sizes: Sizes) -> None:
    """The PostgreSQL audit chain on a server with fsync and synchronous_commit on."""
    from bench import audit_bench, pg

    reason = pg.unavailable()
    if reason:
        res.missing(["audit_durable_append_per_s_256_producers"], reason)
        return
    with pg.throwaway_postgres(durable=True) as url:
        audit_bench.measure_durable(res, url, sizes.audit_appends)  # 1, 8, 32, 256 producers


if __name__ == "__main__":
    raise SystemExit(main())
