"""The Azure Key Vault backend (``HOSHU_KEY_VAULT_URL``): nothing on the replica's disk.

* **SSH keys** (tunnel host key, front-door host key, user CA) are secrets holding
  OpenSSH private key text, read once per start.  On an empty vault the first
  replica creates them: it reads, finds them missing, writes its own, waits
  ``settle_s`` (once for all three) and reads again; every replica uses the secret's *current*
  version, so two replicas starting at once both end with the last writer's
  key and nobody serves with a key before the settle (Key Vault has no
  create-if-absent for secrets).
* **Sealing** is envelope encryption: each process makes one Fernet data key on
  its first seal, wrapped (RSA-OAEP-256) under the current version of the RSA
  key ``credentials-kek``; a sealed value is
  ``hoshu-seal-v1:kv:<key version>:<wrapped data key>:<fernet token>``.  Opening
  unwraps in the vault (the private key never leaves it), once per data key per
  process; the unwrapped key is kept in memory only.  Wrapping needs only the
  public key and is done here by the SDK.
* **Signing**: the EC P-256 key ``audit-signing`` signs checkpoints with
  ES256 inside the vault; each signature is checked here against the public
  key before it is written.
* **Rotation** makes a new version of the RSA or EC key (``hoshu admin keys
  rotate``, or the vault's own rotation policy, which the reference deployment
  sets to yearly); old versions stay enabled and keep opening and verifying.
  Each start uses the current version and trusts every enabled one.

Moving from key files: import ``keys/credentials.key`` as the secret
``credentials-key-file`` and values sealed with it (plain Fernet tokens) keep
opening; nothing new is sealed with it.

Names are the reference deployment's (``infra/bicep/modules/keyvault.bicep``):
keys ``audit-signing`` and ``credentials-kek``, secrets ``broker-host-key``,
``front-door-host-key`` and ``ssh-user-ca``.  A missing one is created on first
start only if the identity may (the Officer roles); otherwise the start stops
naming the missing permission, and an operator adds it.

The credential is the broker's managed identity (:func:`broker.identity.azure_credential`),
wrapped so that it only ever issues a token for the vault's own resource
(``https://vault.azure.net/.default``, or the sovereign cloud's): a vault
address, a challenge or a redirect cannot obtain a token for anything else.

Challenge-resource verification stays on (the SDK default) for every vault
except one on a loopback address (127.0.0.0/8, ::1, ``localhost``).  A loopback
address can never end in ``.vault.azure.net``, so the SDK check cannot pass
there; a loopback vault is a local stand-in (tests), and the scope guard above
still limits what its challenge can get to a vault token.

Every call has a connect and read timeout and at most two retries; responses
larger than 1 MiB are refused.  Failures are translated here into
:mod:`broker.keys.errors` with one line naming the vault and why.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric import ec

from audit.errors import ChainError
from audit.signing import ES256, CheckpointSigner, PublicKey, public_pem
from broker.access.crypto import PREFIX, SealError, SealUnavailable, SecretBox
from broker.keys.errors import KeyMaterialError, KeyStoreError, KeyStoreUnavailable
from broker.keys.store import NotAnSSHKey, Rotatable, check_ssh_key, new_ssh_key

T = TypeVar("T")

# the names infra/bicep/modules/keyvault.bicep and docs/deploy-azure.md use
SECRET_NAMES = {
    "tunnel": "broker-host-key",
    "front_door": "front-door-host-key",
    "ca": "ssh-user-ca",
}
SEALING_KEY = "credentials-kek"
# a data directory's credentials.key, imported when moving from key files to the vault:
# values sealed there (plain Fernet tokens) keep opening; new ones are sealed in the vault
LEGACY_SECRET = "credentials-key-file"  # noqa: S105 - a secret's name, not a secret
SIGNING_KEY = "audit-signing"
RSA_SIZE = 3072
MAX_RESPONSE = 1024 * 1024
_VERSION = re.compile(r"[0-9a-f]{32}")
_WHAT = {"tunnel": "tunnel host key", "front_door": "front-door host key", "ca": "SSH user CA"}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def vault_scope(url: str) -> str:
    """The one token scope this vault may get: ``https://vault.azure.net/.default`` for
    ``https://<name>.vault.azure.net`` (and the sovereign clouds' alike)."""
    host = (urlparse(url).hostname or "").lower()
    if is_loopback(host):
        return "https://vault.azure.net/.default"
    _, _, suffix = host.partition(".")
    if not suffix.startswith("vault."):
        raise KeyStoreError(f"Key Vault URL {url} is not https://<name>.vault.<cloud>")
    return f"https://{suffix}/.default"


class VaultOnlyCredential:
    """Hands out the wrapped credential's tokens for the vault's scope only."""

    def __init__(self, inner: Any, scope: str) -> None:
        self._inner, self._scope = inner, scope

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.exceptions import ClientAuthenticationError

        if list(scopes) != [self._scope]:
            raise ClientAuthenticationError(
                f"refusing a token for {', '.join(scopes) or 'no scope'}: this credential is "
                f"for {self._scope} only"
            )
        return self._inner.get_token(*scopes, **kwargs)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


def _size_limit_policy() -> Any:
    from azure.core.exceptions import ServiceResponseError
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class SizeLimit(SansIOHTTPPolicy):  # type: ignore[type-arg]
        def on_response(self, request: Any, response: Any) -> None:
            length = response.http_response.headers.get("Content-Length")
            if length is not None and int(length) > MAX_RESPONSE:
                raise ServiceResponseError(
                    f"Key Vault answered {length} bytes, more than {MAX_RESPONSE}"
                )

    return SizeLimit()


def _first_line(text: str, limit: int = 240) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def translate(url: str, what: str, exc: Exception) -> KeyStoreError:
    """One line for an operator: which vault, what it was doing, why (never a token)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) != 403:
        return KeyStoreUnavailable(
            f"Key Vault {url}: sign-in refused while {what}: {_first_line(str(exc))}"
        )
    if isinstance(exc, HttpResponseError) and exc.status_code == 403:
        code = getattr(getattr(exc, "error", None), "code", None) or "Forbidden"
        return KeyStoreUnavailable(
            f"Key Vault {url}: permission denied while {what} ({code}); reading and using "
            "keys needs 'Key Vault Secrets User' and 'Key Vault Crypto User', creating a "
            "missing one or rotating needs the 'Officer' roles"
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return KeyStoreUnavailable(
            f"Key Vault {url} cannot be reached while {what}: {_first_line(str(exc))}"
        )
    if isinstance(exc, HttpResponseError):
        return KeyStoreUnavailable(
            f"Key Vault {url} refused {what} (HTTP {exc.status_code}): {_first_line(str(exc))}"
        )
    return KeyStoreError(f"Key Vault {url}: {what} failed: {_first_line(str(exc))}")


def _jwk_public(jwk: Any) -> PublicKey:
    return ec.EllipticCurvePublicNumbers(
        int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"), ec.SECP256R1()
    ).public_key()


@dataclass
class VaultSigningKey:
    """An EC P-256 key in Key Vault signing with ES256; the private key stays there."""

    client: Any  # azure.keyvault.keys.crypto.CryptographyClient
    public_key: PublicKey
    version: str
    vault_url: str
    alg: str = ES256

    def sign(self, message: bytes) -> bytes:
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import SignatureAlgorithm

        try:
            result = self.client.sign(SignatureAlgorithm.es256, hashlib.sha256(message).digest())
        except AzureError as exc:
            raise ChainError(
                str(translate(self.vault_url, "signing an audit checkpoint", exc))
            ) from exc
        sig: bytes = result.signature
        return sig


class EnvelopeSealer:
    """Sealing with data keys wrapped under the vault's RSA key (see the module doc)."""

    def __init__(self, store: VaultKeyStore, current: Any) -> None:
        self._store = store
        self._current = current  # KeyVaultKey: the version new data keys are wrapped under
        self._lock = threading.Lock()
        self._data_key: tuple[str, str, Fernet] | None = None  # (version, wrapped b64, key)
        self._opened: dict[tuple[str, str], Fernet] = {}
        self._clients: dict[str, Any] = {}
        self._legacy_key: Fernet | None = None
        self.unwraps = 0  # how many data keys this process asked the vault to unwrap

    def _new_data_key(self) -> tuple[str, str, Fernet]:
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        raw = Fernet.generate_key()
        client = self._store.crypto_client(self._current)
        try:
            wrapped = client.wrap_key(
                KeyWrapAlgorithm.rsa_oaep_256, base64.urlsafe_b64decode(raw)
            ).encrypted_key
        except AzureError as exc:
            raise SealUnavailable(
                str(translate(self._store.url, "wrapping a data key", exc))
            ) from exc
        version = self._current.properties.version
        return version, base64.urlsafe_b64encode(wrapped).decode().rstrip("="), Fernet(raw)

    def seal(self, plaintext: bytes) -> str:
        with self._lock:
            if self._data_key is None:
                self._data_key = self._new_data_key()
                self._opened[self._data_key[:2]] = self._data_key[2]
            version, wrapped, key = self._data_key
        return f"{PREFIX}:kv:{version}:{wrapped}:{key.encrypt(plaintext).decode('ascii')}"

    def _key_for(self, version: str, wrapped: str) -> Fernet:
        from azure.core.exceptions import AzureError, HttpResponseError
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        with self._lock:
            found = self._opened.get((version, wrapped))
            if found is not None:
                return found
            client = self._clients.get(version)
            if client is None:
                client = self._clients[version] = self._store.crypto_client(
                    f"{self._store.url}/keys/{SEALING_KEY}/{version}"
                )
            try:
                blob = base64.urlsafe_b64decode(wrapped + "=" * (-len(wrapped) % 4))
                raw = client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, blob).key
            except ValueError as exc:
                raise SealError("the wrapped data key is damaged") from exc
            except HttpResponseError as exc:
                if exc.status_code in (400, 404):
                    raise SealError(
                        f"key version {version} cannot unwrap this value (HTTP {exc.status_code})"
                    ) from exc
                raise SealUnavailable(
                    str(translate(self._store.url, "unwrapping a data key", exc))
                ) from exc
            except AzureError as exc:
                raise SealUnavailable(
                    str(translate(self._store.url, "unwrapping a data key", exc))
                ) from exc
            self.unwraps += 1
            key = self._opened[(version, wrapped)] = Fernet(base64.urlsafe_b64encode(raw))
            return key

    def _legacy(self) -> Fernet:
        with self._lock:
            if self._legacy_key is None:
                self._legacy_key = self._store.legacy_fernet()
            return self._legacy_key

    def open(self, sealed: str) -> bytes:
        if not sealed.startswith(PREFIX + ":"):  # a plain Fernet token: sealed with key files
            try:
                return self._legacy().decrypt(sealed.encode("ascii"))
            except (InvalidToken, ValueError) as exc:
                raise SealError(
                    f"does not open with the imported key-file key (secret {LEGACY_SECRET})"
                ) from exc
        parts = sealed.split(":", 4)
        if len(parts) != 5 or parts[1] != "kv" or not _VERSION.fullmatch(parts[2]):
            raise SealError("not a value sealed with this broker's Key Vault key")
        _, _, version, wrapped, token = parts
        try:
            return self._key_for(version, wrapped).decrypt(token.encode("ascii"))
        except (InvalidToken, ValueError) as exc:
            raise SealError(f"does not open with key version {version}") from exc


class VaultKeyStore:
    """The broker's keys in one Azure Key Vault (see the module doc).

    ``credential``: an azure-core TokenCredential (the managed identity);
    ``client_options``: passed to every SDK client (tests: ``connection_verify``).
    """

    def __init__(
        self,
        url: str,
        credential: Any,
        *,
        settle_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        **client_options: Any,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise KeyStoreError(f"Key Vault URL {url!r} must be https://<name>.vault.azure.net")
        self.url = url.rstrip("/")
        self._scope = vault_scope(self.url)
        self._credential = VaultOnlyCredential(credential, self._scope)
        self._settle_s, self._sleep = settle_s, sleep
        self._options: dict[str, Any] = {
            "verify_challenge_resource": not is_loopback(parsed.hostname),
            "connection_timeout": 5,
            "read_timeout": 15,
            "retry_total": 2,
            "retry_backoff_factor": 0.4,
            "retry_backoff_max": 4,
            "per_retry_policies": [_size_limit_policy()],
            **client_options,
        }
        from azure.keyvault.keys import KeyClient
        from azure.keyvault.secrets import SecretClient

        self._secrets = SecretClient(self.url, self._credential, **self._options)
        self._keys = KeyClient(self.url, self._credential, **self._options)
        self._lock = threading.RLock()
        self._cache: dict[str, Any] = {}

    @property
    def where(self) -> str:
        return f"Key Vault {self.url}"

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        from azure.core.exceptions import AzureError

        try:
            yield
        except AzureError as exc:
            raise translate(self.url, what, exc) from exc

    def crypto_client(self, key: Any) -> Any:
        from azure.keyvault.keys.crypto import CryptographyClient

        return CryptographyClient(key, self._credential, **self._options)

    def _once(self, name: str, make: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = make()
            return self._cache[name]  # type: ignore[no-any-return]

    def check(self) -> None:
        self.tunnel_host_key()
        self.front_door_host_key()
        self.user_ca_key()
        self.secret_box()
        self.checkpoint_signer()

    # --- SSH keys (secrets) ---------------------------------------------------------

    def _read_secret(self, which: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        name, what = SECRET_NAMES[which], _WHAT[which]
        with self._calls(f"reading the {what} (secret {name})"):
            try:
                value: str | None = self._secrets.get_secret(name).value
                return value
            except ResourceNotFoundError:
                return None

    def _ssh_keys(self) -> dict[str, bytes]:
        """All three SSH keys; those missing are written first, then, after one settle,
        every replica reads the current versions."""
        texts = {which: self._read_secret(which) for which in SECRET_NAMES}
        missing = [which for which, text in texts.items() if text is None]
        for which in missing:
            name = SECRET_NAMES[which]
            with self._calls(f"creating the {_WHAT[which]} (secret {name})"):
                self._secrets.set_secret(
                    name,
                    new_ssh_key().decode(),
                    content_type="application/x-openssh-private-key",
                    tags={"created-by": "hoshu", "replica": socket.gethostname()[:200]},
                )
        if missing:
            self._sleep(self._settle_s)  # a replica starting beside us may write too
            texts.update({which: self._read_secret(which) for which in missing})
        out = {}
        for which, text in texts.items():
            try:
                out[which] = check_ssh_key((text or "").encode())
            except NotAnSSHKey as exc:
                raise KeyMaterialError(
                    f"Key Vault {self.url}: secret {SECRET_NAMES[which]} "
                    "is not an OpenSSH private key"
                ) from exc
        return out

    def tunnel_host_key(self) -> bytes:
        return self._once("ssh", self._ssh_keys)["tunnel"]

    def front_door_host_key(self) -> bytes:
        return self._once("ssh", self._ssh_keys)["front_door"]

    def user_ca_key(self) -> bytes:
        return self._once("ssh", self._ssh_keys)["ca"]

    def legacy_fernet(self) -> Fernet:
        """The imported key-file sealing key (secret ``credentials-key-file``); SealError
        when there is none: a plain Fernet token cannot be opened then."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            text = self._secrets.get_secret(LEGACY_SECRET).value
        except ResourceNotFoundError as exc:
            raise SealError(
                f"sealed with key files, and no secret {LEGACY_SECRET} holds their credentials.key"
            ) from exc
        except AzureError as exc:
            raise SealUnavailable(
                str(translate(self.url, f"reading secret {LEGACY_SECRET}", exc))
            ) from exc
        try:
            return Fernet((text or "").strip().encode())
        except ValueError as exc:
            raise SealError(f"secret {LEGACY_SECRET} is not a Fernet key") from exc

    # --- keys that stay in the vault ------------------------------------------------

    def _create(self, name: str) -> Any:
        if name == SEALING_KEY:
            return self._keys.create_rsa_key(
                name, size=RSA_SIZE, key_operations=["wrapKey", "unwrapKey"]
            )
        return self._keys.create_ec_key(name, curve="P-256", key_operations=["sign", "verify"])

    def _current_key(self, name: str) -> Any:
        """The key's current version, created on first start (then read back)."""
        from azure.core.exceptions import ResourceNotFoundError

        with self._calls(f"reading key {name}"):
            try:
                return self._keys.get_key(name)
            except ResourceNotFoundError:
                pass
        with self._calls(f"creating key {name}"):
            self._create(name)
            return self._keys.get_key(name)

    def secret_box(self) -> SecretBox:
        def make() -> SecretBox:
            key = self._current_key(SEALING_KEY)
            if str(key.key_type) not in (
                "RSA",
                "RSA-HSM",
                "JsonWebKeyType.RSA",
                "JsonWebKeyType.RSA_HSM",
            ):
                raise KeyMaterialError(f"Key Vault {self.url}: key {SEALING_KEY} is not RSA")
            return SecretBox.using(EnvelopeSealer(self, key))

        return self._once("sealing", make)

    def sealer(self) -> EnvelopeSealer:
        """The sealing strategy behind :meth:`secret_box` (its ``unwraps`` count)."""
        sealer = self.secret_box().sealer
        assert isinstance(sealer, EnvelopeSealer)
        return sealer

    def _signing_versions(self, current: str) -> list[tuple[str, PublicKey]]:
        """Every enabled version's public key: ``current`` first, then newest first."""
        with self._calls(f"listing versions of key {SIGNING_KEY}"):
            props = sorted(
                self._keys.list_properties_of_key_versions(SIGNING_KEY),
                key=lambda p: (p.version == current, p.created_on),
                reverse=True,
            )
            out = []
            for p in props:
                if p.enabled is False:
                    continue
                jwk = self._keys.get_key(SIGNING_KEY, p.version).key
                out.append((str(p.version), self._ec_public(jwk)))
        return out

    def _ec_public(self, jwk: Any) -> PublicKey:
        if (
            jwk.x is None
            or jwk.y is None
            or str(jwk.crv) not in ("P-256", "JsonWebKeyCurveName.P256")
        ):
            raise KeyMaterialError(f"Key Vault {self.url}: key {SIGNING_KEY} is not EC P-256")
        return _jwk_public(jwk)

    def checkpoint_signer(self) -> CheckpointSigner:
        def make() -> CheckpointSigner:
            key = self._current_key(SIGNING_KEY)
            public = self._ec_public(key.key)
            retired = [
                pub
                for v, pub in self._signing_versions(key.properties.version)
                if v != key.properties.version
            ]
            signing = VaultSigningKey(
                self.crypto_client(key), public, key.properties.version, self.url
            )
            try:
                return CheckpointSigner(signing, retired=retired)
            except ChainError as exc:
                raise KeyMaterialError(str(exc)) from exc

        return self._once("signing", make)

    def signing_public_pems(self) -> list[tuple[str, bytes]]:
        current = self._current_key(SIGNING_KEY).properties.version  # created if absent
        return [(v, public_pem(k)) for v, k in self._signing_versions(current)]

    def rotate(self, what: Rotatable) -> str:
        name = SEALING_KEY if what == "sealing" else SIGNING_KEY
        self._current_key(name)
        with self._calls(f"making a new version of key {name}"):
            return str(self._create(name).properties.version)

    def close(self) -> None:
        for client in (self._secrets, self._keys):
            client.close()
