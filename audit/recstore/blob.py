"""Recordings as append blobs in one Azure Blob container (production).

``recordings_url`` names the container: ``https://<account>.blob.core.windows.net/<container>``
(the WORM container of infra/bicep/modules/storage.bicep: version-level
immutability with protected append writes, so a recording can grow while it is
written but never be changed or deleted before its retention ends).  The broker
signs in with a token credential (its managed identity); bearer tokens travel
over HTTPS only, so an ``http://`` URL is refused.

Writing (:class:`BlobWriter`): the recording is created empty (``If-None-Match: *``:
an existing one is never overwritten), then what the recorder writes is appended
by a thread of its own, at least every ``flush_interval_s`` and whenever
``flush_bytes`` are waiting, in blocks of at most 4 MiB, each at its expected
position (``x-ms-blob-condition-appendpos``), so a retried append can neither
duplicate nor reorder bytes.  A broker that dies loses at most what it had not
yet appended (one interval).  An append that fails (after ``retries`` quick
retries) fails the writer: its next ``write``/``check``/``close`` raises, and the
front door ends the session.  More than ``max_backlog`` bytes waiting (the store
cannot keep up) fails it too, rather than holding unbounded memory.  ``close``
appends the rest and seals the blob: a sealed recording is a finished one.

Limits: an append blob takes at most 50,000 appends; at one per second that is
about 13 hours of continuously busy output in one session (a failed append then
ends the session).  Every request has a connection and read time-out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobClient, BlobServiceClient, ContentSettings, LinearRetry

from audit.recstore import (
    MAX_READ_BYTES,
    RecordingExists,
    RecordingFileError,
    RecordingMissing,
    RecordingRetained,
    StoredRecording,
    StoreUnavailable,
    check_name,
)

log = logging.getLogger(__name__)

MAX_BLOCK = 4 * 1024 * 1024
FLUSH_INTERVAL_S = 1.0
FLUSH_BYTES = 256 * 1024
MAX_BACKLOG = 64 * 1024 * 1024
# what Blob storage answers when immutability (time-based retention, legal hold) stops a delete
_RETAINED = frozenset(
    {"BlobImmutableDueToPolicy", "BlobImmutableDueToLegalHold", "ImmutableBlobDueToPolicy"}
)
_CONTAINER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def _short(exc: BaseException) -> str:
    """The first line of an Azure error (never a header, token or response body)."""
    code = getattr(exc, "error_code", None)
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"{code}: {line}" if code and code not in line else line


def split_url(url: str) -> tuple[str, str]:
    """``(account URL, container)`` of ``https://<host>[/<account>]/<container>``."""
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise StoreUnavailable(f"recordings_url {url!r} must be https://<account host>/<container>")
    path = parts.path.strip("/").split("/")
    container = path[-1]
    if not (
        3 <= len(container) <= 63
        and set(container) <= _CONTAINER_CHARS
        and container[0] != "-"
        and "--" not in container
    ):
        raise StoreUnavailable(f"recordings_url {url!r} does not end in a container name")
    account = urlunsplit(("https", parts.netloc, "/".join(path[:-1]), "", ""))
    return account, container


class BlobWriter:
    """Appends one recording while it is written; see the module docstring."""

    def __init__(
        self,
        client: BlobClient,
        name: str,
        location: str,
        *,
        flush_interval_s: float,
        flush_bytes: int,
        max_backlog: int,
        timeout_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._client = client
        self._where = f"{location}/{name}"
        self._interval = flush_interval_s
        self._flush_bytes = max(1, min(flush_bytes, MAX_BLOCK))
        self._max_backlog = max_backlog
        self._timeout = timeout_s
        self._mono = monotonic
        self._cond = threading.Condition()
        self._pending = bytearray()
        self._stored = 0
        self._appends = 0
        self._failed: RecordingFileError | None = None
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"append {name}", daemon=True)
        self._thread.start()

    @property
    def stored(self) -> int:
        """Bytes appended to the blob so far."""
        return self._stored

    @property
    def appends(self) -> int:
        return self._appends

    def write(self, data: bytes | memoryview, /) -> int:
        n = len(data)
        with self._cond:
            self._raise()
            if self._closing:
                raise RecordingFileError(f"recording {self._where} is closed")
            if len(self._pending) + n > self._max_backlog:
                self._failed = RecordingFileError(
                    f"recording {self._where}: the store is not keeping up "
                    f"({len(self._pending)} bytes not yet stored)"
                )
                self._cond.notify_all()
                raise self._failed
            self._pending += data
            if len(self._pending) >= self._flush_bytes:
                self._cond.notify_all()
        return n

    def check(self) -> None:
        with self._cond:
            self._raise()

    def _raise(self) -> None:
        if self._failed is not None:
            raise self._failed

    def close(self) -> None:
        with self._cond:
            if self._closed:
                self._raise()
                return
            self._closing = True
            self._cond.notify_all()
        # at most every pending block, each within its request time-out and retries
        self._thread.join(timeout=self._timeout * 4 + self._interval)
        with self._cond:
            self._closed = True
            if self._thread.is_alive() and self._failed is None:
                self._failed = RecordingFileError(
                    f"recording {self._where}: the rest could not be stored in time"
                )
            self._raise()
        try:
            self._client.seal_append_blob(
                appendpos_condition=self._stored, timeout=int(self._timeout)
            )
        except AzureError as exc:  # every byte is stored: only the "finished" mark is missing
            log.warning(
                "recording %s is complete but could not be sealed: %s", self._where, _short(exc)
            )

    def _run(self) -> None:
        due = self._mono()
        while True:
            with self._cond:
                while not self._failed:
                    if self._closing or len(self._pending) >= self._flush_bytes:
                        break
                    now = self._mono()
                    if self._pending and now >= due:
                        break
                    self._cond.wait(max(0.0, due - now) if self._pending else self._interval)
                if self._failed or (self._closing and not self._pending):
                    return
                chunk = bytes(self._pending[:MAX_BLOCK])
                del self._pending[:MAX_BLOCK]
            try:
                self._append(chunk)
            except RecordingFileError as exc:
                with self._cond:
                    self._failed = exc
                    self._pending.clear()
                    self._cond.notify_all()
                return
            due = self._mono() + self._interval

    def _append(self, chunk: bytes) -> None:
        try:
            self._client.append_block(
                chunk,
                length=len(chunk),
                appendpos_condition=self._stored,
                timeout=int(self._timeout),
            )
        except HttpResponseError as exc:
            code = getattr(exc, "error_code", None)
            if code != "AppendPositionConditionNotMet" or not self._landed(chunk):
                raise RecordingFileError(
                    f"recording {self._where} could not be appended: {_short(exc)}"
                ) from exc
        except AzureError as exc:
            raise RecordingFileError(
                f"recording {self._where} could not be appended: {_short(exc)}"
            ) from exc
        self._stored += len(chunk)
        self._appends += 1

    def _landed(self, chunk: bytes) -> bool:
        """After a retried append was refused for its position: did the first try land?"""
        try:
            got = self._client.download_blob(
                offset=self._stored, length=len(chunk) + 1, timeout=int(self._timeout)
            ).readall()
        except AzureError:
            return False
        return bytes(got) == chunk


class BlobStore:
    """Recordings in the container ``url`` names, signed in with ``credential``."""

    def __init__(
        self,
        url: str,
        credential: Any,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        flush_bytes: int = FLUSH_BYTES,
        max_backlog: int = MAX_BACKLOG,
        timeout_s: float = 10.0,
        retries: int = 2,
        connection_verify: bool | str = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        account, container = split_url(url)
        self.url = url.strip().rstrip("/")
        self._flush_interval = flush_interval_s
        self._flush_bytes = flush_bytes
        self._max_backlog = max_backlog
        self._timeout = timeout_s
        self._mono = monotonic
        self._service = BlobServiceClient(
            account,
            credential=credential,
            connection_verify=connection_verify,
            connection_timeout=timeout_s,
            read_timeout=timeout_s,
            retry_policy=LinearRetry(backoff=1, retry_total=retries, random_jitter_range=1),
        )
        self._container = self._service.get_container_client(container)

    @property
    def location(self) -> str:
        return self.url

    def _blob(self, name: str) -> BlobClient:
        return self._container.get_blob_client(check_name(name))

    def check(self) -> None:
        try:
            self._container.get_container_properties(timeout=int(self._timeout))
        except ResourceNotFoundError as exc:
            raise StoreUnavailable(f"recordings container {self.url} does not exist") from exc
        except ClientAuthenticationError as exc:
            raise StoreUnavailable(
                f"recordings container {self.url} refused the broker: {_short(exc)}"
            ) from exc
        except AzureError as exc:
            raise StoreUnavailable(
                f"recordings container {self.url} cannot be reached: {_short(exc)}"
            ) from exc

    def create(self, name: str) -> BlobWriter:
        blob = self._blob(name)
        try:
            blob.create_append_blob(
                content_settings=ContentSettings(content_type="application/x-asciicast"),
                match_condition=MatchConditions.IfMissing,
                timeout=int(self._timeout),
            )
        except ResourceExistsError as exc:
            raise RecordingExists(f"recording {self.url}/{name} already exists") from exc
        except AzureError as exc:
            raise RecordingFileError(
                f"recording {self.url}/{name} cannot be created: {_short(exc)}"
            ) from exc
        return BlobWriter(
            blob,
            name,
            self.url,
            flush_interval_s=self._flush_interval,
            flush_bytes=self._flush_bytes,
            max_backlog=self._max_backlog,
            timeout_s=self._timeout,
            monotonic=self._mono,
        )

    @staticmethod
    def _info(name: str, props: Any) -> StoredRecording:
        modified = props.last_modified or datetime.fromtimestamp(0, UTC)
        return StoredRecording(
            name,
            int(props.size or 0),
            modified,
            finished=bool(getattr(props, "is_append_blob_sealed", False)),
        )

    def stat(self, name: str) -> StoredRecording | None:
        try:
            return self._info(
                name, self._blob(name).get_blob_properties(timeout=int(self._timeout))
            )
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise RecordingFileError(
                f"recording {self.url}/{name} cannot be read: {_short(exc)}"
            ) from exc

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise RecordingFileError("offset and length must not be negative")
        if length == 0:
            return b""
        length = min(length if length is not None else MAX_READ_BYTES, MAX_READ_BYTES)
        try:
            return bytes(
                self._blob(name)
                .download_blob(offset=offset, length=length, timeout=int(self._timeout))
                .readall()
            )
        except ResourceNotFoundError as exc:
            raise RecordingMissing(f"no recording {self.url}/{name}") from exc
        except HttpResponseError as exc:
            if exc.status_code == 416:  # past the end: nothing there yet
                return b""
            raise RecordingFileError(
                f"recording {self.url}/{name} cannot be read: {_short(exc)}"
            ) from exc
        except AzureError as exc:
            raise RecordingFileError(
                f"recording {self.url}/{name} cannot be read: {_short(exc)}"
            ) from exc

    def chunks(self, name: str) -> Iterator[bytes]:
        try:
            stream = self._blob(name).download_blob(timeout=int(self._timeout))
        except ResourceNotFoundError as exc:
            raise RecordingMissing(f"no recording {self.url}/{name}") from exc
        except AzureError as exc:
            raise RecordingFileError(
                f"recording {self.url}/{name} cannot be read: {_short(exc)}"
            ) from exc
        return self._chunks(stream.chunks(), name)

    def _chunks(self, it: Iterator[bytes], name: str) -> Iterator[bytes]:
        try:
            yield from it
        except AzureError as exc:
            raise RecordingFileError(
                f"recording {self.url}/{name} cannot be read: {_short(exc)}"
            ) from exc

    def list(self) -> Iterator[StoredRecording]:
        try:
            for props in self._container.list_blobs(timeout=int(self._timeout)):
                try:
                    check_name(props.name)
                except RecordingFileError:
                    continue  # not a recording (nothing else is written here)
                yield self._info(props.name, props)
        except AzureError as exc:
            raise RecordingFileError(
                f"recordings container {self.url} cannot be listed: {_short(exc)}"
            ) from exc

    def delete(self, name: str) -> bool:
        try:
            self._blob(name).delete_blob(timeout=int(self._timeout))
            return True
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) in _RETAINED:
                raise RecordingRetained(
                    f"recording {self.url}/{name} is still under its retention period"
                ) from exc
            raise RecordingFileError(
                f"recording {self.url}/{name} cannot be deleted: {_short(exc)}"
            ) from exc
        except AzureError as exc:
            raise RecordingFileError(
                f"recording {self.url}/{name} cannot be deleted: {_short(exc)}"
            ) from exc

    def close(self) -> None:
        self._service.close()
