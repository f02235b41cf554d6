"""What a simulated instrument looks like from outside: its description.

`Instrument` is the one record every part of hoshu uses to reach a simulated
instrument (the gateway's allowlist, the broker's injected credential, the
demo's walkthrough). It holds paths to secrets, never the secrets themselves,
so it can be printed and written to JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Credentials:
    """The login the broker injects for an instrument (engineers never see it)."""

    username: str
    private_key_path: Path | None = None
    public_key: str | None = None
    password_path: Path | None = None

    @property
    def private_key_pem(self) -> str | None:
        """The OpenSSH private key text, read from disk on demand."""
        return None if self.private_key_path is None else self.private_key_path.read_text()

    @property
    def password(self) -> str | None:
        """The instrument password, read from its 0600 file on demand."""
        if self.password_path is None:
            return None
        return self.password_path.read_text().strip()

    def to_json(self) -> dict[str, Any]:
        """Paths and public material only; secrets stay in their files."""
        return {
            "username": self.username,
            "private_key_path": None
            if self.private_key_path is None
            else str(self.private_key_path),
            "public_key": self.public_key,
            "password_path": None if self.password_path is None else str(self.password_path),
        }


@dataclass(frozen=True)
class Instrument:
    """A running simulated instrument, as the gateway and broker need to know it.

    `ports` lists every TCP port the instrument offers (the first is the main
    one); `services` names them by role (``ssh``, ``hl7``, ``rfb``, ``echo``).
    """

    name: str
    host: str
    ports: tuple[int, ...]
    protocol: str
    department: str
    model: str
    backend: str
    services: Mapping[str, int] = field(default_factory=dict, hash=False)
    credentials: Credentials | None = None
    host_key: str | None = None
    host_key_fingerprint: str | None = None
    data_dir: Path | None = None

    @property
    def port(self) -> int:
        """The instrument's main port."""
        return self.ports[0]

    def service_port(self, role: str) -> int:
        """The port serving `role`; KeyError if the instrument has no such service."""
        return self.services[role]

    def known_hosts_line(self) -> str:
        """An OpenSSH known_hosts entry pinning this instrument's host key."""
        if not self.host_key:
            raise ValueError(f"{self.name} has no SSH host key")
        key = " ".join(self.host_key.split()[:2])
        return f"[{self.host}]:{self.port} {key}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (what ``python -m labsim`` prints)."""
        return {
            "name": self.name,
            "host": self.host,
            "ports": list(self.ports),
            "services": dict(self.services),
            "protocol": self.protocol,
            "department": self.department,
            "model": self.model,
            "backend": self.backend,
            "credentials": None if self.credentials is None else self.credentials.to_json(),
            "host_key": self.host_key,
            "host_key_fingerprint": self.host_key_fingerprint,
            "data_dir": None if self.data_dir is None else str(self.data_dir),
        }
