"""The control plane's services, built from one :class:`Context`."""

from __future__ import annotations

from dataclasses import dataclass

from broker.access.auth import AuthService
from broker.access.estate import EstateService
from broker.access.gateways import GatewayService
from broker.access.grants import GrantService
from broker.access.people import PeopleService
from broker.access.ports import Context
from broker.access.requests import RequestService


@dataclass(frozen=True)
class Services:
    ctx: Context
    auth: AuthService
    people: PeopleService
    estate: EstateService
    gateways: GatewayService
    requests: RequestService
    grants: GrantService

    @classmethod
    def build(cls, ctx: Context) -> Services:
        estate = EstateService(ctx)
        requests = RequestService(ctx, estate)
        return cls(
            ctx,
            AuthService(ctx),
            PeopleService(ctx),
            estate,
            GatewayService(ctx, estate),
            requests,
            GrantService(ctx, requests),
        )
