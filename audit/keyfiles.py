"""Files that hold secrets (private keys, tokens, enrolments): born 0600, never wider.

A file created with the default mode and ``chmod``-ed afterwards is readable
by anyone for the moment in between (with a permissive umask), and a file that
already exists keeps its old mode when it is truncated and rewritten.  Here:

* :func:`create_secret` creates the file with ``O_CREAT | O_EXCL | O_NOFOLLOW``
  and mode 0600 in one call, then writes it.  A file (or symlink) already at
  the path is refused with :class:`FileExistsError`, never written through.
* :func:`replace_secret` writes a new file the same way under a fresh random
  name beside the target, syncs it, and renames it over the target: readers see
  the old content or the new one, always with mode 0600.

The umask can only take permission bits away from 0600, so no umask widens
these files.  Used by the broker (audit key, SSH CA and host keys, credential
key, CLI token) and the gateway (its key, its enrolment); both depend on
``audit``, so the rule is written once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

MODE = 0o600
_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)


def _write_new(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, _FLAGS, MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)


def create_secret(path: str | os.PathLike[str], data: bytes, *, sync: bool = True) -> None:
    """Create ``path`` holding ``data`` with mode 0600; FileExistsError if anything is there."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_new(p, data, sync=sync)


def replace_secret(path: str | os.PathLike[str], data: bytes, *, sync: bool = True) -> None:
    """Atomically put ``data`` at ``path`` (mode 0600), replacing what was there."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(8)}.tmp")
    _write_new(tmp, data, sync=sync)
    try:
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
