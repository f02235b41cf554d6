"""Access requests, decisions, grants and the emergency path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from broker.access.ports import Actor
from broker.access.requests import NewRequest, RequestView
from broker.api import schemas as s
from broker.api.deps import ServicesDep, require

router = APIRouter(prefix="/v1", tags=["requests"])


def detail(v: RequestView) -> s.RequestDetail:
    return s.RequestDetail(
        request=s.RequestOut.model_validate(v.request),
        decisions=[s.DecisionOut.model_validate(d) for d in v.decisions],
        history=[s.TransitionOut.model_validate(t) for t in v.history],
        grant=s.GrantOut.model_validate(v.grant) if v.grant else None)


def new_request(body: s.RequestIn) -> NewRequest:
    return NewRequest(list(body.instruments), body.duration_s, body.reason, list(body.ports),
                      body.file_transfer, body.ticket, body.work_plan, body.start_at)


@router.post("/requests", response_model=s.RequestOut, status_code=201)
def create_request(body: s.RequestIn, services: ServicesDep,
                   actor: Annotated[Actor, Depends(require("requests.create"))]
                   ) -> s.RequestOut:
    return s.RequestOut.model_validate(services.requests.create(actor, new_request(body)))


@router.get("/requests", response_model=list[s.RequestOut])
def list_requests(services: ServicesDep,
                  actor: Annotated[Actor, Depends(require("requests.list"))],
                  status: str | None = None) -> list[s.RequestOut]:
    services.grants.sweep()
    return [s.RequestOut.model_validate(r)
            for r in services.requests.list_requests(actor, status)]


@router.get("/requests/{request_id}", response_model=s.RequestDetail)
def show_request(request_id: str, services: ServicesDep,
                 actor: Annotated[Actor, Depends(require("requests.show"))]
                 ) -> s.RequestDetail:
    """The request with every decision and state change, kept after it ends."""
    services.grants.sweep()
    return detail(services.requests.show(actor, request_id))


@router.post("/requests/{request_id}/approve", response_model=s.RequestDetail)
def approve(request_id: str, body: s.CommentIn, services: ServicesDep,
            actor: Annotated[Actor, Depends(require("requests.approve"))]
            ) -> s.RequestDetail:
    return detail(services.requests.approve(actor, request_id, body.comment))


@router.post("/requests/{request_id}/deny", response_model=s.RequestDetail)
def deny(request_id: str, body: s.CommentIn, services: ServicesDep,
         actor: Annotated[Actor, Depends(require("requests.deny"))]) -> s.RequestDetail:
    return detail(services.requests.deny(actor, request_id, body.comment))


@router.post("/requests/{request_id}/cancel", response_model=s.RequestDetail)
def cancel(request_id: str, services: ServicesDep,
           actor: Annotated[Actor, Depends(require("requests.cancel"))]) -> s.RequestDetail:
    return detail(services.requests.cancel(actor, request_id))


@router.get("/grants", response_model=list[s.GrantOut])
def list_grants(services: ServicesDep,
                actor: Annotated[Actor, Depends(require("grants.list"))],
                live: bool = False, unreviewed: bool = False) -> list[s.GrantOut]:
    services.grants.sweep()
    return [s.GrantOut.model_validate(g) for g in services.grants.list_grants(
        actor, live_only=live, unreviewed_emergencies=unreviewed)]


@router.post("/grants/{grant_id}/revoke", response_model=s.GrantOut)
def revoke(grant_id: str, body: s.CommentIn, services: ServicesDep,
           actor: Annotated[Actor, Depends(require("grants.revoke"))]) -> s.GrantOut:
    return s.GrantOut.model_validate(services.grants.revoke(actor, grant_id, body.comment))


@router.post("/grants/{grant_id}/end", response_model=s.GrantOut)
def end(grant_id: str, services: ServicesDep,
        actor: Annotated[Actor, Depends(require("grants.end"))]) -> s.GrantOut:
    return s.GrantOut.model_validate(services.grants.end(actor, grant_id))


@router.post("/emergency", response_model=s.GrantOut, status_code=201)
def emergency(body: s.RequestIn, services: ServicesDep,
              actor: Annotated[Actor, Depends(require("emergency.start"))]) -> s.GrantOut:
    """Start emergency access now (where the hospital allows it); alerted and reviewed."""
    return s.GrantOut.model_validate(services.grants.start_emergency(actor,
                                                                     new_request(body)))


@router.post("/grants/{grant_id}/review", response_model=s.GrantOut)
def review(grant_id: str, body: s.ReviewIn, services: ServicesDep,
           actor: Annotated[Actor, Depends(require("emergency.review"))]) -> s.GrantOut:
    return s.GrantOut.model_validate(services.grants.review(actor, grant_id, body.verdict,
                                                            body.comment))
