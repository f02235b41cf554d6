"""The auditors' recording playback served from Azure Blob storage (Azurite): the
bytes, their SHA-256 and the ``recording.viewed`` event agree, also while the
recording is still being written on another replica."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from audit.index import AuditIndex
from audit.recstore.blob import BlobStore, BlobWriter
from audit.testing import CapturingEmitter
from tests.audit.conftest import auditor_api
from tests.audit.planned import plan_events
from tests.fixtures.azurite import Azurite
from tests.support import poll_sync

HEADER = b'{"version": 2, "width": 80, "height": 24, "timestamp": 1700000000}\n'
AUDITOR = {"authorization": "Bearer platform-auditor"}


@pytest.fixture
def blob(azurite: Azurite, blob_container: str, blob_credential: Any) -> Iterator[BlobStore]:
    store = BlobStore(
        blob_container, blob_credential, connection_verify=str(azurite.cert), flush_interval_s=0.05
    )
    yield store
    store.close()


@pytest.fixture
def client(tmp_path: Path, blob: BlobStore) -> Iterator[tuple[TestClient, CapturingEmitter]]:
    index = AuditIndex.from_url(f"sqlite:///{tmp_path / 'i.db'}")
    index.add([e.record for e in plan_events()])
    with auditor_api(index, recordings_dir=tmp_path / "not-used", recordings=blob) as served:
        yield served


def test_recording_plays_back_from_blob_storage(
    client: tuple[TestClient, CapturingEmitter], blob: BlobStore
) -> None:
    c, em = client
    data = HEADER + b'[0.1, "o", "$ ls\\r\\n"]\n'
    w = blob.create("s1.cast")
    w.write(data)
    w.close()
    r = c.get("/v1/recordings/s1", headers=AUDITOR)
    assert r.status_code == 200, r.text
    assert r.content == data
    assert r.headers["X-Recording-SHA256"] == hashlib.sha256(data).hexdigest()
    (viewed,) = em.of_type("recording.viewed")
    assert viewed.get("RecordingSHA256") == hashlib.sha256(data).hexdigest()
    assert viewed.get("RecordingSize") == len(data)


def test_live_recording_is_served_as_far_as_it_is_stored(
    client: tuple[TestClient, CapturingEmitter], blob: BlobStore
) -> None:
    """A recording another replica is still appending to: what is served is exactly
    what the SHA-256 header describes."""
    c, _ = client
    w = blob.create("s1.cast")
    assert isinstance(w, BlobWriter)
    w.write(HEADER)
    poll_sync(lambda: w.stored == len(HEADER), 10, "the header to be appended")
    r = c.get("/v1/recordings/s1", headers=AUDITOR)
    assert r.status_code == 200
    assert r.headers["X-Recording-SHA256"] == hashlib.sha256(r.content).hexdigest()
    assert r.content.startswith(HEADER)
    w.close()


def test_missing_recording_is_404(client: tuple[TestClient, CapturingEmitter]) -> None:
    c, _ = client
    assert c.get("/v1/recordings/s1", headers=AUDITOR).status_code == 404
