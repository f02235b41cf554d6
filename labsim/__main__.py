"""``python -m labsim``: run the simulated laboratory in the foreground.

Prints one JSON document describing the instruments on stdout (and to
``--json-out`` if given), then runs until SIGINT or SIGTERM and stops
everything cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from labsim.errors import LabsimError
from labsim.lab import ALL_INSTRUMENTS, Lab


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m labsim", description=__doc__.splitlines()[0])
    p.add_argument("--json-out", type=Path, help="also write the description to this file")
    p.add_argument("--allowlist-out", type=Path, help="write the gateway allowlist TOML here")
    p.add_argument("--workdir", type=Path, help="keep keys and data here (default: temp dir)")
    p.add_argument(
        "--only", action="append", choices=ALL_INSTRUMENTS, help="start only these (repeatable)"
    )
    p.add_argument("--no-openssh", action="store_true", help="use asyncssh for cobas-c503-1")
    return p


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    lab = Lab(args.workdir, names=args.only, openssh=False if args.no_openssh else None)
    try:
        lab.start()
    except (LabsimError, OSError) as exc:
        print(f"labsim: {exc}", file=sys.stderr)
        return 1
    try:
        doc = lab.describe() | {"pid": os.getpid()}
        text = json.dumps(doc, indent=2)
        if args.json_out:
            _write_atomic(args.json_out, text + "\n")
        if args.allowlist_out:
            _write_atomic(args.allowlist_out, lab.allowlist_toml())
        print(text, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        lab.stop()
    print("labsim: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
