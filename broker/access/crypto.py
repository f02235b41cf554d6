"""Secrets at rest: instrument credentials and TOTP secrets, sealed by the key store.

:class:`SecretBox` is what the domain sees: ``seal(text) -> str`` and
``open(sealed) -> text``; a value that cannot be opened is an
:class:`~broker.access.errors.AccessError` (the caller refuses, nothing is
shown).  How values are sealed is a :class:`Sealer` chosen by the broker's key
store (:mod:`broker.keys`):

* :class:`FernetVersions` (key files, the embedded default): ``credentials.key``
  is version 1 and seals plain Fernet tokens, byte for byte what hoshu always
  wrote; after ``hoshu admin keys rotate`` the newest ``credentials.key.v<N>``
  seals ``hoshu-seal-v1:file:<N>:<fernet token>``.  Every version keeps opening
  what it sealed; a plain token is always version 1's.
* envelope encryption under a Key Vault RSA key (``broker.keys.vault``):
  ``hoshu-seal-v1:kv:<key version>:<wrapped data key>:<fernet token>``.

Losing the key files makes stored credentials unreadable; they are backed up
with the database but never stored in it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken

from audit.keyfiles import create_secret
from broker.access.errors import AccessError, Unavailable

PREFIX = "hoshu-seal-v1"


class SealError(Exception):
    """A sealed value cannot be opened (wrong or missing key, damaged)."""


class SealUnavailable(SealError):
    """The key store needed to seal or open is not reachable now (nothing changed)."""


class Sealer(Protocol):
    def seal(self, plaintext: bytes) -> str: ...

    def open(self, sealed: str) -> bytes:
        """The plaintext; :class:`SealError` when it cannot be opened."""
        ...


class FernetVersions:
    """Fernet keys by version (1, 2, ...); the highest seals.

    ``reload`` (the key files again) is called once when a value names a version
    not known yet, e.g. one sealed after another process rotated the key.
    """

    def __init__(
        self, keys: Mapping[int, bytes], reload: Callable[[], Mapping[int, bytes]] | None = None
    ) -> None:
        if not keys:
            raise ValueError("no sealing key")
        self._reload = reload
        self._lock = threading.Lock()
        self._keys = {v: Fernet(k) for v, k in keys.items()}
        self.current = max(self._keys)

    def seal(self, plaintext: bytes) -> str:
        token = self._keys[self.current].encrypt(plaintext).decode("ascii")
        return token if self.current == 1 else f"{PREFIX}:file:{self.current}:{token}"

    def _key(self, version: int) -> Fernet:
        with self._lock:
            key = self._keys.get(version)
            if key is None and self._reload is not None:
                self._keys.update(
                    {v: Fernet(k) for v, k in self._reload().items() if v not in self._keys}
                )
                key = self._keys.get(version)
        if key is None:
            raise SealError(f"sealed with key version {version}, which this broker does not have")
        return key

    def open(self, sealed: str) -> bytes:
        if sealed.startswith(PREFIX + ":"):
            parts = sealed.split(":", 3)
            if len(parts) != 4 or parts[1] != "file" or not parts[2].isdigit():
                raise SealError("not a value sealed with a key file")
            version, token = int(parts[2]), parts[3]
        else:
            version, token = 1, sealed
        try:
            return self._key(version).decrypt(token.encode("ascii"))
        except (InvalidToken, ValueError) as exc:
            raise SealError(f"does not open with key version {version}") from exc


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._sealer: Sealer = FernetVersions({1: key})

    @classmethod
    def using(cls, sealer: Sealer) -> SecretBox:
        box = cls.__new__(cls)
        box._sealer = sealer
        return box

    @property
    def sealer(self) -> Sealer:
        return self._sealer

    @classmethod
    def generate(cls) -> SecretBox:
        return cls(Fernet.generate_key())

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """Load the key from ``path``, creating it (0600) when it does not exist."""
        if not path.exists():
            create_secret(path, Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, plaintext: str) -> str:
        try:
            return self._sealer.seal(plaintext.encode("utf-8"))
        except SealUnavailable as exc:
            raise Unavailable(f"a secret cannot be sealed now: {exc}") from exc

    def open(self, sealed: str) -> str:
        try:
            return self._sealer.open(sealed).decode("utf-8")
        except SealUnavailable as exc:
            raise Unavailable(f"a stored secret cannot be opened now: {exc}") from exc
        except (SealError, UnicodeDecodeError) as exc:
            raise AccessError(f"a stored secret cannot be opened: {exc}") from exc
