"""The recording store contract, run against both backends: files in a directory and
append blobs in a real Blob service (Azurite, HTTPS, signed in with the broker's
managed-identity credential)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.recstore import (
    RecordingExists,
    RecordingFileError,
    RecordingMissing,
    RecordingStore,
    RecordingTampered,
    digest,
    follow,
    verify,
)
from audit.recstore.blob import BlobStore
from audit.recstore.files import FileStore
from tests.fixtures.azurite import Azurite
from tests.support import poll_sync

HEADER = b'{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000}\n'


def cast_lines(n: int, start: int = 0) -> list[bytes]:
    return [
        f'[{i * 0.01:.6f}, "o", "line {i} \\u65e5\\u672c \\r\\n"]\n'.encode()
        for i in range(start, start + n)
    ]


@pytest.fixture(params=["files", "blob"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordingStore]:
    if request.param == "files":
        yield FileStore(tmp_path / "recordings")
        return
    azurite: Azurite = request.getfixturevalue("azurite")
    url = request.getfixturevalue("blob_container")
    cred = request.getfixturevalue("blob_credential")
    s = BlobStore(url, cred, connection_verify=str(azurite.cert), flush_interval_s=0.05)
    yield s
    s.close()


def test_recording_reads_back_byte_identical(store: RecordingStore) -> None:
    """What the recorder writes is what a reader gets: the whole, a range, the digest."""
    store.check()
    data = [HEADER, *cast_lines(500)]
    w = store.create("s-1.cast")
    for chunk in data:
        w.write(chunk)
    w.close()
    whole = b"".join(data)
    assert b"".join(store.chunks("s-1.cast")) == whole
    assert store.read("s-1.cast", 10, 20) == whole[10:30]
    assert store.read("s-1.cast", len(whole) + 5) == b""
    assert digest(store, "s-1.cast") == (len(whole), hashlib.sha256(whole).hexdigest())
    info = store.stat("s-1.cast")
    assert info is not None and info.size == len(whole)
    assert [r.name for r in store.list()] == ["s-1.cast"]


def test_existing_recording_is_never_overwritten(store: RecordingStore) -> None:
    w = store.create("s-2.cast")
    w.write(HEADER)
    w.close()
    with pytest.raises(RecordingExists, match=r"s-2\.cast"):
        store.create("s-2.cast")
    assert b"".join(store.chunks("s-2.cast")) == HEADER


@pytest.mark.parametrize("name", ["../x.cast", ".live", "a/b.cast", "", "x" * 200, "a..b"])
def test_names_that_could_escape_the_store_are_refused(store: RecordingStore, name: str) -> None:
    with pytest.raises(RecordingFileError, match="invalid recording name"):
        store.create(name)


def test_missing_recording_is_a_clear_error(store: RecordingStore) -> None:
    assert store.stat("none.cast") is None
    with pytest.raises(RecordingMissing, match=r"none\.cast"):
        b"".join(store.chunks("none.cast"))
    assert store.delete("none.cast") is False


def test_tampered_recording_fails_verify_naming_it(
    store: RecordingStore, request: pytest.FixtureRequest
) -> None:
    """A recording changed after its session ended no longer matches the size and
    SHA-256 of its end event; verify names the recording."""
    data = HEADER + b"".join(cast_lines(50))
    w = store.create("s-3.cast")
    w.write(data)
    w.close()
    verify(store, "s-3.cast", hashlib.sha256(data).hexdigest(), len(data))
    forged = data.replace(b"line 7 ", b"line X ")
    if isinstance(store, FileStore):
        store.path("s-3.cast").write_bytes(forged)
    else:  # someone with write access replaces the blob
        assert isinstance(store, BlobStore)
        azurite: Azurite = request.getfixturevalue("azurite")
        with azurite.service(request.getfixturevalue("blob_credential")) as svc:
            svc.get_blob_client(store.url.rsplit("/", 1)[1], "s-3.cast").upload_blob(
                forged, overwrite=True
            )
    with pytest.raises(RecordingTampered, match=r"recording s-3\.cast .* does not match"):
        verify(store, "s-3.cast", hashlib.sha256(data).hexdigest(), len(data))


def test_follower_on_another_replica_sees_the_recording_as_it_grows(
    store: RecordingStore, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A second store instance (another replica) tails the recording while it is being
    written, and ends up with exactly the bytes written."""
    if isinstance(store, FileStore):
        reader: RecordingStore = FileStore(store.directory)
    else:
        assert isinstance(store, BlobStore)
        azurite: Azurite = request.getfixturevalue("azurite")
        reader = BlobStore(
            store.url,
            request.getfixturevalue("blob_credential"),
            connection_verify=str(azurite.cert),
        )
    w = store.create("s-4.cast")
    w.write(HEADER)

    def stored() -> int:
        info = reader.stat("s-4.cast")
        return info.size if info else 0

    poll_sync(stored, 10, "the header to be stored")
    done = False
    got: list[bytes] = []
    tail = follow(reader, "s-4.cast", poll_s=0.02, stop=lambda: done, idle_timeout_s=30)
    got.append(next(tail))
    assert got == [HEADER]
    written = [HEADER]
    for i in range(5):  # each batch arrives at the follower before the next is written
        batch = b"".join(cast_lines(20, start=i * 20))
        w.write(batch)
        written.append(batch)
        seen = b"".join(got)
        while len(seen) < len(b"".join(written)):
            got.append(next(tail))
            seen = b"".join(got)
        assert seen == b"".join(written)
    w.close()
    done = True
    got.extend(tail)  # ends: sealed (Blob) or told to stop (files)
    assert b"".join(got) == b"".join(written)


def test_delete_removes_the_recording(store: RecordingStore) -> None:
    w = store.create("s-5.cast")
    w.write(HEADER)
    w.close()
    assert store.delete("s-5.cast") is True
    assert store.stat("s-5.cast") is None
    assert list(store.list()) == []
