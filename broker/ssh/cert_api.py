"""``POST /v1/ssh/certificate``: a short-lived SSH user certificate after MFA.

The caller must hold a full *session* token, which the control plane issues
only after password + TOTP (``hoshu login``); enrolment-only and automation
tokens are refused.  The key must be one the caller registered, and the
caller must hold an active grant: the certificate then lasts until the end of
their grants, at most 8 hours (:class:`~broker.ssh.ca.UserCA`).  The front door
accepts it as both factors.  Every issue is an ``ssh.cert_issued`` event.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from audit.emitter import Emitter
from broker.ssh.ca import CertificateRefused, UserCA
from broker.ssh.ports import AccessPolicy


class CertCaller(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def roles(self) -> frozenset[str]: ...
    @property
    def scopes(self) -> frozenset[str]: ...
    @property
    def token_kind(self) -> str: ...


class CertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(min_length=20, max_length=16_384)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _default_authenticate(request: Request) -> CertCaller:
    from broker.api.deps import bearer, client_ip

    services = request.app.state.services
    caller: CertCaller = services.auth.authenticate(bearer(request), client_ip(request))
    return caller


def build_cert_router(
    get_ca: Callable[[], UserCA | None],
    policy: AccessPolicy,
    grants_end: Callable[[str, datetime], datetime | None],
    emitter: Emitter,
    clock: Callable[[], datetime],
    *,
    authenticate: Callable[[Request], CertCaller] = _default_authenticate,
    serials: Callable[[], int] = lambda: secrets.randbits(63),
) -> APIRouter:
    router = APIRouter(tags=["ssh"])

    @router.post("/v1/ssh/certificate", status_code=201)
    def issue(body: CertRequest, request: Request) -> Any:
        caller = authenticate(request)
        if "engineer" not in caller.roles:
            return _error(403, "permission_denied", "only engineers get SSH certificates")
        if caller.token_kind != "session" or "*" not in caller.scopes:  # noqa: S105
            return _error(403, "mfa_required",
                          "sign in with password and TOTP (hoshu login) to get a certificate")
        ca = get_ca()
        if ca is None:
            return _error(503, "unavailable", "the SSH front door is not running")
        if policy.engineer_for_key(caller.username, body.public_key) is None:
            return _error(403, "unknown_key", "that is not one of your registered SSH keys")
        now = clock()
        end = grants_end(caller.user_id, now)
        if end is None:
            return _error(403, "no_grant", "you hold no active grant: no certificate issued")
        try:
            cert = ca.issue(body.public_key, username=caller.username, user_id=caller.user_id,
                            now=now, grants_end=end, serial=serials(), emitter=emitter)
        except CertificateRefused as exc:
            return _error(403, "no_grant", str(exc))
        return {"certificate": cert}

    return router
