"""Loopback helpers: free ports and polling until a port answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from labsim.errors import InstrumentStartError

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free a moment ago on `host`.

    The port is only reserved while this function runs: callers that hand it to
    another process must retry when that process reports the port is taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def read_banner(host: str, port: int, timeout: float = 1.0, limit: int = 256) -> bytes:
    """Connect and read up to `limit` bytes the server sends first (b"" if none)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        try:
            return sock.recv(limit)
        except TimeoutError:
            return b""


def poll_until(
    check: Callable[[], bool],
    *,
    deadline_s: float,
    what: str,
    interval_s: float = 0.02,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Call `check` until it returns True or the deadline passes.

    `alive` may report why waiting is pointless (e.g. the process exited); its
    message is raised at once instead of waiting for the deadline.
    """
    end = time.monotonic() + deadline_s
    delay = interval_s
    while True:
        if alive is not None and (why := alive()) is not None:
            raise InstrumentStartError(f"{what}: {why}")
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() >= end:
            raise InstrumentStartError(f"{what}: not ready after {deadline_s:.1f}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
