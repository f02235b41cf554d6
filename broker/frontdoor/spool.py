"""Spools: where files moving through the broker wait to be hashed, scanned and sent.

Every file an engineer uploads or downloads is held whole at the broker first
(:mod:`broker.frontdoor.sftp`).  Spools live in their own directory under the data
dir (``<data_dir>/spools``, mode 0700), never beside the audit log, so a full
spool disk cannot stop the audit chain.  Each spool file is unlinked the moment
it is created (:func:`tempfile.TemporaryFile`), so it disappears on every end
path: closed, discarded, session terminated, connection dropped, broker killed.

Space is budgeted three ways and a write past any of them is refused (the
engineer sees an SFTP failure with the reason, and ``file.refused`` is
logged by the caller):

- one file: ``max_file_bytes``;
- one sftp/scp session, all its open files together: ``max_session_spool_bytes``;
- the whole front door: ``max_spool_bytes`` (:class:`SpoolBudget`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from asyncssh import SFTPAttrs

PREFIX = "hoshu-spool-"


class SpoolFull(Exception):
    """A write would take a spool past one of its limits; ``str(exc)`` is for the engineer."""

    reason = "spool_full"


class SpoolBudget:
    """Bytes held in open spools across one front door, against a ceiling."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


@dataclass(eq=False)
class Spool:
    """One open file of an sftp/scp session, held at the broker."""

    path: bytes
    pflags: int
    attrs: SFTPAttrs
    fh: IO[bytes]
    inbound: bool
    set_attrs: list[SFTPAttrs] = field(default_factory=list)
    size: int = 0  # bytes charged to the budgets (the high-water mark)
    sha256: str = ""
    refused: str = ""  # why the file will not be sent on (a limit was hit)


class SessionSpools:
    """The open spools of one session, charged to the session's and the door's budget."""

    def __init__(
        self, directory: Path, door: SpoolBudget, *, per_session: int, per_file: int
    ) -> None:
        self._dir = directory
        self._door = door
        self._per_session = per_session
        self._per_file = per_file
        self.used = 0
        self.open: set[Spool] = set()

    def create(self, path: bytes, pflags: int, attrs: SFTPAttrs, inbound: bool) -> Spool:
        """A new, empty spool file (already unlinked from the directory)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self._dir, 0o700)
        fh = tempfile.TemporaryFile(prefix=PREFIX, dir=self._dir)
        spool = Spool(path, pflags, attrs, fh, inbound)
        self.open.add(spool)
        return spool

    def charge(self, spool: Spool, high: int) -> None:
        """Grow ``spool`` to ``high`` bytes, or raise SpoolFull and charge nothing."""
        grow = high - spool.size
        if grow <= 0:
            return
        if high > self._per_file:
            raise SpoolFull(f"file too large for the broker (at most {_mib(self._per_file)})")
        if self.used + grow > self._per_session:
            raise SpoolFull(
                "the files open in this session exceed the broker's spool limit "
                f"of {_mib(self._per_session)}; close some and try again"
            )
        if not self._door.take(grow):
            raise SpoolFull("the broker's file spool is full; try again later")
        self.used += grow
        spool.size = high

    def discard(self, spool: Spool) -> None:
        """Close and forget ``spool``; its bytes go back to both budgets.  Idempotent."""
        if spool not in self.open:
            return
        self.open.discard(spool)
        self.used = max(0, self.used - spool.size)
        self._door.give(spool.size)
        try:
            spool.fh.close()
        except OSError:
            pass

    def discard_all(self) -> None:
        for spool in list(self.open):
            self.discard(spool)


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB" if n >= 1024**2 else f"{n} bytes"
