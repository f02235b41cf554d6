"""An Azure Key Vault stand-in: HTTPS on 127.0.0.1, the documented REST contract.

Key Vault cannot run here, so tests drive the real Azure SDK clients
(``azure-keyvault-secrets``, ``azure-keyvault-keys`` and its
``CryptographyClient``) against this server.  It follows the Key Vault REST API
(https://learn.microsoft.com/rest/api/keyvault/) as the SDK speaks it
(``api-version`` 7.x, 2025-07-01 and 2026-04-01):

* challenge authentication: a request without a bearer token gets 401 with
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"``; a token must be one issued for
  ``https://vault.azure.net`` and not yet expired, else 401
  (``error="invalid_token"``).  Tokens come from :class:`Tokens` (an in-process
  credential) or, through :class:`IdentityTokens`, from the managed-identity
  stand-in the broker's real ``ManagedIdentityCredential`` talks to;
* secrets: set (a new version each time), get (current or a version), list
  versions;
* keys: create (EC P-256, RSA 2048/3072/4096; a new version on an existing name),
  get (JWK, public half only), list versions, ``sign`` (ES256, ES384 not kept),
  ``wrapkey``/``unwrapkey`` (RSA-OAEP, RSA-OAEP-256).  Private keys stay in here;
  signatures come back raw (``r || s``), which the SDK does not check;
* errors as Key Vault returns them: ``{"error": {"code": "SecretNotFound" |
  "KeyNotFound" | "Forbidden" | "BadParameter" | "Unauthorized", "message": ...}}``
  with 404 / 403 / 400 / 401.  :meth:`KeyVault.forbid` takes data actions away
  from the caller (``"secrets/get"``, ``"keys/sign"``, ...) as RBAC would.

Test hooks: :attr:`KeyVault.calls` counts operations; :meth:`KeyVault.race_on_missing`
holds the first N "secret not found" answers until N callers have asked (two
replicas seeing an empty vault at once).

The certificate is self-signed for 127.0.0.1 (``cert_path``); SDK clients get
``connection_verify=vault.cert_path``, a subprocess ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from azure.core.credentials import AccessToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.tls import self_signed

RESOURCE = "https://vault.azure.net"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
API_VERSIONS = {"7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"}
MAX_BODY = 256 * 1024


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """Access tokens as Entra ID would issue them: for one resource, until they expire.

    :meth:`credential` is an azure-core ``TokenCredential`` handing out tokens
    from here (what a managed identity would); :meth:`audience` is what the
    vault asks about a presented token.  ``scopes_asked`` records every scope a
    credential was asked for.
    """

    def __init__(self, ttl_s: float = 3600) -> None:
        self.ttl_s = ttl_s
        self._issued: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.scopes_asked: list[str] = []

    def issue(self, resource: str, ttl_s: float | None = None) -> AccessToken:
        token = "eyJ" + secrets.token_urlsafe(32)
        expires = time.time() + (self.ttl_s if ttl_s is None else ttl_s)
        with self._lock:
            self._issued[token] = (resource.rstrip("/"), expires)
        return AccessToken(token, int(expires))

    @property
    def issued(self) -> list[str]:
        """Every token handed out so far (to check none reaches a log)."""
        with self._lock:
            return list(self._issued)

    def audience(self, token: str) -> str | None:
        """The resource ``token`` was issued for; None if unknown or expired."""
        with self._lock:
            found = self._issued.get(token)
        if found is None or found[1] <= time.time():
            return None
        return found[0]

    def credential(self, ttl_s: float | None = None) -> TokenCredentialStandIn:
        return TokenCredentialStandIn(self, ttl_s)


class IdentityTokens:
    """The tokens of a managed-identity stand-in (:class:`tests.support.identity.IdentityEndpoint`),
    as the vault sees them: issued there, for their ``aud``, until their ``exp``."""

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    @property
    def issued(self) -> list[str]:
        return list(self._endpoint.issued)

    def audience(self, token: str) -> str | None:
        from tests.support.identity import jwt_claims

        if token not in self._endpoint.issued:
            return None
        claims = jwt_claims(token)
        if float(claims.get("exp", 0)) <= time.time():
            return None
        return str(claims.get("aud", "")).rstrip("/")


class TokenCredentialStandIn:
    def __init__(self, tokens: Tokens, ttl_s: float | None) -> None:
        self._tokens, self._ttl = tokens, ttl_s

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self._tokens.scopes_asked.extend(scopes)
        resource = scopes[0].removesuffix("/.default") if scopes else ""
        return self._tokens.issue(resource, self._ttl)

    def close(self) -> None:
        pass


@dataclass
class _Version:
    id: str
    created: int
    value: str = ""  # secrets
    content_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    private: Any = None  # keys: the private key, never sent out
    kty: str = ""
    ops: list[str] = field(default_factory=list)


_RSA_POOL: dict[int, list[Any]] = {}
_RSA_NEXT: Counter[int] = Counter()
_POOL_SIZE = 4


def _rsa_key(size: int) -> Any:
    """RSA generation takes seconds on a busy machine: each process makes at most four
    keys per size and hands them out in turn (consecutive versions always differ)."""
    pool = _RSA_POOL.setdefault(size, [])
    n = _RSA_NEXT[size]
    _RSA_NEXT[size] += 1
    if len(pool) < _POOL_SIZE:
        pool.append(rsa.generate_private_key(public_exponent=65537, key_size=size))
        return pool[-1]
    return pool[n % _POOL_SIZE]


class _Denied(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


_SECRET = re.compile(r"^/secrets/([0-9A-Za-z-]{1,127})(?:/([0-9a-f]{32}|versions)?)?/?$")
_KEY = re.compile(
    r"^/keys/([0-9A-Za-z-]{1,127})(?:/(create|versions|[0-9a-f]{32})?)?"
    r"(?:/(sign|wrapkey|unwrapkey))?/?$"
)


class KeyVault:
    """One vault on ``https://127.0.0.1:<port>``; start with :meth:`start`, end with
    :meth:`close` (or use the ``key_vault`` fixture)."""

    def __init__(
        self, directory: Path, tokens: Tokens | IdentityTokens | None = None, name: str = "hoshu-kv"
    ) -> None:
        self.name = name
        self.tokens: Any = tokens or Tokens()
        self.resource = RESOURCE  # what the challenge names (a test may name another)
        self.cert_path, key_path = self_signed(
            directory, "keyvault", common_name="keyvault-stand-in", dns=("localhost",)
        )
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(self.cert_path, key_path)
        self._lock = threading.Lock()
        self.secrets: dict[str, list[_Version]] = {}
        self.keys: dict[str, list[_Version]] = {}
        self.calls: Counter[str] = Counter()
        self._forbidden: set[str] = set()
        self._race: threading.Barrier | None = None
        self._race_left = 0
        self._server = self._make_server()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> KeyVault:
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="keyvault-stand-in"
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def forbid(self, *actions: str) -> None:
        """Take data actions away from every caller (``"keys/sign"``, ``"secrets/get"``)."""
        self._forbidden.update(actions)

    def allow(self, *actions: str) -> None:
        self._forbidden.difference_update(actions)

    def race_on_missing(self, parties: int) -> None:
        """The next ``parties`` "not found" answers for secrets wait for one another."""
        self._race, self._race_left = threading.Barrier(parties, timeout=10), parties

    def secret_versions(self, name: str) -> list[str]:
        return [v.id for v in self.secrets.get(name, [])]

    def key_versions(self, name: str) -> list[str]:
        return [v.id for v in self.keys.get(name, [])]

    # --- the REST operations ---------------------------------------------------------

    def _check_auth(self, headers: Any) -> None:
        challenge = (
            f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
            f'resource="{self.resource}"'
        )
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise _Denied(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                {"WWW-Authenticate": challenge},
            )
        if self.tokens.audience(auth[7:].strip()) != RESOURCE:
            raise _Denied(
                401,
                "Unauthorized",
                "AKV10022: Invalid audience or expired token.",
                {"WWW-Authenticate": challenge + ', error="invalid_token"'},
            )

    def _permit(self, action: str) -> None:
        self.calls[action] += 1
        if action in self._forbidden:
            raise _Denied(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource.\r\n"
                f"Action: 'Microsoft.KeyVault/vaults/{action}'\r\n"
                f"Resource: '/vaults/{self.name}'",
            )

    def _secret_bundle(self, name: str, v: _Version, with_value: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f"{self.url}/secrets/{name}/{v.id}",
            "attributes": {
                "enabled": True,
                "created": v.created,
                "updated": v.created,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": v.tags,
        }
        if v.content_type:
            out["contentType"] = v.content_type
        if with_value:
            out["value"] = v.value
        return out

    def _jwk(self, name: str, v: _Version) -> dict[str, Any]:
        kid = f"{self.url}/keys/{name}/{v.id}"
        pub = v.private.public_key()
        if v.kty.startswith("EC"):
            nums = pub.public_numbers()
            return {
                "kid": kid,
                "kty": v.kty,
                "key_ops": v.ops,
                "crv": "P-256",
                "x": b64url(nums.x.to_bytes(32, "big")),
                "y": b64url(nums.y.to_bytes(32, "big")),
            }
        nums = pub.public_numbers()
        return {
            "kid": kid,
            "kty": v.kty,
            "key_ops": v.ops,
            "n": b64url(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")),
            "e": b64url(nums.e.to_bytes(3, "big")),
        }

    def _key_bundle(self, name: str, v: _Version) -> dict[str, Any]:
        return {
            "key": self._jwk(name, v),
            "tags": v.tags,
            "attributes": {
                "enabled": True,
                "created": v.created,
                "updated": v.created,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
                "exportable": False,
            },
        }

    def _find(
        self, table: dict[str, list[_Version]], kind: str, name: str, version: str | None
    ) -> _Version:
        versions = table.get(name, [])
        found = (
            versions[-1]
            if versions and not version
            else next((v for v in versions if v.id == version), None)
        )
        if found is None:
            what = f"{name}/{version}" if version else name
            raise _Denied(
                404,
                f"{kind}NotFound",
                f"A {kind.lower()} with (name/id) {what} was not found in this key "
                "vault. If you recently deleted this "
                f"{kind.lower()} you may be able to recover it using the correct "
                f"recovery command.",
            )
        return found

    def _secret(
        self, method: str, name: str, tail: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        if method == "PUT" and tail is None:
            self._permit("secrets/setSecret/action")
            value = body.get("value")
            if not isinstance(value, str):
                raise _Denied(400, "BadParameter", "Property value is required.")
            v = _Version(
                uuid.uuid4().hex,
                int(time.time()),
                value=value,
                content_type=body.get("contentType"),
                tags=body.get("tags") or {},
            )
            with self._lock:
                self.secrets.setdefault(name, []).append(v)
            return self._secret_bundle(name, v, True)
        if method == "GET" and tail == "versions":
            self._permit("secrets/readMetadata/action")
            return {
                "value": [self._secret_bundle(name, v, False) for v in self.secrets.get(name, [])],
                "nextLink": None,
            }
        if method == "GET":
            self._permit("secrets/getSecret/action")
            try:
                with self._lock:
                    v = self._find(self.secrets, "Secret", name, tail)
            except _Denied:
                barrier = self._race
                if barrier is not None and self._race_left > 0:
                    self._race_left -= 1
                    barrier.wait()
                raise
            return self._secret_bundle(name, v, True)
        raise _Denied(405, "BadParameter", f"{method} is not supported here")

    def _key(
        self, method: str, name: str, tail: str | None, op: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        if method == "POST" and tail == "create":
            self._permit("keys/create/action")
            return self._create_key(name, body)
        if method == "GET" and tail == "versions":
            self._permit("keys/read")
            return {
                "value": [
                    {
                        "kid": f"{self.url}/keys/{name}/{v.id}",
                        "attributes": {"enabled": True, "created": v.created, "updated": v.created},
                        "tags": v.tags,
                    }
                    for v in self.keys.get(name, [])
                ],
                "nextLink": None,
            }
        if method == "GET" and op is None:
            self._permit("keys/read")
            with self._lock:
                v = self._find(self.keys, "Key", name, tail)
            return self._key_bundle(name, v)
        if method == "POST" and op is not None and tail:
            with self._lock:
                v = self._find(self.keys, "Key", name, tail)
            return self._crypto(name, v, op, body)
        raise _Denied(405, "BadParameter", f"{method} is not supported here")

    def _create_key(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        kty = str(body.get("kty", ""))
        if kty in ("EC", "EC-HSM"):
            if body.get("crv", "P-256") != "P-256":
                raise _Denied(400, "BadParameter", "Only P-256 is supported by this vault.")
            private: Any = ec.generate_private_key(ec.SECP256R1())
            ops = ["sign", "verify"]
        elif kty in ("RSA", "RSA-HSM"):
            size = int(body.get("key_size") or 2048)
            if size not in (2048, 3072, 4096):
                raise _Denied(400, "BadParameter", f"Invalid key size {size}.")
            private = _rsa_key(size)
            ops = ["encrypt", "decrypt", "wrapKey", "unwrapKey", "sign", "verify"]
        else:
            raise _Denied(400, "BadParameter", f"Invalid key type {kty!r}.")
        wanted = body.get("key_ops")
        if wanted:
            ops = [o for o in ops if o in wanted]
        v = _Version(
            uuid.uuid4().hex,
            int(time.time()),
            private=private,
            kty=kty,
            ops=ops,
            tags=body.get("tags") or {},
        )
        with self._lock:
            self.keys.setdefault(name, []).append(v)
        return self._key_bundle(name, v)

    def _crypto(self, name: str, v: _Version, op: str, body: dict[str, Any]) -> dict[str, Any]:
        kid = f"{self.url}/keys/{name}/{v.id}"
        alg = str(body.get("alg", ""))
        try:
            value = unb64url(str(body.get("value", "")))
        except ValueError as exc:
            raise _Denied(400, "BadParameter", "value is not base64url") from exc
        if op == "sign":
            self._permit("keys/sign/action")
            if alg != "ES256" or not v.kty.startswith("EC") or "sign" not in v.ops:
                raise _Denied(
                    400, "BadParameter", f"Algorithm {alg!r} is not valid for key {name} ({v.kty})."
                )
            if len(value) != 32:
                raise _Denied(400, "BadParameter", "ES256 requires a 32-byte SHA-256 digest.")
            from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

            der = v.private.sign(value, ec.ECDSA(Prehashed(hashes.SHA256())))
            r, s = decode_dss_signature(der)
            return {"kid": kid, "value": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}
        if op in ("wrapkey", "unwrapkey"):
            self._permit("keys/wrap/action" if op == "wrapkey" else "keys/unwrap/action")
            wanted = "wrapKey" if op == "wrapkey" else "unwrapKey"
            if (
                alg not in ("RSA-OAEP", "RSA-OAEP-256")
                or not v.kty.startswith("RSA")
                or wanted not in v.ops
            ):
                raise _Denied(
                    400, "BadParameter", f"Algorithm {alg!r} is not valid for key {name} ({v.kty})."
                )
            digest: Any = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()  # noqa: S303
            pad = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
            try:
                out = (
                    v.private.public_key().encrypt(value, pad)
                    if op == "wrapkey"
                    else v.private.decrypt(value, pad)
                )
            except ValueError as exc:
                raise _Denied(400, "BadParameter", "The parameter is incorrect.") from exc
            return {"kid": kid, "value": b64url(out)}
        raise _Denied(400, "BadParameter", f"unknown operation {op}")

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> dict[str, Any]:
        self._check_auth(headers)
        version = (query.get("api-version") or [""])[0]
        if version not in API_VERSIONS:
            raise _Denied(
                400, "BadParameter", f"The specified version ({version}) is not recognized."
            )
        try:
            parsed: dict[str, Any] = json.loads(body) if body else {}
        except ValueError as exc:
            raise _Denied(400, "BadParameter", "The request body is not valid JSON.") from exc
        if m := _SECRET.match(path):
            return self._secret(method, m.group(1), m.group(2), parsed)
        if m := _KEY.match(path):
            return self._key(method, m.group(1), m.group(2), m.group(3), parsed)
        raise _Denied(404, "NotFound", f"{path} is not a Key Vault path")

    def _make_server(self) -> ThreadingHTTPServer:
        vault = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(
                self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._reply(
                        413, {"error": {"code": "BadParameter", "message": "request too large"}}
                    )
                    return
                body = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                try:
                    out = vault.handle(
                        self.command, url.path, parse_qs(url.query), self.headers, body
                    )
                except _Denied as exc:
                    self._reply(
                        exc.status,
                        {"error": {"code": exc.code, "message": exc.message}},
                        exc.headers,
                    )
                    return
                self._reply(200, out)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        ctx = self._ctx

        def get_request() -> Any:
            sock, addr = socketserver_accept()
            return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

        socketserver_accept = server.socket.accept
        server.get_request = get_request  # type: ignore[method-assign]
        return server
