"""SSH keys for simulated instruments: host keys and the injected client credential."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key pair written to disk in OpenSSH format."""

    private_path: Path
    public_line: str

    @property
    def private_pem(self) -> str:
        """The private key in OpenSSH PEM form (what the broker injects)."""
        return self.private_path.read_text()

    @property
    def fingerprint(self) -> str:
        """OpenSSH-style ``SHA256:...`` fingerprint of the public key."""
        return fingerprint_of(self.public_line)


def fingerprint_of(public_line: str) -> str:
    """``SHA256:<base64, no padding>`` over the key blob, as ``ssh-keygen -l`` prints."""
    parts = public_line.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line")
    blob = base64.b64decode(parts[1], validate=True)
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def generate_keypair(private_path: Path, comment: str) -> KeyPair:
    """Create an ed25519 key pair at `private_path` (mode 0600) and `<path>.pub`."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key("openssh"))
    public_line = key.export_public_key("openssh").decode().strip()
    private_path.with_name(private_path.name + ".pub").write_text(public_line + "\n")
    return KeyPair(private_path=private_path, public_line=public_line)


def write_secret(path: Path, secret: str) -> Path:
    """Write a secret (e.g. an instrument password) to a 0600 file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return path
