"""Signed checkpoints of the hash-chained log (Ed25519, the broker's audit key).

A checkpoint says "the log reached position ``seq`` with hash ``hash``" and is
signed by the broker's audit key.  It is written into the log as an
``audit.checkpoint`` event and therefore shipped to every SIEM like any other
event: whoever holds a checkpoint off the machine can later prove that the
local log was truncated or rewritten before that position.

The signed message is ``b"hoshu-audit-checkpoint-v1\\n<seq>\\n<hash>"``; the key
id is the first 16 hex digits of SHA-256 over the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit.errors import ChainError
from audit.keyfiles import create_secret

_DOMAIN = b"hoshu-audit-checkpoint-v1"


def checkpoint_message(seq: int, hash_: str) -> bytes:
    return b"%s\n%d\n%s" % (_DOMAIN, seq, hash_.encode())


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the log's position and hash."""

    seq: int
    hash: str
    signature: str  # base64
    key_id: str

    def details(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "signature": self.signature,
                "key_id": self.key_id}

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> Checkpoint:
        """Read a checkpoint from an ``audit.checkpoint`` event's details (or a SIEM row)."""
        try:
            return cls(int(details["seq"]), str(details["hash"]), str(details["signature"]),
                       str(details["key_id"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"malformed checkpoint: {exc}") from exc


class CheckpointSigner:
    """Signs checkpoints with the broker's audit key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> CheckpointSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> CheckpointSigner:
        """Load the PEM key at ``path``, creating it (mode 0600) on first start."""
        p = Path(path)
        if p.exists():
            try:
                key = serialization.load_pem_private_key(p.read_bytes(), password=None)
            except (ValueError, TypeError, OSError) as exc:
                raise ChainError(f"cannot read audit signing key {p}: {exc}") from exc
            if not isinstance(key, Ed25519PrivateKey):
                raise ChainError(f"audit signing key {p} is not an Ed25519 key")
            return cls(key)
        signer = cls.generate()
        pem = signer._key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        try:
            create_secret(p, pem)
        except OSError as exc:
            raise ChainError(f"cannot create audit signing key {p}: {exc}") from exc
        p.with_name(p.name + ".pub").write_bytes(signer.public_pem())
        return signer

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, seq: int, hash_: str) -> Checkpoint:
        sig = self._key.sign(checkpoint_message(seq, hash_))
        return Checkpoint(seq, hash_, base64.b64encode(sig).decode(), self.key_id)


class TrustedKeys:
    """The public keys whose checkpoints a verifier accepts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_pem_files(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustedKeys:
        keys: list[Ed25519PublicKey] = []
        for path in paths:
            try:
                key = serialization.load_pem_public_key(Path(path).read_bytes())
            except (ValueError, OSError) as exc:
                raise ChainError(f"cannot read public key {path}: {exc}") from exc
            if not isinstance(key, Ed25519PublicKey):
                raise ChainError(f"{path} is not an Ed25519 public key")
            keys.append(key)
        return cls(keys)

    def check(self, cp: Checkpoint) -> str | None:
        """None when the signature is good; otherwise why not."""
        key = self._keys.get(cp.key_id)
        if key is None:
            return f"checkpoint at {cp.seq} is signed by unknown key {cp.key_id}"
        try:
            key.verify(base64.b64decode(cp.signature, validate=True),
                       checkpoint_message(cp.seq, cp.hash))
        except (InvalidSignature, ValueError):
            return f"checkpoint at {cp.seq} has a bad signature"
        return None
