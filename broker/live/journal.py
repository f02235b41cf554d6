"""Sessions a broker was running, on disk, so a broker that died can account for them.

A broker killed mid-session (SIGKILL, a lost container, a power cut) writes no
``session.ended``: the audit log would show sessions that never ended.  So
every recorded session (shell, exec) has a small journal file while it runs,
``<recordings_dir>/.live/<session id>.json``, created when the session is
registered and removed once its ``session.ended`` is in the audit log.

At start, before the front door listens, :func:`end_lost_sessions` ends what
the previous run left open: one ``session.ended`` per journal file, reason
``broker_lost``, with the size and SHA-256 of the partial recording as it is
stored (what an auditor can then check the recording against; with recordings in
Azure Blob storage, what the dead broker had appended).  A journal that
cannot be written is logged and the session goes on (its recording still
holds it); a broker restarted on another data directory cannot see this one's
journal (see docs/admin.md).  Replicas may share the recordings volume: the
broker running a session holds an exclusive lock on its journal file, and a
starting broker ends only entries no live process holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from audit import new_event
from audit.emitter import Emitter
from audit.recording import RecordingFileError
from audit.recstore import RecordingStore, digest
from audit.recstore.files import FileStore

log = logging.getLogger(__name__)

JOURNAL_DIR = ".live"
_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_MAX_ENTRY_BYTES = 64 * 1024


def journal_dir(recordings_dir: Path) -> Path:
    return recordings_dir / JOURNAL_DIR


class LiveJournal:
    """The journal of one front door's recorded sessions (one file per session).

    An entry is created, locked and written before :meth:`opened` returns, so a broker
    killed at any later moment leaves it behind.  Its ``fsync``, which waits for the
    disk, runs on one background thread in the order the entries were opened, never on
    the event loop: every other session's bytes go on meanwhile.  :meth:`synced` waits
    for it (tests, and whoever must know the entry is on stable storage)."""

    def __init__(self, recordings_dir: Path) -> None:
        self.dir = journal_dir(recordings_dir)
        self._held: dict[str, int] = {}  # session id -> open, locked descriptor
        self._syncing: dict[str, concurrent.futures.Future[None]] = {}
        self._syncer: concurrent.futures.ThreadPoolExecutor | None = None

    def _path(self, session_id: str) -> Path | None:
        if not session_id or len(session_id) > 128 or not set(session_id) <= _ID_OK:
            return None
        return self.dir / f"{session_id}.json"

    def opened(self, session_id: str, entry: dict[str, Any]) -> None:
        """Note a running session (its audit columns, kind, recording file name)."""
        path = self._path(session_id)
        if path is None:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "this session is alive"
                os.write(fd, json.dumps(entry, default=str).encode())
            except OSError:
                os.close(fd)
                raise
            self._held[session_id] = fd
        except OSError as exc:
            log.error(
                "cannot journal session %s (%s); a crash would leave it open",
                session_id,
                exc.strerror or exc,
            )
            return
        if self._syncer is None:
            self._syncer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="hoshu-journal"
            )
        self._syncing[session_id] = self._syncer.submit(_fsync, session_id, fd)

    async def synced(self, session_id: str) -> None:
        """Return once the entry of ``session_id`` is on stable storage (or its fsync
        failed, which is logged); at once for a session without a pending entry."""
        fut = self._syncing.get(session_id)
        if fut is not None:
            await asyncio.wrap_future(fut)

    def closed(self, session_id: str) -> None:
        """The session's end event is written: forget it."""
        path = self._path(session_id)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        fd = self._held.pop(session_id, None)
        fut = self._syncing.pop(session_id, None)
        if fd is None:
            return
        if fut is None:
            os.close(fd)
        else:  # the descriptor closes after its fsync, never under it (exactly once)
            fut.add_done_callback(lambda _done: os.close(fd))


def _fsync(session_id: str, fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        log.error(
            "cannot journal session %s (fsync: %s); a power cut would leave it open",
            session_id,
            exc.strerror or exc,
        )


def _recording_summary(store: RecordingStore, name: str) -> tuple[int, str | None]:
    try:
        size, sha = digest(store, name)
    except RecordingFileError:
        return 0, None
    return size, sha


def end_lost_sessions(
    recordings_dir: Path,
    emitter: Emitter,
    clock: Callable[[], datetime],
    *,
    store: RecordingStore | None = None,
) -> list[str]:
    """Write ``session.ended`` (``broker_lost``) for each session a previous run left open.

    Returns the session ids ended.  An entry is removed only after its event is
    in the log, so a failing audit log leaves it for the next start.  ``store``
    holds the recordings (default: files in ``recordings_dir``).
    """
    store = store if store is not None else FileStore(recordings_dir)
    jdir = journal_dir(recordings_dir)
    if not jdir.is_dir():
        return []
    ended: list[str] = []
    for path in sorted(jdir.glob("*.json")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live broker (another replica) still runs this session
            try:
                if os.fstat(fd).st_size > _MAX_ENTRY_BYTES:
                    raise ValueError("too large")
                with os.fdopen(os.dup(fd), encoding="utf-8") as f:
                    entry = json.load(f)
                cols = dict(entry["columns"])
                details = dict(entry.get("details") or {})
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("unreadable session journal %s (%s); left in place", path.name, exc)
                continue
            _end_one(path, cols, details, store, emitter, clock)
            ended.append(path.stem)
        finally:
            os.close(fd)
    return ended


def _end_one(
    path: Path,
    cols: dict[str, Any],
    details: dict[str, Any],
    store: RecordingStore,
    emitter: Emitter,
    clock: Callable[[], datetime],
) -> None:
    """One ``session.ended`` (``broker_lost``) for a journal entry, then the entry goes."""
    sid = path.stem
    name = str(details.get("recording") or "")
    size, sha = _recording_summary(store, name) if name else (0, None)
    cols["TargetSessionId"] = sid
    emitter.emit(
        new_event(
            "session.ended",
            clock=clock,
            EventResult="Partial",
            EventResultDetails="broker_lost",
            EventMessage=f"session {sid} ended with the broker that ran it",
            RecordingSize=size,
            RecordingSHA256=sha,
            details={"kind": details.get("kind"), "exit_status": None, "recording": name or None},
            **{k: v for k, v in cols.items() if v is not None},
        )
    )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    log.warning("session %s was left open by the previous run: ended (broker_lost)", sid)


class SessionRows(Protocol):
    """Where a registry notes its sessions beyond its memory: the cluster's session
    directory (:class:`broker.live.directory.SessionDirectory`, PostgreSQL).  Called on
    the event loop: implementations must not block (they write on a thread)."""

    def added(self, session: Any) -> None:
        """A session (a ``LiveSession``) started."""

    def removed(self, session_id: str) -> None:
        """The session stopped running; its ``session.ended`` is not written yet."""

    def ended(self, session_id: str) -> None:
        """Its ``session.ended`` is in the audit log: forget it."""
