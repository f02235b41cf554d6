"""The front door's recorder writing into Azure Blob storage (Azurite): the same
session gives the same bytes and SHA-256 as a file, and a killed broker's session
is ended with what Blob storage holds.  (A store failing mid-session, through the
recorder and the session watcher: tests/frontdoor/test_recordings_blob.py.)"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.recording import read_cast
from audit.recstore import digest
from audit.recstore.blob import BlobStore, BlobWriter
from audit.recstore.files import FileStore
from audit.testing import CapturingEmitter
from broker.live.journal import end_lost_sessions
from broker.live.recorder import Recording, default_opener, store_opener
from tests.fixtures.azurite import Azurite
from tests.support import poll_sync


class FakeClock:
    """A monotonic clock moved by hand (the recorder's event times)."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def session(rec: Recording, clock: FakeClock) -> None:
    """A short shell session: output (ASCII, Japanese, a UTF-8 character split across
    reads, colours), input, a resize."""
    rec.output(b"login: ")
    clock.advance(0.4)
    rec.input(b"ls -l\r")
    rec.output("\u691c\u4f53 ".encode()[:4])
    rec.output("\u691c\u4f53 ".encode()[4:] + b"\x1b[31mred\x1b[0m\r\n")
    clock.advance(1.2)
    rec.resize(132, 43)
    for i in range(200):
        rec.output(f'row {i}\tvalue "{i * 7}"\r\n'.encode())
        clock.advance(0.01)


def record(directory: Path, opener: Any) -> tuple[Any, bytes | None]:
    clock = FakeClock()
    rec = Recording.open(
        directory,
        "sess-1",
        width=80,
        height=24,
        env={"TERM": "xterm", "SHELL": "/bin/sh"},
        title="eng@analyzer-1",
        wall_clock=lambda: 1_764_000_000.0,
        monotonic=clock.monotonic,
        opener=opener,
    )
    session(rec, clock)
    summary = rec.close()
    path = directory / "sess-1.cast"
    return summary, path.read_bytes() if path.exists() else None


def test_blob_recording_is_byte_identical_to_the_file_one(
    tmp_path: Path, azurite: Azurite, blob_container: str, blob_credential: Any
) -> None:
    """The same session recorded to a file and to Blob storage: the same bytes, the
    same SHA-256 in the end event, and the blob plays as asciicast v2."""
    file_summary, file_bytes = record(tmp_path / "files", default_opener)
    blob = BlobStore(blob_container, blob_credential, connection_verify=str(azurite.cert))
    blob_summary, local = record(tmp_path / "unused", store_opener(blob))
    assert local is None  # nothing on the replica's disk
    stored = b"".join(blob.chunks("sess-1.cast"))
    assert stored == file_bytes
    assert blob_summary.sha256 == file_summary.sha256 == hashlib.sha256(stored).hexdigest()
    assert (blob_summary.size, blob_summary.sha256) == digest(blob, "sess-1.cast")
    (tmp_path / "play.cast").write_bytes(stored)
    header, events = read_cast(tmp_path / "play.cast")
    assert header["title"] == "eng@analyzer-1"
    output = "".join(e.data for e in events if e.code == "o")
    assert "\u691c\u4f53 \x1b[31mred\x1b[0m\r\n" in output  # the split character whole


def test_file_store_writes_what_the_recorder_always_wrote(tmp_path: Path) -> None:
    """The default store through the recorder: the same file, mode and bytes as before."""
    _, direct = record(tmp_path / "a", default_opener)
    summary, via_store = record(tmp_path / "b", store_opener(FileStore(tmp_path / "b")))
    assert via_store == direct
    assert (tmp_path / "b" / "sess-1.cast").stat().st_mode & 0o777 == 0o640
    assert summary.sha256 == hashlib.sha256(direct or b"").hexdigest()


def test_lost_session_is_ended_with_what_blob_storage_holds(
    tmp_path: Path, azurite: Azurite, blob_container: str, blob_credential: Any
) -> None:
    """A broker died mid-session: at the next start its journal entry becomes a
    ``session.ended`` (broker_lost) carrying the size and SHA-256 of what the dead
    broker had appended to Blob storage."""
    store = BlobStore(
        blob_container, blob_credential, connection_verify=str(azurite.cert), flush_interval_s=0.05
    )
    clock = FakeClock()
    rec = Recording.open(
        tmp_path,
        "sess-3",
        width=80,
        height=24,
        env={},
        title="t",
        monotonic=clock.monotonic,
        opener=store_opener(store),
    )
    rec.output(b"$ uptime\r\n up 3 days\r\n")
    rec.flush()
    writer = rec._fh
    assert isinstance(writer, BlobWriter)
    poll_sync(lambda: writer.stored == rec._size, 10, "the output to be appended")
    # the broker dies here: no close, no end event; its journal entry stays behind
    journal = tmp_path / ".live"
    journal.mkdir()
    (journal / "sess-3.json").write_text(
        json.dumps(
            {
                "columns": {"TargetSessionId": "sess-3", "ActorUsername": "eng"},
                "details": {"kind": "shell", "recording": "sess-3.cast"},
            }
        )
    )
    em = CapturingEmitter()
    assert end_lost_sessions(tmp_path, em, lambda: datetime.now(UTC), store=store) == ["sess-3"]
    (ended,) = em.events
    assert ended.get("EventResultDetails") == "broker_lost"
    size, sha = digest(store, "sess-3.cast")
    assert (ended.get("RecordingSize"), ended.get("RecordingSHA256")) == (size, sha)
    assert size == writer.stored > 0
