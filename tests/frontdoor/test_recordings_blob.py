"""Shell sessions through the front door recorded into Azure Blob storage (a real
Azurite over HTTPS, the broker's managed-identity credential): the recording is
in the container, not on the replica's disk, and matches its end event; Blob
storage going away ends the session (recorded or refused)."""

from __future__ import annotations

import asyncio
from typing import Any

from audit.recording import read_cast
from audit.recstore import digest
from audit.recstore.blob import BlobStore
from broker.live.recorder import store_opener
from tests.fixtures.azurite import Azurite
from tests.frontdoor.harness import World, open_shell, paramiko_client, read_until, shell_ready
from tests.support import free_port, poll


async def test_shell_session_is_recorded_in_blob_storage(
    granted: World, azurite: Azurite, blob_container: str, blob_credential: Any
) -> None:
    w = granted
    store = BlobStore(blob_container, blob_credential, connection_verify=str(azurite.cert))
    w.door.recording_opener = store_opener(store)
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    chan.send(b"echo blob-$((6*7))\n")
    await asyncio.to_thread(read_until, chan, b"blob-42")
    chan.send(b"exit\n")
    await poll(lambda: bool(w.events.of_type("session.ended")), deadline_s=10)
    t.close()
    ended = w.events.of_type("session.ended")[0]
    name = ended.details["recording"]
    assert not (w.tmp / "recordings" / name).exists()  # nothing on the replica's disk
    info = store.stat(name)
    assert info is not None and info.finished  # sealed at the session's end
    assert digest(store, name) == (ended.get("RecordingSize"), ended.get("RecordingSHA256"))
    local = w.tmp / "played.cast"
    local.write_bytes(b"".join(store.chunks(name)))
    _, events = read_cast(local)
    assert "blob-42" in "".join(e.data for e in events if e.code == "o")


async def test_blob_storage_going_away_ends_the_session(
    granted: World, azurite_factory: Any, blob_credential: Any
) -> None:
    """Azurite stops mid-session: the session ends with recording_failed within a few
    seconds (the failed append surfaces at the next timed flush), the engineer is told."""
    w = granted
    az: Azurite = azurite_factory()
    store = BlobStore(
        az.new_container(blob_credential),
        blob_credential,
        connection_verify=str(az.cert),
        flush_interval_s=0.2,
        timeout_s=2.0,
    )
    w.door.recording_opener = store_opener(store)
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    await asyncio.to_thread(shell_ready, chan)
    await asyncio.to_thread(az.stop)
    chan.send(b"echo still-here\n")
    took = await poll(chan.exit_status_ready, deadline_s=20, what="the session to end")
    seen = await asyncio.to_thread(read_until, chan, b"recording", 5)
    t.close()
    assert b"hoshu: session ended: recording failed" in seen
    await poll(lambda: bool(w.events.of_type("session.ended")))
    assert w.events.of_type("session.ended")[0].get("EventResultDetails") == "recording_failed"
    print(f"session ended {took:.1f} s after Blob storage stopped")
    assert took < 10


async def test_session_is_refused_when_its_recording_cannot_be_created(
    granted: World, blob_credential: Any
) -> None:
    """Blob storage unreachable when a session starts: the session is refused."""
    w = granted
    url = f"https://127.0.0.1:{free_port()}/devstoreaccount1/recordings"
    w.door.recording_opener = store_opener(
        BlobStore(url, blob_credential, timeout_s=2.0, retries=0)
    )
    t = await asyncio.to_thread(paramiko_client, w)
    chan = await asyncio.to_thread(open_shell, t)
    seen = await asyncio.to_thread(read_until, chan, b"cannot be written", 15)
    t.close()
    assert b"session refused: the recording cannot be written" in seen
    assert not w.events.of_type("session.started")
