"""A stand-in for the managed-identity endpoint Azure Container Apps give a container.

The platform sets ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``; azure-identity's
``ManagedIdentityCredential`` (through MSAL's App Service branch, as 1.27 does it)
then asks::

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource>&client_id=<id>
    X-IDENTITY-HEADER: <IDENTITY_HEADER>

and reads ``{"access_token", "expires_on" (epoch seconds, a string), "resource",
"token_type": "Bearer", "client_id"}``.  This endpoint answers exactly that, on
127.0.0.1 in a thread, with JWT-shaped tokens (``header.payload.signature``,
base64url; payload ``aud`` = the resource, ``oid``, ``tid``, ``appid``, ``iat``,
``exp``).  The signature is random bytes: nothing here verifies it (PostgreSQL is
given the token as a password by the test).

A token is handed out again until it expires (then a new one is issued), as the
platform does.  A test can set the lifetime of the next tokens (``lifetime_s``),
``rotate()`` to new tokens, make answers late (``delay_s``), count ``requests``,
``revoke()`` the identity (every request then fails as for an unknown identity),
and pass ``env()`` to a subprocess so a real ``hoshu serve`` gets its tokens
through the real credential.

Refusals follow the platform: a wrong or missing ``X-IDENTITY-HEADER`` is 401, a
wrong api-version or missing resource is 400, an unknown client id (or none, when
there is no system-assigned identity) is 400 with a ``statusCode``/``message`` body.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_VERSION = "2019-08-01"
PATH = "/msi/token"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT-shaped token (unverified: for tests only)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a time-limit test) is not an error here


class IdentityEndpoint:
    """One user-assigned identity (and, if asked, a system-assigned one) served over HTTP.

    Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        tenant_id: str | None = None,
        principal_id: str | None = None,
        lifetime_s: float = 3600.0,
        system_assigned: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id or str(uuid.uuid4())
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.principal_id = principal_id or str(uuid.uuid4())
        self.system_assigned = system_assigned
        self.system_principal_id = str(uuid.uuid4())
        self.lifetime_s = lifetime_s
        self.delay_s = 0.0  # a test sets it to make every answer this late
        self.secret = secrets.token_urlsafe(24)
        self.clock = clock
        self.requests: Counter[str] = Counter()  # resource -> token requests answered
        self.refused = 0
        self.issued: list[str] = []  # every token handed out, oldest first
        self._tokens: dict[tuple[str, str], tuple[str, int]] = {}  # (resource, oid)
        self._revoked = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what a test controls -------------------------------------------------

    def rotate(self) -> None:
        """Forget the current tokens: the next request of each resource gets a new one."""
        with self._lock:
            self._tokens.clear()

    def revoke(self) -> None:
        """The identity is gone: every further request fails (400, identity not found)."""
        with self._lock:
            self._revoked = True
            self._tokens.clear()

    def token(self, resource: str) -> str:
        """The token currently issued for ``resource`` (issuing one if there is none)."""
        return self._current(resource, self.principal_id)[0]

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def url(self) -> str:
        assert self._server is not None, "IdentityEndpoint not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{PATH}"

    def env(self, *, client_id: bool = True) -> dict[str, str]:
        """What Container Apps put in a container's environment (plus, by default,
        ``AZURE_CLIENT_ID`` as infra/bicep sets it), for a subprocess or monkeypatch."""
        out = {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.secret}
        if client_id:
            out["AZURE_CLIENT_ID"] = self.client_id
        return out

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> IdentityEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if endpoint.delay_s:
                    time.sleep(endpoint.delay_s)  # a stalled endpoint, on purpose
                status, body = endpoint._answer(self.path, self.headers.get("X-IDENTITY-HEADER"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet, and never a token in a log

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="identity-endpoint",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> IdentityEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the endpoint ---------------------------------------------------------------

    def _answer(self, path: str, header: str | None) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path != PATH:
            return self._refuse(404, "not found")
        if header is None or not secrets.compare_digest(header, self.secret):
            return self._refuse(401, "missing or wrong X-IDENTITY-HEADER")
        if query.get("api-version") != API_VERSION:
            return self._refuse(400, f"unsupported api-version {query.get('api-version')!r}")
        resource = query.get("resource", "")
        if not resource:
            return self._refuse(400, "resource is required")
        asked = query.get("client_id")
        if (
            self._revoked
            or (asked is not None and asked != self.client_id)
            or (asked is None and not self.system_assigned)
        ):
            return self._refuse(
                400,
                "No User Assigned or Delegated Managed Identity found "
                "for specified ClientId/ResourceId/PrincipalId.",
            )
        oid = self.principal_id if asked else self.system_principal_id
        token, exp = self._current(resource, oid)
        with self._lock:
            self.requests[resource] += 1
        return 200, {
            "access_token": token,
            "expires_on": str(exp),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": self.client_id,
        }

    def _refuse(self, status: int, message: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.refused += 1
        return status, {"statusCode": status, "message": message}

    def _current(self, resource: str, oid: str) -> tuple[str, int]:
        with self._lock:
            tok = self._tokens.get((resource, oid))
            if tok is None or tok[1] <= self.clock():  # an expired token is replaced
                tok = self._issue(resource, oid)
                self._tokens[(resource, oid)] = tok
                self.issued.append(tok[0])
            return tok

    def _issue(self, resource: str, oid: str) -> tuple[str, int]:
        now = int(self.clock())
        exp = now + int(self.lifetime_s)
        header = {"typ": "JWT", "alg": "RS256", "kid": "hoshu-test"}
        claims = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": exp,
            "oid": oid,
            "sub": oid,
            "tid": self.tenant_id,
            "appid": self.client_id,
            "idtyp": "app",
            "uti": secrets.token_urlsafe(16),
        }
        token = ".".join(
            (
                _b64url(json.dumps(header).encode()),
                _b64url(json.dumps(claims).encode()),
                _b64url(secrets.token_bytes(256)),
            )
        )
        return token, exp
