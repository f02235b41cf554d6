"""The console's notifications page: who of a hospital or a vendor is told of what, and how.

``GET /console/admin/notifications`` shows the caller's organisation's settings (a
platform admin picks one of the hospitals and vendors: ``?org=``);
``POST /console/admin/notifications/{org}`` sets them.  The permission table's
``notifications.show`` / ``notifications.update``, the same rules, sealing and
``admin.change`` event as ``/v1/notifications`` (:mod:`broker.console.notify_settings`):
a hospital admin only their own hospital's, a vendor admin only their own vendor's; an
approver, an engineer or an auditor is refused (``admin.refused``), and so is anyone
naming another organisation.  A hospital chooses what its approvers are told of; a
vendor who of its people hear of decisions and of grants about to end (the engineer
concerned, further addresses such as its support desk, Teams, a signed webhook).  CSRF,
Origin and the TOTP step-up are :func:`broker.console.web.page`'s.  The webhook key and
the Teams URL are password fields that are never filled in: the page says only whether
one is stored (the URL: its host and last four characters); when a step-up is due the
form asks for the TOTP code itself, and a wrong code's step-up page carries them sealed,
never written into the page (:mod:`broker.console.stepup`).
"""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from broker.access import stepup
from broker.access.errors import Unavailable
from broker.access.model import OrgKind
from broker.console import notify_settings
from broker.console.engineer import bounded
from broker.console.notify import CHOOSABLE, DEFAULT_KINDS, Channels
from broker.console.routes import zone_of
from broker.console.stepup import FIELD
from broker.console.web import PREFIX, Session, page, redirect, render, services_of

router = APIRouter(prefix=PREFIX + "/admin", tags=["console"])

ShowPage = Annotated[Session, Depends(page("notifications.show"))]
SetPage = Annotated[Session, Depends(page("notifications.update"))]
LIMITS = {
    "emails": 50 * 256,
    "teams_url": 2000,
    "webhook_url": 2000,
    "webhook_secret": notify_settings.SECRET_MAX,
    "org": 63,
}
NOTICES = frozenset({"notifications_saved"})
# what a vendor's people are told of (broker.console.notify: always, to the engineer concerned)
VENDOR_TOLD = ("grant.created", "request.denied", "grant.ending")


def _engine(request: Request) -> sa.Engine:
    engine: sa.Engine | None = getattr(request.app.state, "notification_store", None)
    if engine is None:
        raise Unavailable("notifications are not set up on this broker")
    return engine


@router.get("/notifications")
def notifications(request: Request, session: ShowPage) -> Response:
    """The organisation's notification settings (``GET /v1/notifications/{org}``)."""
    services = services_of(request)
    kinds = {
        o.name: o.kind
        for o in services.people.list_orgs(session.actor)
        if o.kind in (OrgKind.HOSPITAL, OrgKind.VENDOR)
        and (session.actor.org_kind == OrgKind.PLATFORM or o.id == session.actor.org_id)
    }
    orgs = sorted(kinds, key=lambda n: (kinds[n] != OrgKind.HOSPITAL, n))
    wanted = request.query_params.get("org", "")[:63]
    org = wanted if wanted in orgs else (orgs[0] if orgs else "")
    shown = notify_settings.show(services, _engine(request), session.actor, org) if org else None
    done = request.query_params.get("done")
    values: dict[str, Any] = {
        "orgs": orgs,
        "org": org,
        "shown": shown,
        "choosable": CHOOSABLE,
        "vendor": kinds.get(org) == OrgKind.VENDOR,
        "vendor_told": VENDOR_TOLD,
        "tz": str(zone_of(services, session).key),
        # the step-up code asked on this form, so the key is not sent twice (a separate
        # step-up page would carry the form's fields, the key among them, once more)
        "code_field": FIELD if not stepup.is_fresh(services.ctx, session.token) else "",
    }
    return render(request, "notify.html", notice=done if done in NOTICES else None, **values)


@router.post("/notifications/{hospital}")
def set_notifications(hospital: str, request: Request, session: SetPage) -> Response:
    """Set the hospital's notification settings (``PUT /v1/notifications/{hospital}``)."""
    form = bounded(request, session, "notifications.update", LIMITS)
    services = services_of(request)
    org = notify_settings.org_for(services, session.actor, hospital[:63])
    emails = tuple(a for a in form.get("emails", "").replace(",", "\n").split() if a)
    wanted = Channels(
        email=form.get("email") == "on",
        emails=emails,
        teams_url=form.get("teams_url", "").strip(),
        webhook_url=form.get("webhook_url", "").strip(),
        # a vendor's people are told of what concerns them; a hospital chooses
        kinds=DEFAULT_KINDS
        if org.kind == OrgKind.VENDOR
        else tuple(k for k in CHOOSABLE if form.get(f"kind.{k}") == "on"),
    )
    shown = notify_settings.change(
        services,
        _engine(request),
        session.actor,
        org.id,
        wanted,
        secret=form.get("webhook_secret", ""),
        clear_secret=form.get("clear_webhook_secret") == "on",
        clear_teams=form.get("clear_teams_url") == "on",
        allow_http=request.app.state.settings.notify_allow_http,
    )
    return redirect(f"{PREFIX}/admin/notifications?org={shown.org.name}&done=notifications_saved")
