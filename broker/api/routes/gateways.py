"""Gateway enrolment tokens, enrolment (contracts.md) and gateway listing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from broker.access.ports import Actor
from broker.api import schemas as s
from broker.api.deps import ServicesDep, client_ip, require

router = APIRouter(prefix="/v1/gateways", tags=["gateways"])


@router.get("", response_model=list[s.GatewayOut])
def list_gateways(
    services: ServicesDep, actor: Annotated[Actor, Depends(require("gateways.list"))]
) -> list[s.GatewayOut]:
    return [s.GatewayOut.model_validate(g) for g in services.gateways.list_gateways(actor)]


@router.post("/tokens", response_model=s.GatewayTokenOut, status_code=201)
def issue_token(
    body: s.GatewayTokenIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("gateways.token"))],
) -> s.GatewayTokenOut:
    """A one-time enrolment token ``hoshu-enroll-v1.<id>.<secret>.<pin>``."""
    t = services.gateways.issue_token(actor, body.hospital or actor.org_id, body.ttl_s)
    return s.GatewayTokenOut(
        token=t.token, token_id=t.token_id, hospital=t.hospital, expires_at=t.expires_at
    )


@router.post("/enroll", response_model=s.EnrollOut, status_code=201)
def enroll(body: s.EnrollIn, request: Request, services: ServicesDep) -> s.EnrollOut:
    """Gateway enrolment: 401 for forged/unknown tokens, 410 for used or expired ones."""
    return s.EnrollOut.model_validate(
        services.gateways.enroll(
            body.token, body.public_key, body.name, body.version, client_ip(request)
        )
    )


@router.post("/{gateway}/revoke", response_model=s.GatewayOut)
def revoke_gateway(
    gateway: str,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("gateways.revoke"))],
) -> s.GatewayOut:
    return s.GatewayOut.model_validate(services.gateways.revoke(actor, gateway))
