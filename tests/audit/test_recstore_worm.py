"""Retention on a WORM container: a recording still inside its immutability period
is not deleted, and that is "not yet", not an error.

Azurite has no immutability policies, so a small HTTPS front passes every
request on to Azurite and answers a Delete Blob of a blob under its policy as
Blob storage documents it (409, ``x-ms-error-code: BlobImmutableDueToPolicy``,
an XML ``<Error>`` body).  Everything else is Azurite's own answer.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from audit.recstore import RecordingRetained
from audit.recstore.blob import BlobStore
from audit.retention import Retention, RetentionPolicy
from audit.testing import CapturingEmitter
from tests.fixtures.azurite import Azurite

IMMUTABLE = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobImmutableDueToPolicy'
    b"</Code><Message>This operation is not permitted as the blob is immutable due "
    b"to a policy.</Message></Error>"
)
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class WormFront:
    """HTTPS on 127.0.0.1 in front of Azurite; blobs named in ``locked`` cannot be deleted."""

    def __init__(self, az: Azurite) -> None:
        self.az = az
        self.locked: set[str] = set()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                blob = unquote(urlsplit(self.path).path).rsplit("/", 1)[-1]
                if self.command == "DELETE" and blob in front.locked:
                    self._send(
                        409,
                        [
                            ("x-ms-error-code", "BlobImmutableDueToPolicy"),
                            ("Content-Type", "application/xml"),
                        ],
                        IMMUTABLE,
                    )
                    return
                ctx = ssl.create_default_context(cafile=str(front.az.cert))
                conn = http.client.HTTPSConnection(
                    "127.0.0.1", front.az.port, context=ctx, timeout=10
                )
                try:
                    conn.request(
                        self.command,
                        self.path,
                        body=body or None,
                        headers={
                            k: v
                            for k, v in self.headers.items()
                            if k.lower() not in _HOP | {"host"}
                        }
                        | {"Host": f"127.0.0.1:{front.az.port}"},
                    )
                    resp = conn.getresponse()
                    data = resp.read()
                    self._send(
                        resp.status,
                        [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP],
                        data,
                    )
                finally:
                    conn.close()

            def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(az.cert), str(az.key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, container_url: str) -> str:
        return container_url.replace(f":{self.az.port}/", f":{self.port}/")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def worm(azurite: Azurite) -> Iterator[WormFront]:
    front = WormFront(azurite)
    yield front
    front.stop()


def test_retention_keeps_what_worm_still_protects_and_deletes_the_rest(
    worm: WormFront, azurite: Azurite, blob_container: str, blob_credential: Any
) -> None:
    store = BlobStore(
        worm.url(blob_container), blob_credential, connection_verify=str(azurite.cert)
    )
    for name in ("old-1.cast", "old-2.cast"):
        w = store.create(name)
        w.write(b'{"version": 2, "width": 80, "height": 24}\n')
        w.close()
    worm.locked.add("old-2.cast")
    with pytest.raises(RecordingRetained, match=r"old-2\.cast is still under its retention"):
        store.delete("old-2.cast")

    later = datetime.now(UTC) + timedelta(days=100)  # both are past a 90-day retention
    em = CapturingEmitter()
    result = Retention(
        RetentionPolicy(recordings_days=90), em, recordings=store, clock=lambda: later
    ).run()
    assert (result.recordings_deleted, result.recordings_retained) == (1, 1)
    assert [r.name for r in store.list()] == ["old-2.cast"]
    (announced,) = em.of_type("audit.retention_deleted")
    assert announced.details["count"] == 2

    worm.locked.clear()  # its immutability period is over: the next run deletes it
    result = Retention(
        RetentionPolicy(recordings_days=90), em, recordings=store, clock=lambda: later
    ).run()
    assert (result.recordings_deleted, result.recordings_retained) == (1, 0)
    assert list(store.list()) == []
