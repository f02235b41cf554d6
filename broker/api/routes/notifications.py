"""Each organisation's notification channels, recipients and kinds (:mod:`broker.console.notify`).

``GET /v1/notifications/{hospital}`` shows them, ``PUT`` sets them (the path names
the organisation: a hospital, or a vendor for its engineers' messages): mail to the people
whose role it is (on or off), further mail addresses, a Microsoft Teams incoming
webhook URL, a generic JSON webhook URL (https://; http:// only where the broker's
``notify_allow_http`` allows it, for tests and labs) with its own
HMAC key, and what the hospital's approvers are told of (``kinds``: request.created,
emergency.started, session.started, report.due).  The permission table's
``notifications.show`` / ``notifications.update`` (hospital and platform admins); a
hospital admin only their own organisation's.  The rules, the sealing of the key (sent
once, never shown: ``webhook_secret_set`` says whether one is stored; the Teams URL
likewise, shown only as ``teams_url_shown``, its host and last four characters) and the
``admin.change`` event are :mod:`broker.console.notify_settings`', shared with the
console's page.
"""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from broker.access.errors import Unavailable
from broker.access.ports import Actor
from broker.api.deps import ServicesDep, require
from broker.console import notify_settings
from broker.console.notify import CHOOSABLE, DEFAULT_KINDS, Channels

router = APIRouter(prefix="/v1", tags=["notifications"])


class ChannelsIn(BaseModel):
    email: bool = True
    emails: list[str] = Field(default_factory=list, max_length=50)
    teams_url: str = Field(default="", max_length=2000)
    webhook_url: str = Field(default="", max_length=2000)
    kinds: list[str] = Field(default_factory=lambda: list(DEFAULT_KINDS), max_length=10)
    # the webhook's HMAC key, write-only: empty keeps the stored one
    webhook_secret: str = Field(default="", max_length=notify_settings.SECRET_MAX)
    clear_webhook_secret: bool = False
    # the Teams URL is a bearer credential, write-only too: empty keeps the stored one
    clear_teams_url: bool = False


class ChannelsOut(BaseModel):
    org: str
    set: bool
    email: bool
    emails: list[str]
    teams_url_set: bool
    teams_url_shown: str  # its host and last four characters, never the URL
    webhook_url: str
    kinds: list[str]
    choosable: list[str]
    webhook_secret_set: bool


def _engine(request: Request) -> sa.Engine:
    engine: sa.Engine | None = getattr(request.app.state, "notification_store", None)
    if engine is None:
        raise Unavailable("notifications are not set up on this broker")
    return engine


def _out(shown: notify_settings.Shown) -> ChannelsOut:
    c = shown.channels
    return ChannelsOut(
        org=shown.org.name,
        set=shown.set,
        email=c.email,
        emails=list(c.emails),
        teams_url_set=bool(c.teams_url),
        teams_url_shown=shown.teams_hint,
        webhook_url=c.webhook_url,
        kinds=list(c.kinds),
        choosable=list(CHOOSABLE),
        webhook_secret_set=shown.secret_set,
    )


@router.get("/notifications/{hospital}", response_model=ChannelsOut)
def show_notifications(
    hospital: str,
    request: Request,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("notifications.show"))],
) -> ChannelsOut:
    return _out(notify_settings.show(services, _engine(request), actor, hospital))


@router.put("/notifications/{hospital}", response_model=ChannelsOut)
def set_notifications(
    hospital: str,
    body: ChannelsIn,
    request: Request,
    services: ServicesDep,
    actor: Annotated[Actor, Depends(require("notifications.update"))],
) -> ChannelsOut:
    wanted = Channels(
        body.email, tuple(body.emails), body.teams_url, body.webhook_url, tuple(body.kinds)
    )
    shown = notify_settings.change(
        services,
        _engine(request),
        actor,
        hospital,
        wanted,
        secret=body.webhook_secret,
        clear_secret=body.clear_webhook_secret,
        clear_teams=body.clear_teams_url,
        allow_http=request.app.state.settings.notify_allow_http,
    )
    return _out(shown)
