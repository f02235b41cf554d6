"""Helpers for API tests: an app over the test services, tokens for each person."""

from __future__ import annotations

from fastapi.testclient import TestClient

from broker.access.model import User
from broker.access.services import Services
from broker.api.app import create_app
from broker.settings import BrokerSettings


def client_for(services: Services, **settings: object) -> TestClient:
    app = create_app(BrokerSettings(**settings), services=services)  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


def session_token(services: Services, user: User, scopes: list[str] | None = None) -> str:
    """A fresh full bearer token for ``user`` (what password+TOTP sign-in returns)."""
    with services.ctx.uow() as tx:
        issued = services.auth.issue(tx, user, kind="session", scopes=scopes or ["*"], ttl_s=900)
    return issued.token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
