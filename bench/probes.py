"""The measurements, written once and used for hoshu and OpenSSH alike.

Each probe drives a stock ``ssh`` client process (or a loopback TCP socket in
front of an ``ssh -L`` forward) and times what an engineer would notice:

* :func:`command_throughput` — bytes of a remote command's output per second,
  from its first byte to its last (session set-up is timed separately);
* :func:`forward_throughput` — bytes per second read through a local forward
  from the :mod:`bench.tcpsource` service on the instrument side;
* :func:`first_byte_time` — from starting ``ssh`` to the first byte of the
  remote command's output (connection, authentication, MFA, session);
* :func:`echo_round_trips` — in a pty session running ``cat``, the time from
  writing one character to reading its echo.
"""

from __future__ import annotations

import base64
import math
import os
import select
import socket
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.sshd import BenchError

CHUNK = 1 << 20
MB = 1_000_000


def make_payload(path: Path, nbytes: int) -> Path:
    """A text file of ``nbytes`` printable bytes (base64 lines), made once."""
    if path.exists() and path.stat().st_size == nbytes:
        return path
    line_block = base64.encodebytes(os.urandom(3 * (1 << 18)))  # ~1 MiB of 77-byte lines
    with path.open("wb") as f:
        left = nbytes
        while left > 0:
            piece = line_block[:left]
            f.write(piece)
            left -= len(piece)
    return path


def _read_some(fd: int, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BenchError("timed out waiting for output")
    ready, _, _ = select.select([fd], [], [], left)
    if not ready:
        raise BenchError("timed out waiting for output")
    return os.read(fd, CHUNK)


def _finish(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return (err or b"").decode(errors="replace").strip()[-400:]


def command_throughput(
    argv: Sequence[str],
    expected: int,
    *,
    timeout: float = 600.0,
    env: Mapping[str, str] | None = None,
) -> float:
    """MB/s of a remote command's stdout, first byte to end; checks the byte count."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env else None,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    got, first = 0, 0.0
    while True:
        data = _read_some(fd, deadline)
        if not data:
            break
        if got == 0:
            first = time.perf_counter()
        got += len(data)
    end = time.perf_counter()
    err = _finish(proc)
    if got < expected:
        raise BenchError(f"{argv[0]} delivered {got} of {expected} bytes: {err}")
    return got / MB / max(end - first, 1e-9)


def forward_throughput(port: int, nbytes: int, *, timeout: float = 600.0) -> float:
    """MB/s read from the byte source behind a local forward on 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.settimeout(timeout)
        s.sendall(f"{nbytes}\n".encode())
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        got, first = 0, 0.0
        deadline = time.monotonic() + timeout
        while got < nbytes:
            n = s.recv_into(view)
            if n == 0:
                break
            if got == 0:
                first = time.perf_counter()
            got += n
            if time.monotonic() > deadline:
                raise BenchError("forward throughput timed out")
        end = time.perf_counter()
    if got < nbytes:
        raise BenchError(f"the forward delivered {got} of {nbytes} bytes")
    return got / MB / max(end - first, 1e-9)


def first_byte_time(
    argv: Sequence[str], *, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> float:
    """Seconds from starting ``argv`` to the first byte on its stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env else None,
    )
    assert proc.stdout is not None
    try:
        data = _read_some(proc.stdout.fileno(), time.monotonic() + timeout)
    except BenchError:
        proc.kill()
        raise
    took = time.perf_counter() - start
    err = _finish(proc)
    if not data:
        raise BenchError(f"{argv[0]} printed nothing: {err}")
    return took


def echo_round_trips(
    argv: Sequence[str],
    samples: int,
    *,
    warmup: int = 5,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> list[float]:
    """Keystroke echo round trips (seconds) in a pty session whose command is ``cat``.

    ``argv`` must request a remote pty (``ssh -tt ... cat``).  One byte is
    written; the clock stops when that byte comes back (echoed by the remote
    terminal).  Every 50 characters a carriage return ends the line, and the
    echoed newline plus ``cat``'s copy of the line are read before timing
    resumes.  The first ``warmup`` round trips (which include set-up) are
    dropped.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env else None,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out_fd, in_fd = proc.stdout.fileno(), proc.stdin.fileno()
    deadline = time.monotonic() + timeout
    rtts: list[float] = []
    try:
        for i in range(samples + warmup):
            key = b"abcdefghijklmnopqrstuvwxyz"[i % 26 : i % 26 + 1]
            t0 = time.perf_counter()
            os.write(in_fd, key)
            seen = b""
            while key not in seen:
                chunk = _read_some(out_fd, deadline)
                if not chunk:
                    raise BenchError("the session ended during the echo test")
                seen += chunk
            if i >= warmup:
                rtts.append(time.perf_counter() - t0)
            if i % 50 == 49:
                os.write(in_fd, b"\r")
                seen = b""
                while seen.count(b"\n") < 2:
                    chunk = _read_some(out_fd, deadline)
                    if not chunk:
                        raise BenchError("the session ended during the echo test")
                    seen += chunk
        os.write(in_fd, b"\r\x04")
    except BenchError as exc:
        proc.kill()
        raise BenchError(f"echo test: {exc}: {_finish(proc)}") from exc
    _finish(proc)
    return rtts


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest-rank on sorted values, 0 < pct <= 100)."""
    if not values:
        raise BenchError("no samples")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    p50: float
    p95: float
    p99: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    return Summary(
        statistics.median(values), percentile(values, 95), percentile(values, 99), len(values)
    )
