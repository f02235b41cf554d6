"""Access requests, decisions, grants and the emergency path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from broker.access.model import AccessRequest, Grant
from broker.access.ports import Actor
from broker.access.requests import NewRequest, RequestView
from broker.access.services import Services
from broker.api import schemas as s
from broker.api.deps import ServicesDep, require

router = APIRouter(prefix="/v1", tags=["requests"])


def request_out(r: AccessRequest, names: dict[str, str]) -> s.RequestOut:
    return s.RequestOut.model_validate(r).model_copy(
        update={"requester": names.get(r.requester_id, "")}
    )


def grant_out(g: Grant, names: dict[str, str]) -> s.GrantOut:
    return s.GrantOut.model_validate(g).model_copy(update={"user": names.get(g.user_id, "")})


def detail(services: Services, v: RequestView) -> s.RequestDetail:
    names = services.people.names(
        {v.request.requester_id}
        | {d.approver_id for d in v.decisions}
        | {t.actor_id for t in v.history if t.actor_id}
    )
    return s.RequestDetail(
        request=request_out(v.request, names),
        decisions=[
            s.DecisionOut.model_validate(d).model_copy(
                update={"approver": names.get(d.approver_id, "")}
            )
            for d in v.decisions
        ],
        history=[
            s.TransitionOut.model_validate(t).model_copy(
                update={"actor": names.get(t.actor_id or "", "")}
            )
            for t in v.history
        ],
        grant=grant_out(v.grant, names) if v.grant else None,
    )


def new_request(body: s.RequestIn) -> NewRequest:
    return NewRequest(
        list(body.instruments),
        body.duration_s,
        body.reason,
        list(body.ports),
        body.file_transfer,
        body.ticket,
        body.work_plan,
        body.start_at,
    )


@router.post("/requests", response_model=s.RequestOut, status_code=201)
def create_request(
    body: s.RequestIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("requests.create"))],
) -> s.RequestOut:
    r = services.requests.create(actor, new_request(body))
    return request_out(r, {actor.user_id: actor.username})


@router.get("/requests", response_model=list[s.RequestOut])
def list_requests(
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("requests.list"))],
    status: str | None = None,
) -> list[s.RequestOut]:
    services.grants.sweep()
    found = services.requests.list_requests(actor, status)
    names = services.people.names({r.requester_id for r in found})
    return [request_out(r, names) for r in found]


@router.get("/requests/{request_id}", response_model=s.RequestDetail)
def show_request(
    request_id: str,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("requests.show"))],
) -> s.RequestDetail:
    """The request with every decision and state change, kept after it ends."""
    services.grants.sweep()
    return detail(services, services.requests.show(actor, request_id))


@router.post("/requests/{request_id}/approve", response_model=s.RequestDetail)
def approve(
    request_id: str,
    body: s.CommentIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("requests.approve"))],
) -> s.RequestDetail:
    return detail(services, services.requests.approve(actor, request_id, body.comment))


@router.post("/requests/{request_id}/deny", response_model=s.RequestDetail)
def deny(
    request_id: str,
    body: s.CommentIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("requests.deny"))],
) -> s.RequestDetail:
    return detail(services, services.requests.deny(actor, request_id, body.comment))


@router.post("/requests/{request_id}/cancel", response_model=s.RequestDetail)
def cancel(
    request_id: str,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("requests.cancel"))],
) -> s.RequestDetail:
    return detail(services, services.requests.cancel(actor, request_id))


@router.get("/grants", response_model=list[s.GrantOut])
def list_grants(
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("grants.list"))],
    live: bool = False,
    unreviewed: bool = False,
) -> list[s.GrantOut]:
    services.grants.sweep()
    found = services.grants.list_grants(actor, live_only=live, unreviewed_emergencies=unreviewed)
    names = services.people.names({g.user_id for g in found})
    return [grant_out(g, names) for g in found]


@router.post("/grants/{grant_id}/revoke", response_model=s.GrantOut)
def revoke(
    grant_id: str,
    body: s.CommentIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("grants.revoke"))],
) -> s.GrantOut:
    return s.GrantOut.model_validate(services.grants.revoke(actor, grant_id, body.comment))


@router.post("/grants/{grant_id}/end", response_model=s.GrantOut)
def end(
    grant_id: str, services: ServicesDep, actor: Annotated[Actor, Depends(require("grants.end"))]
) -> s.GrantOut:
    return s.GrantOut.model_validate(services.grants.end(actor, grant_id))


@router.post("/emergency", response_model=s.GrantOut, status_code=201)
def emergency(
    body: s.RequestIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("emergency.start"))],
) -> s.GrantOut:
    """Start emergency access now (where the hospital allows it); alerted and reviewed."""
    return s.GrantOut.model_validate(services.grants.start_emergency(actor, new_request(body)))


@router.post("/grants/{grant_id}/review", response_model=s.GrantOut)
def review(
    grant_id: str,
    body: s.ReviewIn,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("emergency.review"))],
) -> s.GrantOut:
    return s.GrantOut.model_validate(
        services.grants.review(actor, grant_id, body.verdict, body.comment)
    )
