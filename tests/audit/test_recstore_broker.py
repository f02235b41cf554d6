"""The broker's choice of recording store, and its start against Blob storage that
is not there: one line naming the URL, and no broker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from audit.recstore.blob import BlobStore
from audit.recstore.files import FileStore
from broker.assembly import recording_store
from broker.settings import BrokerSettings
from tests.fixtures.azurite import Azurite
from tests.support.identity import IdentityEndpoint

ROOT = Path(__file__).resolve().parents[2]


def test_files_by_default_blob_when_recordings_url_is_set(
    tmp_path: Path, azurite: Azurite, blob_container: str, blob_credential: Any, monkeypatch: Any
) -> None:
    assert isinstance(recording_store(BrokerSettings(data_dir=tmp_path)), FileStore)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(azurite.cert))  # trust Azurite's certificate
    store = recording_store(
        BrokerSettings(
            data_dir=tmp_path,
            recordings_url=blob_container,
            recordings_flush_s=0.5,
            recordings_flush_kib=64,
        )
    )
    assert isinstance(store, BlobStore) and store.location == blob_container
    w = store.create("s.cast")  # signed in as the managed identity, over HTTPS
    w.write(b"{}\n")
    w.close()
    assert store.read("s.cast") == b"{}\n"


def test_hoshu_serve_stops_with_one_line_when_the_container_is_missing(
    tmp_path: Path, azurite: Azurite, identity_endpoint: IdentityEndpoint
) -> None:
    url = azurite.container_url("no-such-container")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
    env.update(
        identity_endpoint.env(),
        REQUESTS_CA_BUNDLE=str(azurite.cert),
        HOSHU_DATA_DIR=str(tmp_path / "data"),
        HOSHU_RECORDINGS_URL=url,
        HOSHU_AZURE_CLIENT_ID=identity_endpoint.client_id,
    )
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "hoshu"), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"hoshu: recordings container {url} does not exist"
    )
