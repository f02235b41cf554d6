"""A throwaway PostgreSQL server for the audit query benchmark.

``initdb`` into a fresh directory and ``postgres`` on a free loopback port,
both run as an unprivileged system user (``postgres`` when it exists; the
server refuses to run as root).  Trust authentication on 127.0.0.1 only; the
directory is removed when the context ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.sshd import BenchError, free_port


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """None when a throwaway server can be started here, else why not."""
    if pg_bindir() is None:
        return "PostgreSQL server binaries are not installed (Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no unprivileged 'postgres' user"
    return None


def _as_user(argv: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


@contextlib.contextmanager
def throwaway_postgres(*, durable: bool = False) -> Iterator[str]:
    """Yield a libpq URL for a fresh database; stop and delete the server after.

    ``durable``: fsync and synchronous_commit on (PostgreSQL's defaults), for figures
    that promise durability (the audit chain); otherwise both off, for query figures."""
    reason = unavailable()
    bindir = pg_bindir()
    if reason or bindir is None:
        raise BenchError(reason or "no PostgreSQL")
    user = "postgres" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="hoshu-bench-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if user:
        pw = pwd.getpwnam(user)
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            _as_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "bench",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                user,
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        port = free_port()
        log = (base / "postgres.log").open("ab")
        proc = subprocess.Popen(
            _as_user(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-k",
                    str(sock),
                    "-c",
                    f"fsync={'on' if durable else 'off'}",
                    "-c",
                    f"synchronous_commit={'on' if durable else 'off'}",
                    "-c",
                    f"full_page_writes={'on' if durable else 'off'}",
                    "-c",
                    "shared_buffers=256MB",
                    "-c",
                    "max_wal_size=2GB",
                ],
                user,
            ),
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while True:
            ok = (
                subprocess.run(
                    [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                    capture_output=True,
                    timeout=10,
                    check=False,
                ).returncode
                == 0
            )
            if ok:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError("the throwaway PostgreSQL server did not start")
            time.sleep(0.1)
        yield f"postgresql+psycopg://bench@127.0.0.1:{port}/postgres"
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
