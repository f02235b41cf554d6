"""The one credential every Azure client of the broker signs in with.

Key Vault, Blob Storage (recordings), PostgreSQL (Entra sign-in) and Azure
Monitor Logs Ingestion (Sentinel) all take the credential from
:func:`azure_credential`; build it once at start-up and hand the same object to
each client, so they share one token cache.

Which identity:

- a client id is set (``HOSHU_AZURE_CLIENT_ID``, else the ``AZURE_CLIENT_ID``
  environment variable the Azure SDKs read): that **user-assigned** managed
  identity (the reference deployment in ``infra/bicep`` sets both);
- none: the resource's **system-assigned** managed identity.

Deliberately not ``DefaultAzureCredential``: on a server its chain would fall
through to whatever else it finds (an ``AZURE_CLIENT_SECRET`` left in the
environment, a developer's ``az login``), so the broker could run as someone
other than the identity the deployment granted.  Only the managed identity is
tried; if there is none, every Azure call fails (``CredentialUnavailableError``
from azure-identity) and nothing falls back.  Tokens never appear in logs: the
credential is passed, never its tokens.

PostgreSQL with ``database_auth = "entra"``: :func:`database_password` is the
password of every new connection, an Entra ID access token for
:data:`POSTGRES_SCOPE`, kept until :data:`REFRESH_BEFORE_S` before it expires
(PostgreSQL checks it at sign-in only; open connections outlive it).

Errors::

    IdentityError
    └── DatabaseSignInError   no token for PostgreSQL (and no unexpired one kept);
                              the connection fails, nothing falls back

On Container Apps the managed identity is served at ``IDENTITY_ENDPOINT`` with
the secret ``IDENTITY_HEADER`` (both set by the platform); tests run the broker
against ``tests.support.identity.IdentityEndpoint``, a stand-in for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from audit.engines import PasswordSource
    from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

CLIENT_ID_ENV = "AZURE_CLIENT_ID"


class IdentityError(Exception):
    """The broker could not sign in as its managed identity."""


class DatabaseSignInError(IdentityError):
    """No Entra ID token for PostgreSQL: the new connection is not made."""


class HasClientId(Protocol):
    @property
    def azure_client_id(self) -> str: ...


def client_id_of(
    settings_or_client_id: HasClientId | str | None, environ: Mapping[str, str] | None = None
) -> str:
    """The user-assigned identity's client id, or "" for the system-assigned one."""
    if isinstance(settings_or_client_id, str) or settings_or_client_id is None:
        given = settings_or_client_id or ""
    else:
        given = settings_or_client_id.azure_client_id
    env = os.environ if environ is None else environ
    return (given or env.get(CLIENT_ID_ENV, "")).strip()


IDENTITY_TIMEOUT_S = 10.0  # connect and read limit of each token request


def azure_credential(
    settings_or_client_id: HasClientId | str | None = None, *, timeout_s: float = IDENTITY_TIMEOUT_S
) -> Any:
    """The managed-identity credential (an azure-core ``TokenCredential``).

    ``settings_or_client_id``: the broker settings (their ``azure_client_id``), a
    client id, or None; an empty one falls back to ``$AZURE_CLIENT_ID``, then to
    the system-assigned identity.  Each request to the identity endpoint has
    ``timeout_s`` to connect and to answer (azure-core's default is 300 s, which
    would hold a database connection that long).  Needs the ``[azure]`` extra.
    """
    from azure.identity import ManagedIdentityCredential

    client_id = client_id_of(settings_or_client_id)
    return ManagedIdentityCredential(
        client_id=client_id or None, connection_timeout=timeout_s, read_timeout=timeout_s
    )


# PostgreSQL Flexible Server takes an Entra ID access token for this resource as the
# password (docs/deploy-azure.md).
POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


def token_getter(credential: Any, scope: str) -> Callable[[], tuple[str, float]]:
    """``() -> (token, expires_on epoch seconds)`` for one scope of a credential."""

    def get() -> tuple[str, float]:
        tok = credential.get_token(scope)
        return str(tok.token), float(tok.expires_on)

    return get


REFRESH_BEFORE_S = 300.0  # a token is replaced this long before it expires


class TokenPassword:
    """A password that is an access token: fetched on first use, handed out while it
    has more than ``refresh_before_s`` left, then fetched again.

    If a refresh fails while the kept token has not expired yet, the kept one is
    used (and a warning logged, without the token); once it has expired, the
    call raises :class:`DatabaseSignInError`.  Thread-safe: connections of a pool
    are opened from many threads.
    """

    def __init__(
        self,
        get_token: Callable[[], tuple[str, float]],
        *,
        refresh_before_s: float = REFRESH_BEFORE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._get = get_token
        self._margin = refresh_before_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._expires_on = 0.0
        self.fetches = 0

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token and now < self._expires_on - self._margin:
                return self._token
            try:
                token, expires_on = self._get()
            except Exception as exc:
                if self._token and now < self._expires_on:
                    log.warning(
                        "database token refresh failed (%s); the current token "
                        "is used until it expires in %.0f s",
                        type(exc).__name__,
                        self._expires_on - now,
                    )
                    return self._token
                raise DatabaseSignInError(
                    f"no Entra ID token for PostgreSQL: {type(exc).__name__}: {exc}"
                ) from exc
            if not token:
                raise DatabaseSignInError("no Entra ID token for PostgreSQL: empty token")
            self._token, self._expires_on = token, expires_on
            self.fetches += 1
            log.info("database token fetched, valid for %.0f s", expires_on - now)
            return token


def database_password(settings: BrokerSettings, credential: Any = None) -> PasswordSource | None:
    """Where new database connections get their password: None (the URL's) for
    ``database_auth = "password"``; for ``"entra"`` a :class:`TokenPassword` over
    ``credential`` (default: :func:`azure_credential` of the settings)."""
    if settings.database_auth != "entra":
        return None
    cred = credential if credential is not None else azure_credential(settings)
    return TokenPassword(token_getter(cred, POSTGRES_SCOPE))
