"""OpenSSH public key lines: parse, normalise, fingerprint (no I/O)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from broker.access.errors import InvalidInput

ALLOWED_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


def fingerprint_blob(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse(line: str) -> tuple[str, str, str]:
    """Return ``(normalised "type base64", fingerprint, comment)`` or raise InvalidInput."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or len(line) > 16384:
        raise InvalidInput("not an OpenSSH public key line", code="invalid_key")
    kind, b64 = parts[0], parts[1]
    if kind not in ALLOWED_TYPES:
        raise InvalidInput(f"key type {kind!r} is not accepted", code="invalid_key")
    try:
        blob = base64.b64decode(b64, validate=True)
    except ValueError as exc:
        raise InvalidInput("key is not valid base64", code="invalid_key") from exc
    if not kind.startswith("sk-"):
        try:
            key = load_ssh_public_key(f"{kind} {b64}".encode())
        except (ValueError, TypeError) as exc:
            raise InvalidInput("key does not parse", code="invalid_key") from exc
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            raise InvalidInput("RSA keys need at least 2048 bits", code="invalid_key")
    return f"{kind} {b64}", fingerprint_blob(blob), parts[2] if len(parts) > 2 else ""


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])
