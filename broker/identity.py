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

On Container Apps the managed identity is served at ``IDENTITY_ENDPOINT`` with
the secret ``IDENTITY_HEADER`` (both set by the platform); tests run the broker
against ``tests.support.identity.IdentityEndpoint``, a stand-in for it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

CLIENT_ID_ENV = "AZURE_CLIENT_ID"


class HasClientId(Protocol):
    @property
    def azure_client_id(self) -> str: ...


def client_id_of(settings_or_client_id: HasClientId | str | None,
                 environ: Mapping[str, str] | None = None) -> str:
    """The user-assigned identity's client id, or "" for the system-assigned one."""
    if isinstance(settings_or_client_id, str) or settings_or_client_id is None:
        given = settings_or_client_id or ""
    else:
        given = settings_or_client_id.azure_client_id
    env = os.environ if environ is None else environ
    return (given or env.get(CLIENT_ID_ENV, "")).strip()


def azure_credential(settings_or_client_id: HasClientId | str | None = None) -> Any:
    """The managed-identity credential (an azure-core ``TokenCredential``).

    ``settings_or_client_id``: the broker settings (their ``azure_client_id``), a
    client id, or None; an empty one falls back to ``$AZURE_CLIENT_ID``, then to
    the system-assigned identity.  Needs the ``[azure]`` extra.
    """
    from azure.identity import ManagedIdentityCredential

    client_id = client_id_of(settings_or_client_id)
    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return ManagedIdentityCredential()


# PostgreSQL Flexible Server takes an Entra ID access token for this resource as the
# password (docs/deploy-azure.md).
POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"


def token_getter(credential: Any, scope: str) -> Callable[[], tuple[str, float]]:
    """``() -> (token, expires_on epoch seconds)`` for one scope of a credential."""

    def get() -> tuple[str, float]:
        tok = credential.get_token(scope)
        return str(tok.token), float(tok.expires_on)

    return get
