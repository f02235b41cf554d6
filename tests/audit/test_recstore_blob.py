"""Recordings in Blob storage under failure: a broker killed mid-session, the store
going away mid-session, a container that is not there at start, timed appends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from audit.recstore import RecordingFileError, StoreUnavailable
from audit.recstore.blob import BlobStore, BlobWriter
from tests.fixtures.azurite import Azurite
from tests.support import free_port, poll_sync

ROOT = Path(__file__).resolve().parents[2]
HEADER = b'{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000}\n'

# A broker's recorder in its own process: appends every 0.1 s, reports after each
# write how much it wrote and how much is stored, until it is killed.
WRITER = r"""
import json, sys, time
from broker.identity import azure_credential
from audit.recstore.blob import BlobStore
url, cert = sys.argv[1], sys.argv[2]
store = BlobStore(url, azure_credential(), connection_verify=cert, flush_interval_s=0.1)
w = store.create("crash.cast")
written = 0
for i in range(1_000_000):
    line = f'[{i / 100:.6f}, "o", "output line {i}\\r\\n"]\n'.encode()
    w.write(line)
    written += len(line)
    print(json.dumps({"written": written, "stored": w.stored}), flush=True)
    time.sleep(0.005)
"""


def expected_stream(size: int) -> bytes:
    out, i = bytearray(), 0
    while len(out) < size:
        out += f'[{i / 100:.6f}, "o", "output line {i}\\r\\n"]\n'.encode()
        i += 1
    return bytes(out)


def blob_store(az: Azurite, url: str, cred: Any, **kw: Any) -> BlobStore:
    return BlobStore(url, cred, connection_verify=str(az.cert), **kw)


def test_killed_broker_leaves_everything_up_to_its_last_append(
    azurite: Azurite, blob_container: str, blob_credential: Any, identity_endpoint: Any
) -> None:
    """A writer process killed with SIGKILL mid-session (no close, no flush) leaves in
    the blob an exact prefix of what it recorded, at least all it had appended; the
    recording is not sealed (it is a lost session's)."""
    env = {**os.environ, **identity_endpoint.env(), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, blob_container, str(azurite.cert)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    try:
        last: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while last.get("stored", 0) < 20_000:  # a few appends have landed
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "the writer stopped reporting"
            last = json.loads(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    store = blob_store(azurite, blob_container, blob_credential)
    info = store.stat("crash.cast")
    assert info is not None and not info.finished
    kept = b"".join(store.chunks("crash.cast"))
    assert len(kept) >= last["stored"]
    assert kept == expected_stream(len(kept))[: len(kept)]
    lost = last["written"] - len(kept)
    assert lost < 64 * 1024  # at most what was waiting for its 0.1 s append


def test_store_going_away_mid_session_fails_the_writer(
    azurite_factory: Any, blob_credential: Any
) -> None:
    """Blob storage stops answering during a session: the next write (or the periodic
    check the session watcher makes) raises a recording error, so the session ends;
    close raises too.  What was appended before stays."""
    az: Azurite = azurite_factory()
    url = az.new_container(blob_credential)
    store = blob_store(az, url, blob_credential, flush_interval_s=0.05, timeout_s=2.0)
    w = store.create("outage.cast")
    assert isinstance(w, BlobWriter)
    w.write(HEADER)
    poll_sync(lambda: w.stored == len(HEADER), 10, "the header to be appended")
    az.stop()
    start = time.monotonic()

    def failed() -> bool:
        try:
            w.write(b'[1.0, "o", "more"]\n')
            w.check()
        except RecordingFileError:
            return True
        return False

    poll_sync(failed, 30, "the writer to fail", interval_s=0.05)
    took = time.monotonic() - start
    with pytest.raises(RecordingFileError, match="could not be appended"):
        w.write(b"x")
    with pytest.raises(RecordingFileError):
        w.close()
    print(f"writer failed {took:.2f} s after Blob storage stopped")
    assert took < 15
    az.start()
    assert blob_store(az, url, blob_credential).read("outage.cast") == HEADER


def test_missing_container_at_start_is_one_line_naming_the_url(
    azurite: Azurite, blob_credential: Any
) -> None:
    url = azurite.container_url("no-such-container")
    with pytest.raises(StoreUnavailable) as err:
        blob_store(azurite, url, blob_credential).check()
    assert str(err.value) == f"recordings container {url} does not exist"


def test_unreachable_store_at_start_is_one_line_naming_the_url(blob_credential: Any) -> None:
    url = f"https://127.0.0.1:{free_port()}/devstoreaccount1/recordings"
    with pytest.raises(StoreUnavailable) as err:
        BlobStore(url, blob_credential, timeout_s=2.0, retries=0).check()
    msg = str(err.value)
    assert msg.startswith(f"recordings container {url} cannot be reached: ")
    assert "\n" not in msg


def test_session_cannot_start_when_the_recording_cannot_be_created(blob_credential: Any) -> None:
    url = f"https://127.0.0.1:{free_port()}/devstoreaccount1/recordings"
    store = BlobStore(url, blob_credential, timeout_s=2.0, retries=0)
    with pytest.raises(RecordingFileError, match="cannot be created"):
        store.create("s.cast")


@pytest.mark.parametrize(
    "url",
    [
        "http://acct.blob.core.windows.net/recordings",
        "https://acct.blob.core.windows.net/",
        "https://acct.blob.core.windows.net/Bad_Name",
        "https://acct.blob.core.windows.net/rec?sv=x",
    ],
)
def test_recordings_url_must_be_an_https_container(url: str) -> None:
    """Bearer tokens go over HTTPS only, and the URL must name a container (no SAS)."""
    with pytest.raises(StoreUnavailable, match="recordings_url"):
        BlobStore(url, object())


def test_a_quiet_session_is_stored_within_the_flush_interval(
    azurite: Azurite, blob_container: str, blob_credential: Any
) -> None:
    """One event in a quiet session reaches Blob storage within the interval, and a
    busy session is appended in batches, not once per write."""
    store = blob_store(
        azurite, blob_container, blob_credential, flush_interval_s=0.3, flush_bytes=1024 * 1024
    )
    w = store.create("quiet.cast")
    assert isinstance(w, BlobWriter)
    w.write(HEADER)
    poll_sync(lambda: w.stored == len(HEADER), 5, "the header's append")
    line = b'[0.5, "o", "$ "]\n'
    start = time.monotonic()
    w.write(line)
    poll_sync(lambda: w.stored == len(HEADER) + len(line), 5, "the quiet event's append")
    assert time.monotonic() - start < 0.3 + 2.0  # the interval, plus one append on a busy machine
    for i in range(300):
        w.write(f'[{i}.0, "o", "x"]\n'.encode())
    w.close()
    assert w.appends < 30  # 300 writes, a handful of appends
    assert store.stat("quiet.cast").finished  # type: ignore[union-attr]


def test_a_store_that_cannot_keep_up_fails_the_writer(
    azurite: Azurite, blob_container: str, blob_credential: Any
) -> None:
    """More than max_backlog bytes waiting: the writer fails instead of growing
    without bound."""
    store = blob_store(
        azurite,
        blob_container,
        blob_credential,
        flush_interval_s=60,
        flush_bytes=4 * 1024 * 1024,
        max_backlog=64 * 1024,
    )
    w = store.create("backlog.cast")
    with pytest.raises(RecordingFileError, match="not keeping up"):
        for _ in range(100):
            w.write(b"y" * 1024)
