"""The key-file backend (the embedded default): keys under ``settings.keys_dir``.

Byte-compatible with every data directory hoshu wrote before the key store:
the same file names, the same formats (OpenSSH private keys, a Fernet key,
an Ed25519 PKCS#8 PEM), created 0600 on first start and never rewritten.

Rotation adds a file beside the old one and never touches it:
``credentials.key`` is sealing version 1, ``credentials.key.v2`` version 2, ...;
``audit_signing_key`` (+ ``.pub``) is signing version 1,
``audit_signing_key.v2`` (+ ``.v2.pub``) version 2.  The highest version seals
and signs; every version opens and verifies.  A new file is created with
``O_EXCL``: two rotations at once cannot overwrite each other (the second
fails and says so).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.errors import ChainError
from audit.keyfiles import create_secret
from audit.signing import (
    CheckpointSigner,
    Ed25519Key,
    load_ed25519_file,
    load_public_pem,
    public_pem,
    write_ed25519_file,
)
from broker.access.crypto import FernetVersions, SecretBox
from broker.keys.errors import KeyMaterialError, KeyStoreError
from broker.keys.store import NotAnSSHKey, Rotatable, check_ssh_key, new_ssh_key, public_line
from broker.settings import BrokerSettings

T = TypeVar("T")


def versions(base: Path) -> dict[int, Path]:
    """``{1: base, 2: base.v2, ...}`` for the versions that exist."""
    found = {1: base} if base.exists() else {}
    pattern = re.compile(re.escape(base.name) + r"\.v([1-9][0-9]{0,5})")
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            if (m := pattern.fullmatch(p.name)) and int(m.group(1)) > 1:
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def version_path(base: Path, n: int) -> Path:
    return base if n == 1 else base.with_name(f"{base.name}.v{n}")


def load_or_create_ssh_key(path: Path, *, write_public: bool = False) -> bytes:
    """An OpenSSH private key file, created (0600, a planted file refused) if missing."""
    if not path.exists():
        key = new_ssh_key()
        try:
            create_secret(path, key)
        except FileExistsError:
            pass  # another process made it first: read theirs
        except OSError as exc:
            raise KeyStoreError(f"cannot create {path}: {exc.strerror or exc}") from exc
        else:
            if write_public:
                path.with_name(path.name + ".pub").write_text(public_line(key) + "\n")
            return key
    try:
        return check_ssh_key(path.read_bytes())
    except (NotAnSSHKey, OSError) as exc:
        raise KeyMaterialError(f"cannot read SSH key {path}: {exc}") from exc


class FileKeyStore:
    def __init__(self, settings: BrokerSettings) -> None:
        self._s = settings
        self._lock = threading.Lock()
        self._cache: dict[str, object] = {}

    @property
    def where(self) -> str:
        return f"files in {self._s.keys_dir}"

    def _once(self, name: str, make: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = make()
            return self._cache[name]  # type: ignore[return-value]

    def check(self) -> None:
        self.tunnel_host_key()
        self.front_door_host_key()
        self.user_ca_key()
        self.secret_box()
        self.checkpoint_signer()

    def tunnel_host_key(self) -> bytes:
        return self._once("tunnel", lambda: load_or_create_ssh_key(self._s.host_key_path))

    def front_door_host_key(self) -> bytes:
        return self._once(
            "front_door",
            lambda: load_or_create_ssh_key(self._s.front_door_host_key_path, write_public=True),
        )

    def user_ca_key(self) -> bytes:
        return self._once("ca", lambda: load_or_create_ssh_key(self._s.user_ca_key_path))

    # --- sealing --------------------------------------------------------------------

    def _fernet_keys(self) -> dict[int, bytes]:
        base = self._s.credential_key_path
        out = {}
        for n, p in versions(base).items():
            try:
                out[n] = p.read_bytes().strip()
                Fernet(out[n])
            except (OSError, ValueError) as exc:
                raise KeyMaterialError(f"cannot read sealing key {p}: {exc}") from exc
        return out

    def secret_box(self) -> SecretBox:
        def make() -> SecretBox:
            base = self._s.credential_key_path
            if not base.exists():
                try:
                    create_secret(base, Fernet.generate_key())
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise KeyStoreError(f"cannot create {base}: {exc.strerror}") from exc
            return SecretBox.using(FernetVersions(self._fernet_keys(), reload=self._fernet_keys))

        return self._once("sealing", make)

    # --- signing --------------------------------------------------------------------

    def checkpoint_signer(self) -> CheckpointSigner:
        def make() -> CheckpointSigner:
            base = self._s.audit_signing_key_path
            try:
                if not base.exists():
                    CheckpointSigner.load_or_create(base)
                found = versions(base)
                current = max(found)
                key = load_ed25519_file(found[current])
                retired = [
                    load_ed25519_file(p).public_key() for n, p in found.items() if n != current
                ]
            except ChainError as exc:
                raise KeyMaterialError(str(exc)) from exc
            return CheckpointSigner(Ed25519Key(key, str(current)), retired=retired)

        return self._once("signing", make)

    def signing_public_pems(self) -> list[tuple[str, bytes]]:
        base = self._s.audit_signing_key_path
        out = []
        for n, p in sorted(versions(base).items(), reverse=True):
            pub = p.with_name(p.name + ".pub")
            try:
                pem = (
                    pub.read_bytes()
                    if pub.exists()
                    else public_pem(load_ed25519_file(p).public_key())
                )
                load_public_pem(pem, str(pub))
            except (OSError, ChainError) as exc:
                raise KeyMaterialError(f"cannot read audit signing key version {n}: {exc}") from exc
            out.append((str(n), pem))
        return out

    # --- rotation -------------------------------------------------------------------

    def rotate(self, what: Rotatable) -> str:
        if what == "sealing":
            base = self._s.credential_key_path
            self.secret_box()  # version 1 exists before version 2
            n = max(versions(base)) + 1
            try:
                create_secret(version_path(base, n), Fernet.generate_key())
            except FileExistsError as exc:
                raise KeyStoreError(
                    f"{version_path(base, n)} appeared meanwhile: another "
                    "rotation ran at the same time; run it again"
                ) from exc
            return str(n)
        base = self._s.audit_signing_key_path
        self.checkpoint_signer()
        n = max(versions(base)) + 1
        try:
            write_ed25519_file(version_path(base, n), Ed25519PrivateKey.generate())
        except FileExistsError as exc:
            raise KeyStoreError(
                f"{version_path(base, n)} appeared meanwhile: another "
                "rotation ran at the same time; run it again"
            ) from exc
        except ChainError as exc:
            raise KeyStoreError(str(exc)) from exc
        return str(n)

    def close(self) -> None:
        pass
