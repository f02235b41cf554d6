"""Secrets at rest: instrument credentials and TOTP secrets, Fernet-encrypted.

The key lives in a file (``settings.credential_key_path``, mode 0600) created
on first use.  Losing the file makes stored credentials unreadable; it is
backed up with the database but never stored in it.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from audit.keyfiles import create_secret
from broker.access.errors import AccessError


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

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
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except (InvalidToken, ValueError) as exc:
            raise AccessError("a stored secret cannot be decrypted with this key") from exc
