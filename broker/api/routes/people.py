"""Organisations and user accounts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from broker.access.people import NewUser
from broker.access.ports import Actor
from broker.api import schemas as s
from broker.api.deps import ServicesDep, require

router = APIRouter(prefix="/v1", tags=["people"])


@router.get("/orgs", response_model=list[s.OrgOut])
def list_orgs(
    services: ServicesDep, actor: Annotated[Actor, Depends(require("orgs.list"))]
) -> list[s.OrgOut]:
    return [s.OrgOut.model_validate(o) for o in services.people.list_orgs(actor)]


@router.post("/orgs", response_model=s.OrgOut, status_code=201)
def create_org(
    body: s.OrgIn, services: ServicesDep, actor: Annotated[Actor, Depends(require("orgs.create"))]
) -> s.OrgOut:
    return s.OrgOut.model_validate(
        services.people.create_org(actor, body.name, body.kind, body.source_cidrs)
    )


@router.patch("/orgs/{org}", response_model=s.OrgOut)
def update_org(
    org: str,
    body: s.OrgPatch,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("orgs.update"))],
) -> s.OrgOut:
    """Set the networks the organisation's people may sign in from (empty: anywhere)."""
    return s.OrgOut.model_validate(services.people.set_sources(actor, org, body.source_cidrs))


@router.get("/users", response_model=list[s.UserOut])
def list_users(
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("users.list"))],
    org: str | None = None,
) -> list[s.UserOut]:
    return [s.UserOut.model_validate(u) for u in services.people.list_users(actor, org)]


@router.post("/users", response_model=s.UserOut, status_code=201)
def create_user(
    body: s.UserIn, services: ServicesDep, actor: Annotated[Actor, Depends(require("users.create"))]
) -> s.UserOut:
    new = NewUser(
        body.name,
        body.full_name,
        body.org,
        list(body.roles),
        body.password,
        body.expires_at,
        body.email,
    )
    return s.UserOut.model_validate(services.people.create_user(actor, new))


@router.get("/users/{user}", response_model=s.UserOut)
def show_user(
    user: str, services: ServicesDep, actor: Annotated[Actor, Depends(require("users.show"))]
) -> s.UserOut:
    return s.UserOut.model_validate(services.people.show_user(actor, user))


@router.post("/users/{user}/expire", response_model=s.UserOut)
def expire_user(
    user: str,
    body: s.ExpireIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("users.expire"))],
) -> s.UserOut:
    return s.UserOut.model_validate(services.people.set_expiry(actor, user, body.expires_at))


@router.post("/users/{user}/deactivate", response_model=s.UserOut)
def deactivate_user(
    user: str, services: ServicesDep, actor: Annotated[Actor, Depends(require("users.deactivate"))]
) -> s.UserOut:
    return s.UserOut.model_validate(services.people.deactivate(actor, user))


@router.post("/users/{user}/recertify", response_model=s.UserOut)
def recertify_user(
    user: str,
    body: s.CommentIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("users.recertify"))],
) -> s.UserOut:
    return s.UserOut.model_validate(services.people.recertify(actor, user, body.comment))


@router.post("/users/{user}/reset-totp", response_model=s.UserOut)
def reset_totp(
    user: str, services: ServicesDep, actor: Annotated[Actor, Depends(require("users.reset_totp"))]
) -> s.UserOut:
    """Lost authenticator: the person enrols TOTP again at their next sign-in."""
    return s.UserOut.model_validate(services.people.reset_totp(actor, user))


@router.post("/users/{user}/password", response_model=s.UserOut)
def set_password(
    user: str,
    body: s.NewPasswordIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("users.set_password"))],
) -> s.UserOut:
    return s.UserOut.model_validate(services.people.set_password(actor, user, body.password))


class TokensRevokedOut(s.Out):
    user: str
    tokens: int
    cert_serials: list[str]


@router.post("/users/{user}/revoke-tokens", response_model=TokensRevokedOut)
def revoke_user_tokens(
    user: str,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("users.revoke_tokens"))],
) -> TokensRevokedOut:
    """End every bearer token, API token and SSH certificate of the person (lost
    laptop, leaver, suspected compromise); the account itself stays usable."""
    done = services.people.revoke_tokens(actor, user)
    return TokensRevokedOut(
        user=user, tokens=done.tokens, cert_serials=[str(n) for n in done.cert_serials]
    )


@router.post("/users/{user}/keys", response_model=s.KeyOut, status_code=201)
def add_user_key(
    user: str,
    body: s.KeyIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("users.add_key"))],
) -> s.KeyOut:
    return s.KeyOut.model_validate(services.people.add_key(actor, body.public_key, user))


@router.get("/vendor-accounts", response_model=list[s.UserOut])
def vendor_accounts(
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("vendor_accounts.list"))],
    hospital: str | None = None,
) -> list[s.UserOut]:
    """Every vendor engineer account that can reach the hospital (for recertification)."""
    return [s.UserOut.model_validate(u) for u in services.people.vendor_accounts(actor, hospital)]
