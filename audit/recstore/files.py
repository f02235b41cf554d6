"""Recordings as files in one directory (the default store).

``<directory>/<name>``, created ``O_EXCL`` with mode 0640 and written unbuffered:
the layout and bytes the broker has always produced, so existing recordings,
``asciinema play`` and backups of the directory work unchanged.  Hidden entries
(the session journal's ``.live/``) are not recordings and are never listed.
A file cannot say whether its writer finished, so :attr:`StoredRecording.finished`
is False here; :func:`audit.recstore.follow` then ends on its ``stop`` or idle
time-out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from audit.recstore import (
    READ_CHUNK,
    RecordingExists,
    RecordingFileError,
    RecordingMissing,
    StoredRecording,
    StoreUnavailable,
    check_name,
)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class FileWriter:
    """An unbuffered file opened for a new recording."""

    def __init__(self, name: str, fh: BinaryIO) -> None:
        self.name = name
        self._fh = fh
        self._failed: RecordingFileError | None = None

    def write(self, data: bytes | memoryview, /) -> int:
        self.check()
        view = memoryview(data)
        try:
            while view:
                n = self._fh.write(view)
                if not n:
                    raise OSError("short write")
                view = view[n:]
        except (OSError, ValueError) as exc:
            self._failed = RecordingFileError(f"recording {self.name} could not be written ({exc})")
            raise self._failed from exc
        return len(data)

    def check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as exc:
            raise RecordingFileError(
                f"recording {self.name} could not be closed ({_why(exc)})"
            ) from exc


class FileStore:
    """Recordings as files in ``directory`` (created on first use)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @property
    def location(self) -> str:
        return str(self.directory)

    def path(self, name: str) -> Path:
        return self.directory / check_name(name)

    def check(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"recordings directory {self.directory} cannot be created: {_why(exc)}"
            ) from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"recordings directory {self.directory} is not writable")

    def create(self, name: str) -> FileWriter:
        path = self.path(name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError as exc:
            raise RecordingExists(f"recording {path} already exists") from exc
        except OSError as exc:
            raise RecordingFileError(f"recording {path} cannot be created: {_why(exc)}") from exc
        return FileWriter(name, os.fdopen(fd, "wb", buffering=0))

    def _info(self, name: str, st: os.stat_result) -> StoredRecording:
        return StoredRecording(
            name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC), finished=False
        )

    def stat(self, name: str) -> StoredRecording | None:
        try:
            return self._info(name, self.path(name).stat())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordingFileError(f"recording {name} cannot be read: {_why(exc)}") from exc

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise RecordingFileError("offset and length must not be negative")
        try:
            with open(self.path(name), "rb") as f:
                f.seek(offset)
                return f.read() if length is None else f.read(length)
        except FileNotFoundError as exc:
            raise RecordingMissing(f"no recording {name} in {self.directory}") from exc
        except OSError as exc:
            raise RecordingFileError(f"recording {name} cannot be read: {_why(exc)}") from exc

    def chunks(self, name: str) -> Iterator[bytes]:
        try:
            f = open(self.path(name), "rb")  # closed by the generator
        except FileNotFoundError as exc:
            raise RecordingMissing(f"no recording {name} in {self.directory}") from exc
        except OSError as exc:
            raise RecordingFileError(f"recording {name} cannot be read: {_why(exc)}") from exc
        return self._chunks(f, name)

    @staticmethod
    def _chunks(f: BinaryIO, name: str) -> Iterator[bytes]:
        with f:
            while True:
                try:
                    chunk = f.read(READ_CHUNK)
                except OSError as exc:
                    raise RecordingFileError(
                        f"recording {name} cannot be read: {_why(exc)}"
                    ) from exc
                if not chunk:
                    return
                yield chunk

    def list(self) -> Iterator[StoredRecording]:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise RecordingFileError(
                f"recordings directory {self.directory} cannot be listed: {_why(exc)}"
            ) from exc
        for e in entries:
            if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                continue
            try:
                check_name(e.name)
                yield self._info(e.name, e.stat(follow_symlinks=False))
            except (RecordingFileError, FileNotFoundError):
                continue

    def delete(self, name: str) -> bool:
        try:
            os.unlink(self.path(name))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise RecordingFileError(f"recording {name} cannot be deleted: {_why(exc)}") from exc
