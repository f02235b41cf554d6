"""Signed checkpoints of the hash-chained log: Ed25519 (key file) or ES256 (Key Vault).

A checkpoint says "the log reached position ``seq`` with hash ``hash``" and is
signed by the broker's audit key.  It is written into the log as an
``audit.checkpoint`` event and therefore shipped to every SIEM like any other
event: whoever holds a checkpoint off the machine can later prove that the
local log was truncated or rewritten before that position.

The signed message is ``b"hoshu-audit-checkpoint-v1\\n<seq>\\n<hash>"``.  Two
algorithms sign it:

* ``Ed25519`` (``alg`` absent in checkpoints written before ES256 existed): a
  key file on the broker (the embedded default).  The signature is the 64-byte
  Ed25519 signature; the key id is the first 16 hex digits of SHA-256 over the
  raw 32-byte public key.
* ``ES256``: ECDSA on P-256 with SHA-256, signed inside Azure Key Vault (the
  private key never leaves it).  The signature is JWS form, ``r || s`` (64
  bytes); the key id is the first 16 hex digits of SHA-256 over the public
  key's DER SubjectPublicKeyInfo.

Signatures are base64 in the checkpoint.  ``key_version`` (when present) names
the key's version in its store (the Key Vault key version, or the key file's
version after a rotation); verification never trusts it, only the key id and
the pinned public keys.  A checkpoint's ``alg`` must match the kind of the key
its id names: an Ed25519 key never verifies an ES256 checkpoint or back.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from audit.errors import ChainError
from audit.keyfiles import create_secret

_DOMAIN = b"hoshu-audit-checkpoint-v1"
ED25519 = "Ed25519"
ES256 = "ES256"
ALGORITHMS = (ED25519, ES256)

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


def checkpoint_message(seq: int, hash_: str) -> bytes:
    return b"%s\n%d\n%s" % (_DOMAIN, seq, hash_.encode())


def _p256(key: ec.EllipticCurvePublicKey) -> ec.EllipticCurvePublicKey:
    if not isinstance(key.curve, ec.SECP256R1):
        raise ChainError(f"an ES256 key must be on P-256, not {key.curve.name}")
    return key


def key_id(public_key: PublicKey) -> str:
    if isinstance(public_key, Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = _p256(public_key).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return hashlib.sha256(raw).hexdigest()[:16]


def algorithm_of(public_key: PublicKey) -> str:
    return ED25519 if isinstance(public_key, Ed25519PublicKey) else ES256


def public_pem(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_pem(data: bytes, where: str = "public key") -> PublicKey:
    """An Ed25519 or P-256 public key from PEM; ChainError for anything else."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ChainError(f"cannot read {where}: {exc}") from exc
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ChainError(f"{where} is neither an Ed25519 nor a P-256 public key")


def verify_signature(public_key: PublicKey, alg: str, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` over ``message`` holds for ``public_key`` under ``alg``."""
    if alg != algorithm_of(public_key):
        return False
    try:
        if isinstance(public_key, Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            if len(signature) != 64:
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public_key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the log's position and hash."""

    seq: int
    hash: str
    signature: str  # base64
    key_id: str
    alg: str = ED25519
    key_version: str = ""  # informational: which version in the key store signed

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "hash": self.hash,
            "signature": self.signature,
            "key_id": self.key_id,
            "alg": self.alg,
        }
        if self.key_version:
            out["key_version"] = self.key_version
        return out

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> Checkpoint:
        """Read a checkpoint from an ``audit.checkpoint`` event's details (or a SIEM row)."""
        try:
            cp = cls(
                int(details["seq"]),
                str(details["hash"]),
                str(details["signature"]),
                str(details["key_id"]),
                str(details.get("alg") or ED25519),
                str(details.get("key_version") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainError(f"malformed checkpoint: {exc}") from exc
        if cp.alg not in ALGORITHMS:
            raise ChainError(f"malformed checkpoint: unknown algorithm {cp.alg!r}")
        return cp


class SigningKey(Protocol):
    """A key that signs checkpoints, wherever its private half lives.

    ``sign`` returns the raw signature (Ed25519: 64 bytes; ES256: ``r || s``) or
    raises :class:`~audit.errors.ChainError` when the key cannot sign now.
    """

    @property
    def alg(self) -> str: ...

    @property
    def public_key(self) -> PublicKey: ...

    @property
    def version(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class Ed25519Key:
    """An Ed25519 private key held in this process (the key-file backend)."""

    private_key: Ed25519PrivateKey
    version: str = ""
    alg: str = ED25519

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


class CheckpointSigner:
    """Signs checkpoints with the broker's current audit key.

    ``retired``: the public keys of earlier versions (after a rotation), which
    verification of older checkpoints still needs; they never sign.  A key that
    signs outside this process (Key Vault) has each signature checked against
    its public key before the checkpoint is written: a bad one is a ChainError.
    """

    def __init__(
        self, key: Ed25519PrivateKey | SigningKey, *, retired: Iterable[PublicKey] = ()
    ) -> None:
        self._key: SigningKey = Ed25519Key(key) if isinstance(key, Ed25519PrivateKey) else key
        self._local = isinstance(self._key, Ed25519Key)
        self.public_key: PublicKey = self._key.public_key
        self.key_id = key_id(self.public_key)
        self.alg = self._key.alg
        if self.alg != algorithm_of(self.public_key):
            raise ChainError(
                f"signing key says {self.alg} but its public key is {algorithm_of(self.public_key)}"
            )
        others = [k for k in retired if key_id(k) != self.key_id]
        self.public_keys: tuple[PublicKey, ...] = (self.public_key, *others)

    @classmethod
    def generate(cls) -> CheckpointSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> CheckpointSigner:
        """Load the PEM key at ``path``, creating it (mode 0600) on first start."""
        p = Path(path)
        if p.exists():
            return cls(load_ed25519_file(p))
        key = Ed25519PrivateKey.generate()
        try:
            write_ed25519_file(p, key)
        except FileExistsError:  # another process created it first (or planted something)
            return cls(load_ed25519_file(p))
        return cls(key)

    def public_pem(self) -> bytes:
        return public_pem(self.public_key)

    def public_pems(self) -> list[bytes]:
        """Every version's public key (current first), PEM: what an auditor pins."""
        return [public_pem(k) for k in self.public_keys]

    def sign(self, seq: int, hash_: str) -> Checkpoint:
        message = checkpoint_message(seq, hash_)
        sig = self._key.sign(message)
        if not self._local and not verify_signature(self.public_key, self.alg, sig, message):
            raise ChainError(
                f"the audit signing key {self.key_id} returned a signature that "
                "does not verify; no checkpoint written"
            )
        return Checkpoint(
            seq, hash_, base64.b64encode(sig).decode(), self.key_id, self.alg, self._key.version
        )


def load_ed25519_file(p: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, OSError) as exc:
        raise ChainError(f"cannot read audit signing key {p}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ChainError(f"audit signing key {p} is not an Ed25519 key")
    return key


def write_ed25519_file(p: Path, key: Ed25519PrivateKey) -> None:
    """Create ``p`` (0600, PKCS#8 PEM) and its public half ``p.pub``; FileExistsError if
    ``p`` is already there (another process created it first)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        create_secret(p, pem)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ChainError(f"cannot create audit signing key {p}: {exc}") from exc
    p.with_name(p.name + ".pub").write_bytes(public_pem(key.public_key()))


class TrustedKeys:
    """The public keys (Ed25519 or P-256) whose checkpoints a verifier accepts, by key id."""

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        self._keys: dict[str, PublicKey] = {}
        for k in keys:
            if isinstance(k, ec.EllipticCurvePublicKey):
                _p256(k)
            self._keys[key_id(k)] = k

    @classmethod
    def from_pems(cls, pems: Iterable[bytes]) -> TrustedKeys:
        return cls(load_public_pem(p) for p in pems)

    @classmethod
    def from_pem_files(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustedKeys:
        """Each file holds one PEM public key, Ed25519 or P-256 (ES256)."""
        keys: list[PublicKey] = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ChainError(f"cannot read public key {path}: {exc}") from exc
            keys.append(load_public_pem(data, str(path)))
        return cls(keys)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def check(self, cp: Checkpoint) -> str | None:
        """None when the signature is good; otherwise why not."""
        key = self._keys.get(cp.key_id)
        if key is None:
            return f"checkpoint at {cp.seq} is signed by unknown key {cp.key_id}"
        if cp.alg != algorithm_of(key):
            return (
                f"checkpoint at {cp.seq} says {cp.alg} but key {cp.key_id} is an "
                f"{algorithm_of(key)} key"
            )
        try:
            sig = base64.b64decode(cp.signature, validate=True)
        except ValueError:
            return f"checkpoint at {cp.seq} has a bad signature"
        if not verify_signature(key, cp.alg, sig, checkpoint_message(cp.seq, cp.hash)):
            return f"checkpoint at {cp.seq} has a bad signature"
        return None
