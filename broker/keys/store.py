"""What the broker asks of its key store, whichever backend holds the keys.

Five keys, each loaded (or created on first start) once per process and cached:

=====================  ==========================  ===================================
key                    files (embedded default)    Azure Key Vault
=====================  ==========================  ===================================
tunnel host key        ``keys/broker_host_key``    secret ``broker-host-key``
front-door host key    ``keys/ssh_front_door_...`` secret ``front-door-host-key``
SSH user CA            ``keys/ssh_user_ca``        secret ``ssh-user-ca``
sealing (credentials,  ``keys/credentials.key``    RSA key ``credentials-kek``: envelope
TOTP secrets)          (+ ``.v<N>`` rotations)     encryption, wrap/unwrap in the vault
audit signing          ``keys/audit_signing_key``  EC P-256 key ``audit-signing``:
                       Ed25519 (+ ``.v<N>``)       ES256, signed in the vault
=====================  ==========================  ===================================

The SSH keys must be in asyncssh's memory, so Key Vault holds them as secrets
(OpenSSH private key text); the sealing and signing keys never leave the vault.
The store hands SSH keys out as OpenSSH private key bytes
(``asyncssh.import_private_key`` takes them), so this package (and the API,
which builds the control plane) needs no asyncssh.
"""

from __future__ import annotations

from typing import Literal, Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_ssh_private_key,
)

from audit.signing import CheckpointSigner
from broker.access.crypto import SecretBox

Rotatable = Literal["sealing", "signing"]
ROTATABLE: tuple[Rotatable, ...] = ("sealing", "signing")


class KeyStore(Protocol):
    """The broker's keys.  Every method raises :class:`broker.keys.errors.KeyStoreError`
    (never returns a half-made key); :meth:`check` at start-up makes the broker
    refuse to start with one line saying which store and why."""

    @property
    def where(self) -> str:
        """Which store, for operators: ``files in /data/keys`` or ``Key Vault https://...``."""
        ...

    def check(self) -> None:
        """Load (creating what is missing) every key: the store is reachable and
        this broker may use it.  Call before serving anything."""
        ...

    def tunnel_host_key(self) -> bytes:
        """The SSH host key gateways pin (the tunnel endpoint's)."""
        ...

    def front_door_host_key(self) -> bytes:
        """The SSH host key engineers' clients see at the front door."""
        ...

    def user_ca_key(self) -> bytes:
        """The private key of the SSH user certificate authority."""
        ...

    def secret_box(self) -> SecretBox:
        """Seals with the current sealing key version; opens every version's values."""
        ...

    def checkpoint_signer(self) -> CheckpointSigner:
        """Signs with the current signing key version; knows every version's public key."""
        ...

    def signing_public_pems(self) -> list[tuple[str, bytes]]:
        """``(version, PEM)`` of every version of the audit signing key, current first:
        what an auditor pins for ``hoshu audit verify --key``."""
        ...

    def rotate(self, what: Rotatable) -> str:
        """Make a new version of the sealing or signing key; returns its version.

        New data uses it from the next start of each broker; every older version
        keeps opening and verifying what it sealed or signed."""
        ...

    def close(self) -> None: ...


class NotAnSSHKey(ValueError):
    """Bytes that are not an unencrypted OpenSSH private key."""


def check_ssh_key(private: bytes) -> bytes:
    """``private`` if it is an unencrypted OpenSSH private key; NotAnSSHKey otherwise."""
    try:
        load_ssh_private_key(private, password=None)
    except (ValueError, TypeError) as exc:
        raise NotAnSSHKey(str(exc)) from exc
    return private


def public_line(private: bytes) -> str:
    """The OpenSSH public key line (``ssh-ed25519 AAAA...``) of a private key."""
    key = load_ssh_private_key(private, password=None)
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def new_ssh_key() -> bytes:
    """A new Ed25519 key as OpenSSH private key bytes."""
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
    )
