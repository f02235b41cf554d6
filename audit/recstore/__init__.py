"""Where session recordings live: one interface, two backends.

The front door writes recordings and auditors read them; any broker replica may
do either, so recordings live in a :class:`RecordingStore`, not on one replica's
disk (DESIGN rule 9):

* :class:`~audit.recstore.files.FileStore` (the default): ``<recordings_dir>/<name>``,
  exactly the files and bytes the broker has always written;
* :class:`~audit.recstore.blob.BlobStore`: append blobs in an Azure Blob container
  (``settings.recordings_url``; the WORM container of infra/bicep), appended while
  the session runs, at least every ``flush_interval_s`` or every ``flush_bytes``.

A recording is named ``<session id>.cast`` (:func:`check_name` refuses anything
else that could escape the store).  Writers are fail closed: :meth:`RecordingStore.create`
raises if the recording cannot be created (the session must not start) and
refuses to overwrite; a write or append that fails makes the writer raise on its
next call (the session must end).  Readers: the whole recording, a byte range
(:func:`follow` tails a recording still being written, from any replica), a
listing and deletion for retention.  A deletion the store refuses because the
recording is still under its immutability period raises :class:`RecordingRetained`:
retention reads that as "not yet".

Error tree (all are :class:`~audit.recording.RecordingFileError`, an ``AuditError``)::

    RecordingFileError        a recording cannot be written or read
    ├── RecordingExists       create(): the name is taken (nothing is overwritten)
    ├── RecordingMissing      no recording of that name
    ├── RecordingTampered     verify(): the stored bytes are not the recorded ones
    ├── RecordingRetained     delete(): still inside its retention period (WORM)
    └── StoreUnavailable      the store cannot be reached or its container is missing

Third-party errors (``OSError``, ``azure.core.exceptions``) are translated once,
in the backend that meets them.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from audit.recording import RecordingFileError

READ_CHUNK = 4 * 1024 * 1024
MAX_READ_BYTES = 2 * 1024 * 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,159}")


class RecordingExists(RecordingFileError):
    """A recording of that name is already stored; it is never overwritten."""


class RecordingMissing(RecordingFileError):
    """No recording of that name is stored."""


class RecordingTampered(RecordingFileError):
    """The stored bytes do not have the size and SHA-256 recorded at the session's end."""


class RecordingRetained(RecordingFileError):
    """The store refused a deletion: the recording is inside its immutability period."""


class StoreUnavailable(RecordingFileError):
    """The recording store cannot be reached, refuses the broker, or has no container."""


def check_name(name: str) -> str:
    """``name`` if it is a plain object name (letters, digits, ``.-_``, no leading dot)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise RecordingFileError(f"invalid recording name {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class StoredRecording:
    name: str
    size: int
    modified: datetime  # last written (UTC)
    # closed by its writer (a sealed append blob); a file cannot tell, so False
    finished: bool


class RecordingWriter(Protocol):
    """One recording being written; not thread-safe (one writer per session)."""

    name: str

    def write(self, data: bytes | memoryview, /) -> int:
        """Take ``data`` (all of it, or raise RecordingFileError); returns its length."""

    def check(self) -> None:
        """Raise the RecordingFileError of an earlier failed write, if any."""

    def close(self) -> None:
        """Store everything taken so far and finish the recording (idempotent);
        raises RecordingFileError if that fails."""


class RecordingStore(Protocol):
    """Recordings by name; every method raises only RecordingFileError subclasses."""

    @property
    def location(self) -> str:
        """Where the recordings are, for messages (a directory or a container URL)."""

    def check(self) -> None:
        """At start: raise StoreUnavailable (one line naming the location) unless
        recordings can be written here."""

    def create(self, name: str) -> RecordingWriter:
        """A writer for a new recording; RecordingExists if the name is taken."""

    def stat(self, name: str) -> StoredRecording | None:
        """Size and last write of a stored recording, or None."""

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes from ``offset`` (to the end if None); fewer at the end."""

    def chunks(self, name: str) -> Iterator[bytes]:
        """The whole recording, in chunks (playback, download, verification)."""

    def list(self) -> Iterator[StoredRecording]:
        """Every stored recording (retention)."""

    def delete(self, name: str) -> bool:
        """Delete; False if there was none; RecordingRetained if the store refuses."""


def digest(store: RecordingStore, name: str) -> tuple[int, str]:
    """(size, SHA-256) of the stored bytes, to compare with the ``session.ended`` event."""
    h, size = hashlib.sha256(), 0
    for chunk in store.chunks(name):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def verify(store: RecordingStore, name: str, sha256: str, size: int | None = None) -> None:
    """Raise :class:`RecordingTampered`, naming the recording, unless its stored bytes
    have the SHA-256 (and size) the session's end event recorded."""
    got_size, got_sha = digest(store, name)
    if got_sha != sha256.lower() or (size is not None and got_size != size):
        raise RecordingTampered(
            f"recording {name} in {store.location} does not match its session's end event "
            f"(stored: {got_size} bytes, SHA-256 {got_sha}; recorded: "
            f"{size if size is not None else '?'} bytes, SHA-256 {sha256})"
        )


def read_upto(
    store: RecordingStore, name: str, size: int, *, chunk: int = READ_CHUNK
) -> Iterator[bytes]:
    """The first ``size`` bytes of ``name``, in ranged reads: exactly what a digest
    taken earlier covered, though a live recording has grown since."""
    offset = 0
    while offset < size:
        data = store.read(name, offset, min(chunk, size - offset))
        if not data:
            raise RecordingFileError(f"recording {name} in {store.location} shrank while read")
        offset += len(data)
        yield data


def follow(
    store: RecordingStore,
    name: str,
    *,
    offset: int = 0,
    poll_s: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
    idle_timeout_s: float = 3600.0,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    chunk: int = READ_CHUNK,
) -> Iterator[bytes]:
    """The bytes of ``name`` from ``offset`` on, as they are stored, while it grows.

    Any replica can follow any recording this way (ranged reads of the growing
    recording, every ``poll_s``).  Ends when the recording is finished and read to
    its end, when ``stop()`` says so (e.g. the session ended) after a last read, or
    when nothing new arrived for ``idle_timeout_s`` (a writer that died).  A missing
    recording raises :class:`RecordingMissing`.
    """
    last_new = monotonic()
    while True:
        info = store.stat(name)
        if info is None:
            raise RecordingMissing(f"no recording {name} in {store.location}")
        stopping = stop()
        while offset < info.size:
            data = store.read(name, offset, min(chunk, info.size - offset))
            if not data:
                break
            offset += len(data)
            last_new = monotonic()
            yield data
        if info.finished and offset >= info.size:
            return
        if stopping or monotonic() - last_new > idle_timeout_s:
            return
        sleep(poll_s)


__all__ = [
    "MAX_READ_BYTES",
    "READ_CHUNK",
    "RecordingExists",
    "RecordingFileError",
    "RecordingMissing",
    "RecordingRetained",
    "RecordingStore",
    "RecordingTampered",
    "RecordingWriter",
    "StoreUnavailable",
    "StoredRecording",
    "check_name",
    "digest",
    "follow",
    "read_upto",
    "verify",
]
