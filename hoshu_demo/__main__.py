"""``python -m hoshu_demo``: start the demo, print the walkthrough, stop on Ctrl-C.

``python -m hoshu_demo code USER`` prints USER's current TOTP code from
``.hoshu-demo/demo.json`` (for the walkthrough; a person uses their app).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import pyotp

from hoshu_demo.demo import Demo, DemoError
from hoshu_demo.walkthrough import qr_text, walkthrough


def _code(root: Path, user: str, ahead: int) -> int:
    info = json.loads((root / "demo.json").read_text())
    secret = info["users"][user]["totp_secret"]
    print(pyotp.TOTP(secret).at(time.time() + 30 * ahead))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run demo", description=__doc__)
    parser.add_argument(
        "--root", type=Path, default=Path(".hoshu-demo"), help="demo state directory (recreated)"
    )
    parser.add_argument("action", nargs="?", choices=["start", "code"], default="start")
    parser.add_argument("user", nargs="?", default="tanaka")
    parser.add_argument(
        "--any-ports", action="store_true", help="pick free ports instead of 8440/2222/2223"
    )
    parser.add_argument("--ahead", type=int, default=0, help="code for N steps later")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.action == "code":
        return _code(root, args.user, args.ahead)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    ports = {"api_port": 0, "ssh_port": 0, "tunnel_port": 0} if args.any_ports else {}
    demo = Demo(root, desktop=True, **ports)  # type: ignore[arg-type]
    print("Starting the hoshu demo (broker, gateway, simulated laboratory)...", flush=True)
    try:
        info = demo.start()
        key = root / "broker" / "keys" / "ssh_front_door_host_key"
        pub = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(key)],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        (root / "known_hosts").write_text(f"[127.0.0.1]:{demo.ssh_port} {pub}\n")
        print(qr_text(info), flush=True)
        print(walkthrough(info, root), flush=True)
        while not stop.wait(0.5):
            problem = demo.check_alive()
            if problem:
                print(f"hoshu demo: {problem}", file=sys.stderr)
                return 1
    except DemoError as exc:
        print(f"hoshu demo: {exc}", file=sys.stderr)
        return 1
    finally:
        print("\nStopping the demo...", flush=True)
        demo.stop()
    print("Stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
