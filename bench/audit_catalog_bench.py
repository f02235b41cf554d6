"""How fast ``audit.new_event`` builds events: ``python -m bench.audit_catalog_bench``.

Each figure is events per second of CPU time on this machine (process time,
so other load on a shared machine distorts it less), the best of ``--repeat``
timeit runs of ``--number`` calls each: a bare event (``user.logout``), an
event with columns and declared details (``ssh.login``, one secret redacted),
and the catalog lookup alone.  Run it before and after a change to the
catalog or the envelope; the figures are printed, nothing is written.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime

from audit import new_event

_T = datetime(2026, 4, 1, tzinfo=UTC)


def _clock() -> datetime:
    return _T


def _bare() -> object:
    return new_event("user.logout", clock=_clock, uid="u")


def _full() -> object:
    return new_event(
        "ssh.login",
        clock=_clock,
        uid="u",
        ActorUsername="eng1",
        SrcIpAddr="192.0.2.7",
        TargetHostname="analyser-1",
        details={"method": "publickey", "key_fingerprint": "SHA256:x", "totp_code": "123456"},
    )


def _lookup() -> Callable[[], object]:
    try:
        from audit.catalog import event_type
    except ImportError:  # so the same script measures a tree from before the catalog was data
        from audit.events import spec_for as event_type  # type: ignore[attr-defined,no-redef]
    return lambda: event_type("ssh.login")


def rates(number: int = 50_000, repeat: int = 5) -> dict[str, float]:
    """Events (or lookups) per second for each case, best of ``repeat`` runs."""
    cases = {"new_event bare": _bare, "new_event with details": _full, "catalog lookup": _lookup()}
    return {
        name: number / min(timeit.repeat(fn, timer=time.process_time, number=number, repeat=repeat))
        for name, fn in cases.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.audit_catalog_bench", description=__doc__)
    ap.add_argument("--number", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    for name, rate in rates(args.number, args.repeat).items():
        print(f"{name:24} {rate:>12,.0f} /s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
