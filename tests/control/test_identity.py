"""The broker's Azure credential is the managed identity, and it gets (and refreshes)
its tokens from the endpoint Container Apps provide (here: tests.support.identity)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

from broker.identity import POSTGRES_SCOPE, azure_credential, client_id_of
from broker.settings import BrokerSettings
from tests.support import poll_sync
from tests.support.identity import IdentityEndpoint, jwt_claims

PG_RESOURCE = POSTGRES_SCOPE.removesuffix("/.default")


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[IdentityEndpoint]:
    with IdentityEndpoint() as ep:
        for k, v in ep.env(client_id=False).items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)
        yield ep


def test_user_assigned_identity_gets_a_token_for_the_resource(endpoint: IdentityEndpoint) -> None:
    """The credential built from the broker settings signs in as the user-assigned
    identity: the token is for the asked resource and names that identity."""
    cred = azure_credential(BrokerSettings(azure_client_id=endpoint.client_id))
    assert isinstance(cred, ManagedIdentityCredential)
    tok = cred.get_token(POSTGRES_SCOPE)
    claims = jwt_claims(tok.token)
    assert claims["aud"] == PG_RESOURCE
    assert claims["appid"] == endpoint.client_id
    assert claims["oid"] == endpoint.principal_id
    assert claims["tid"] == endpoint.tenant_id
    assert abs(tok.expires_on - (time.time() + 3600)) < 30
    assert endpoint.requests[PG_RESOURCE] == 1


def test_token_is_cached_then_refreshed_when_it_expires(endpoint: IdentityEndpoint) -> None:
    """A fresh token is served from the credential's cache; once it nears expiry the
    credential asks again and gets the new one."""
    cred = ManagedIdentityCredential(client_id=endpoint.client_id)
    endpoint.lifetime_s = 3600
    first = cred.get_token(POSTGRES_SCOPE).token
    assert cred.get_token(POSTGRES_SCOPE).token == first
    assert endpoint.requests[PG_RESOURCE] == 1  # the second came from the cache

    endpoint.lifetime_s = 2  # next tokens: already inside MSAL's 5-minute refresh margin
    other = "https://vault.azure.net"
    a = cred.get_token(other + "/.default").token
    assert jwt_claims(a)["aud"] == other

    def refreshed() -> str:
        t: str = cred.get_token(other + "/.default").token
        return t if t != a else ""

    b = poll_sync(refreshed, deadline_s=10, what="the expired token to be replaced")
    assert jwt_claims(b)["exp"] > jwt_claims(a)["exp"]
    assert endpoint.requests[other] >= 2


def test_client_id_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOSHU_AZURE_CLIENT_ID wins; unset, AZURE_CLIENT_ID (what the Azure SDKs read)."""
    from_env, from_settings = str(uuid.uuid4()), str(uuid.uuid4())
    monkeypatch.setenv("AZURE_CLIENT_ID", from_env)
    assert client_id_of(BrokerSettings(azure_client_id=from_settings)) == from_settings
    assert client_id_of(BrokerSettings()) == from_env
    assert client_id_of(None) == from_env
    monkeypatch.delenv("AZURE_CLIENT_ID")
    assert client_id_of(None) == ""


def test_unknown_or_revoked_identity_gets_no_token(endpoint: IdentityEndpoint) -> None:
    """Fail closed: a client id the platform does not know, a missing system-assigned
    identity, or a revoked one raise, and no token is handed out."""
    with pytest.raises((ClientAuthenticationError, CredentialUnavailableError)):
        ManagedIdentityCredential(client_id="not-this-one").get_token(POSTGRES_SCOPE)
    with pytest.raises((ClientAuthenticationError, CredentialUnavailableError)):
        azure_credential(None).get_token(POSTGRES_SCOPE)  # system-assigned: none here
    cred = azure_credential(endpoint.client_id)
    endpoint.revoke()
    with pytest.raises((ClientAuthenticationError, CredentialUnavailableError)):
        cred.get_token(POSTGRES_SCOPE)
    assert endpoint.total_requests == 0
    assert endpoint.refused == 3


def test_sentinel_sink_signs_in_as_the_same_identity(
    endpoint: IdentityEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Sentinel sink's own credential follows the broker's rule: with only
    AZURE_CLIENT_ID set (as infra/bicep does) both sign in as the user-assigned
    identity, not a system-assigned one."""
    from audit.sinks.azure import production_credential

    monkeypatch.setenv("AZURE_CLIENT_ID", endpoint.client_id)
    scope = "https://monitor.azure.com/.default"
    for cred in (production_credential(None), azure_credential(BrokerSettings())):
        assert jwt_claims(cred.get_token(scope).token)["oid"] == endpoint.principal_id
    assert endpoint.refused == 0


def test_a_stalled_endpoint_fails_within_the_time_limit(endpoint: IdentityEndpoint) -> None:
    """A token request that gets no answer fails after the credential's time limit
    (retries included) instead of azure-core's 300 s default."""
    endpoint.delay_s = 3.0
    cred = azure_credential(endpoint.client_id, timeout_s=0.3)
    start = time.monotonic()
    with pytest.raises(AzureError):  # ServiceResponseTimeoutError
        cred.get_token(POSTGRES_SCOPE)
    took = time.monotonic() - start
    assert took < 15, took  # four tries of 0.3 s plus azure-core's back-off: about 6 s
