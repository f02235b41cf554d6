"""``POST /v1/ssh/certificate``: a short-lived SSH user certificate after MFA.

The permission table's ``ssh.certificate`` action allows engineers holding a
full *session* token, which the control plane issues only after password +
TOTP (``hoshu login``); enrolment-only and automation tokens are refused
(:data:`broker.access.permissions.MFA`).  The key must be one the caller
registered, and the caller must hold an active grant: the certificate then
lasts until the end of their grants, at most 8 hours
(the front door's user CA, through
:class:`broker.api.services.CertificateIssuer`).  The front door accepts it as
both factors.

Every issue is an ``ssh.cert_issued`` event; every refusal a 403 and an
``ssh.cert_refused`` event naming the caller and the reason (written by
:mod:`broker.api.errors`), and no certificate.
"""

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from audit.emitter import Emitter
from broker.access.certs import MAX_CERT_LIFETIME
from broker.access.errors import PermissionDenied, Unavailable
from broker.access.permissions import Principal
from broker.api.deps import Authenticate, require
from broker.api.services import CertificateIssuer, CertificatePolicy


class CertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(min_length=20, max_length=16_384)


def build_cert_router(
    get_ca: Callable[[], CertificateIssuer | None],
    policy: CertificatePolicy,
    grants_end: Callable[[str, datetime], datetime | None],
    emitter: Emitter,
    clock: Callable[[], datetime],
    *,
    authenticate: Authenticate | None = None,
    serials: Callable[[], int] = lambda: secrets.randbits(63),
) -> APIRouter:
    router = APIRouter(tags=["ssh"])
    Engineer = Annotated[
        Principal, Depends(require("ssh.certificate", authenticate=authenticate, emitter=emitter))
    ]

    @router.post("/v1/ssh/certificate", status_code=201)
    def issue(body: CertRequest, caller: Engineer) -> Any:
        ca = get_ca()
        if ca is None:
            raise Unavailable("the SSH front door is not running")
        if policy.engineer_for_key(caller.username, body.public_key) is None:
            raise PermissionDenied(
                "that is not one of your registered SSH keys", code="unknown_key"
            )
        now = clock()
        end = grants_end(caller.user_id, now)
        if end is None:
            raise PermissionDenied(
                "you hold no active grant: no certificate issued", code="no_grant"
            )
        serial = serials()
        # recorded first: only recorded serials sign in, and logout revokes them
        policy.record_cert(caller.user_id, serial, now, min(now + MAX_CERT_LIFETIME, end))
        # a refusal is a PermissionDenied (code no_grant): a 403 and an event
        cert = ca.issue(
            body.public_key,
            username=caller.username,
            user_id=caller.user_id,
            now=now,
            grants_end=end,
            serial=serial,
            emitter=emitter,
        )
        return {"certificate": cert}

    return router
