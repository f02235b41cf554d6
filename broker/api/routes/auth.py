"""Sign-in, TOTP enrolment, the caller's own account, SSH keys and API tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from broker.access.ports import Actor
from broker.api import schemas as s
from broker.api.deps import ServicesDep, bearer, client_ip, require

router = APIRouter(prefix="/v1", tags=["auth"])


def token_out(issued: object) -> s.TokenOut:
    from broker.access.auth import IssuedToken

    assert isinstance(issued, IssuedToken)
    return s.TokenOut(
        access_token=issued.token,
        token_id=issued.token_id,
        expires_at=issued.expires_at,
        scopes=list(issued.scopes),
        totp_enrolment_required=issued.totp_enrolment_required,
    )


@router.post("/auth/login", response_model=s.TokenOut)
def login(body: s.LoginIn, request: Request, services: ServicesDep) -> s.TokenOut:
    """Password + TOTP → bearer token.  Before TOTP enrolment the token only enrols."""
    return token_out(
        services.auth.login(body.username, body.password, body.totp_code, client_ip(request))
    )


@router.post("/auth/logout", status_code=204)
def logout(
    request: Request,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("auth.logout"))],
) -> None:
    services.auth.logout(actor, bearer(request))


@router.post("/auth/totp/enroll", response_model=s.TotpEnrollOut)
def totp_enroll(
    services: ServicesDep, actor: Annotated[Actor, Depends(require("totp.enroll"))]
) -> s.TotpEnrollOut:
    return s.TotpEnrollOut(otpauth_uri=services.auth.totp_begin(actor))


@router.post("/auth/totp/confirm", response_model=s.TokenOut)
def totp_confirm(
    body: s.TotpConfirmIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("totp.enroll"))],
) -> s.TokenOut:
    return token_out(services.auth.totp_confirm(actor, body.code))


@router.get("/me", response_model=s.MeOut)
def me(services: ServicesDep, actor: Annotated[Actor, Depends(require("me.show"))]) -> s.MeOut:
    user = services.people.show_user(actor, actor.user_id)
    return s.MeOut(
        id=user.id,
        name=user.name,
        full_name=user.full_name,
        org_id=user.org_id,
        org_kind=actor.org_kind,
        roles=user.roles,
        scopes=sorted(actor.scopes),
        expires_at=user.expires_at,
        totp_enrolled=user.totp_enrolled,
    )


@router.get("/me/instruments", response_model=s.MyInstrumentsOut)
def my_instruments(
    services: ServicesDep, actor: Annotated[Actor, Depends(require("me.instruments"))]
) -> s.MyInstrumentsOut:
    """Instruments the caller may work on (an engineer: those under a live grant)."""
    from broker.api.routes.estate import instrument_out

    visible = services.estate.list_instruments(actor)
    if "engineer" in actor.roles:
        live = {
            n for g in services.grants.list_grants(actor, live_only=True) for n in g.instruments
        }
        visible = [i for i in visible if i.name in live]
    return s.MyInstrumentsOut(instruments=[instrument_out(i) for i in visible])


@router.post("/me/password", status_code=204)
def change_password(
    body: s.PasswordIn,
    request: Request,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("me.password"))],
) -> None:
    """A new password ends every other token and SSH certificate of the caller; a
    wrong current password counts towards the lockout."""
    services.auth.change_password(actor, body.current, body.new, bearer(request))


@router.get("/me/keys", response_model=list[s.KeyOut])
def list_keys(
    services: ServicesDep, actor: Annotated[Actor, Depends(require("keys.list"))]
) -> list[s.KeyOut]:
    return [s.KeyOut.model_validate(k) for k in services.people.list_keys(actor)]


@router.post("/me/keys", response_model=s.KeyOut, status_code=201)
def add_key(
    body: s.KeyIn, services: ServicesDep, actor: Annotated[Actor, Depends(require("keys.add"))]
) -> s.KeyOut:
    return s.KeyOut.model_validate(services.people.add_key(actor, body.public_key))


@router.post("/me/keys/{key_id}/revoke", response_model=s.KeyOut)
def revoke_key(
    key_id: str, services: ServicesDep, actor: Annotated[Actor, Depends(require("keys.revoke"))]
) -> s.KeyOut:
    return s.KeyOut.model_validate(services.people.revoke_key(actor, key_id))


@router.get("/tokens", response_model=list[s.ApiTokenOut])
def list_tokens(
    services: ServicesDep, actor: Annotated[Actor, Depends(require("tokens.list"))]
) -> list[s.ApiTokenOut]:
    return [s.ApiTokenOut.model_validate(t) for t in services.auth.list_tokens(actor)]


@router.post("/tokens", response_model=s.TokenOut, status_code=201)
def create_token(
    body: s.ApiTokenIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("tokens.create"))],
) -> s.TokenOut:
    """An API token for automation: shown once, stored hashed, scoped, revocable."""
    return token_out(
        services.auth.create_api_token(actor, body.name, list(body.scopes), body.ttl_s)
    )


@router.post("/tokens/{token_id}/revoke", response_model=s.ApiTokenOut)
def revoke_token(
    token_id: str, services: ServicesDep, actor: Annotated[Actor, Depends(require("tokens.revoke"))]
) -> s.ApiTokenOut:
    return s.ApiTokenOut.model_validate(services.auth.revoke_token(actor, token_id))
