"""The administrators' pages: organisations, people, contracts, policies, gateways,
instruments.

Every page asks the permission table for ``console.admin`` (hospital admins and
platform admins); every form asks the API's own action and calls the same service
method as the API route, so who may change what (a hospital admin: only their own
hospital's people, contracts, policy, gateways and instruments; only a platform
admin creates organisations or vendor engineers) is the services' rule, and each
change is the same ``admin.change`` (or ``gateway.token_issued``) event:

=====================================  =======================  =========================
console form                           action                   API route
=====================================  =======================  =========================
``POST /console/admin/orgs``           ``orgs.create``          ``POST /v1/orgs``
``POST /console/admin/orgs/{o}/sources`` ``orgs.update``        ``PATCH /v1/orgs/{o}``
``POST /console/admin/people``         ``users.create``         ``POST /v1/users``
``POST …/people/{u}/expire``           ``users.expire``         ``POST /v1/users/{u}/expire``
``POST …/people/{u}/recertify``        ``users.recertify``      ``…/recertify``
``POST …/people/{u}/reset-totp``       ``users.reset_totp``     ``…/reset-totp``
``POST …/people/{u}/deactivate``       ``users.deactivate``     ``…/deactivate``
``POST /console/admin/contracts``      ``contracts.create``     ``POST /v1/contracts``
``POST …/contracts/{id}/end``          ``contracts.end``        ``…/end``
``POST …/policies/{hospital}``         ``policies.update``      ``PATCH /v1/policies/{h}``
``POST /console/admin/gateways/token`` ``gateways.token``       ``POST /v1/gateways/tokens``
``POST …/gateways/{g}/revoke``         ``gateways.revoke``      ``…/revoke``
``POST /console/admin/instruments``    ``instruments.create``   ``POST /v1/instruments``
=====================================  =======================  =========================

An enrolment token is shown once, on the page that answers the form (``no-store``);
it is never shown again.  Fields are bounded as the API's schemas bound them
(:data:`LIMITS`); past a bound: the ``admin.refused`` event and nothing changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from broker.access.errors import InvalidInput
from broker.access.estate import CRITICALITIES, KEYBOARD_LAYOUTS, PROTOCOLS
from broker.access.model import OrgKind, Role
from broker.access.people import NewUser
from broker.console import i18n
from broker.console.engineer import bounded
from broker.console.routes import zone_of
from broker.console.web import PREFIX, Session, page, redirect, render, services_of

router = APIRouter(prefix=PREFIX + "/admin", tags=["console"])

AdminPage = Annotated[Session, Depends(page("console.admin"))]
# the bounds of the API's schemas (OrgIn, UserIn, ContractIn, PolicyPatch, InstrumentIn, ...)
LIMITS: Mapping[str, int] = {
    "name": 63,
    "kind": 16,
    "org": 63,
    "full_name": 200,
    "email": 254,
    "password": 1024,
    "expires": 32,
    "source_cidrs": 64 * 65,
    "comment": 2000,
    "vendor": 100,
    "hospital": 63,
    "instruments": 4000,
    "valid_until": 32,
    "reference": 200,
    "host": 253,
    "gateway": 63,
    "ports": 64 * 6,
    "ssh_port": 5,
    "protocol": 16,
    "keyboard_layout": 16,
    "department": 100,
    "model": 100,
    "criticality": 16,
    "login_username": 64,
    "hours_start": 5,
    "hours_end": 5,
    "timezone": 64,
    "ttl_min": 8,
}
ROLES = tuple(r.value for r in Role)
NOTICES = frozenset(
    {
        "org_created",
        "sources_set",
        "user_created",
        "expiry_set",
        "recertified",
        "totp_reset",
        "deactivated",
        "contract_created",
        "contract_ended",
        "policy_saved",
        "gateway_revoked",
        "instrument_created",
    }
)
_SPLIT = re.compile(r"[\s,、]+")


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done")
    return done if done in NOTICES else None


def _list(text: str) -> list[str]:
    return [n for n in _SPLIT.split(text.strip()) if n]


def _int(text: str, what: str) -> int:
    if not text.strip().isdigit() or len(text.strip()) > 9:
        raise InvalidInput(f"{what} must be a whole number")
    return int(text.strip())


def _when(text: str, tz: ZoneInfo) -> datetime | None:
    """A ``datetime-local`` field read in the organisation's time zone; empty: none."""
    if not text.strip():
        return None
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InvalidInput("not a date and time") from exc
    return at if at.tzinfo else at.replace(tzinfo=tz)


def _form(request: Request, session: Session, action: str) -> Mapping[str, str]:
    return bounded(request, session, action, LIMITS)


def _section(request: Request, template: str, session: Session, **values: Any) -> Response:
    """An admin page: the sub-navigation knows which section is open."""
    tz = zone_of(services_of(request), session)
    return render(request, template, notice=_notice(request), tz=str(tz.key), **values)


# --- organisations ---------------------------------------------------------------------


@router.get("/orgs")
def orgs(request: Request, session: AdminPage) -> Response:
    """The organisations the caller may see (``GET /v1/orgs``)."""
    tz = zone_of(services_of(request), session)
    rows = [
        {"o": o, "created": i18n.local_time(o.created_at, tz)}
        for o in services_of(request).people.list_orgs(session.actor)
    ]
    return _section(request, "admin_orgs.html", session, rows=rows)


@router.post("/orgs")
def create_org(
    request: Request, session: Annotated[Session, Depends(page("orgs.create"))]
) -> Response:
    form = _form(request, session, "orgs.create")
    kind = form.get("kind", "")
    if kind not in (OrgKind.HOSPITAL, OrgKind.VENDOR):
        raise InvalidInput("an organisation is a hospital or a vendor")
    services_of(request).people.create_org(
        session.actor, form.get("name", "").strip(), kind, _list(form.get("source_cidrs", ""))
    )
    return redirect(f"{PREFIX}/admin/orgs?done=org_created")


@router.post("/orgs/{org}/sources")
def set_sources(
    org: str, request: Request, session: Annotated[Session, Depends(page("orgs.update"))]
) -> Response:
    """The networks the organisation's people may sign in from (empty: anywhere)."""
    form = _form(request, session, "orgs.update")
    services_of(request).people.set_sources(session.actor, org, _list(form.get("source_cidrs", "")))
    return redirect(f"{PREFIX}/admin/orgs?done=sources_set")


# --- people ----------------------------------------------------------------------------


@router.get("/people")
def people(request: Request, session: AdminPage) -> Response:
    """The accounts the caller may see (``GET /v1/users``), with expiry, lock, TOTP and
    the last recertification; the form to create one."""
    services = services_of(request)
    tz = zone_of(services, session)
    users = services.people.list_users(session.actor)
    orgs = {o.id: o for o in services.people.list_orgs(session.actor)}
    names = services.people.names({u.recertified_by for u in users if u.recertified_by})
    platform = session.actor.org_kind == OrgKind.PLATFORM
    rows = [
        {
            "u": u,
            "org": orgs[u.org_id].name if u.org_id in orgs else "",
            "expires": i18n.local_time(u.expires_at, tz),
            "locked": i18n.local_time(u.locked_until, tz),
            "recertified": i18n.local_time(u.recertified_at, tz),
            "recertified_by": names.get(u.recertified_by or "", ""),
            "mine": u.id == session.actor.user_id,
            # the forms are offered where the service would allow them (it still decides)
            "manage": platform or u.org_id == session.actor.org_id,
        }
        for u in users
    ]
    return _section(
        request,
        "admin_people.html",
        session,
        rows=rows,
        roles=ROLES,
        orgs=sorted(o.name for o in orgs.values()),
        own_org=orgs[session.actor.org_id].name if session.actor.org_id in orgs else "",
    )


@router.post("/people")
def create_user(
    request: Request, session: Annotated[Session, Depends(page("users.create"))]
) -> Response:
    """Create an account for one named person, as ``POST /v1/users`` (the password
    policy, the roles an organisation may hold, a hospital admin's own hospital only)."""
    services = services_of(request)
    form = _form(request, session, "users.create")
    roles = [r for r in ROLES if form.get(f"role_{r}") == "on"]
    new = NewUser(
        form.get("name", "").strip(),
        form.get("full_name", ""),
        form.get("org", "").strip(),
        roles,
        form.get("password", ""),
        _when(form.get("expires", ""), zone_of(services, session)),
        form.get("email", "").strip(),
    )
    services.people.create_user(session.actor, new)
    return redirect(f"{PREFIX}/admin/people?done=user_created")


@router.post("/people/{user}/expire")
def expire_user(
    user: str, request: Request, session: Annotated[Session, Depends(page("users.expire"))]
) -> Response:
    """Set (or clear, with an empty date) the account's expiry."""
    services = services_of(request)
    form = _form(request, session, "users.expire")
    at = _when(form.get("expires", ""), zone_of(services, session))
    services.people.set_expiry(session.actor, user, at)
    return redirect(f"{PREFIX}/admin/people?done=expiry_set")


@router.post("/people/{user}/recertify")
def recertify_user(
    user: str, request: Request, session: Annotated[Session, Depends(page("users.recertify"))]
) -> Response:
    form = _form(request, session, "users.recertify")
    services_of(request).people.recertify(session.actor, user, form.get("comment", "").strip())
    return redirect(f"{PREFIX}/admin/people?done=recertified")


@router.post("/people/{user}/reset-totp")
def reset_totp(
    user: str, request: Request, session: Annotated[Session, Depends(page("users.reset_totp"))]
) -> Response:
    """Lost authenticator: the person enrols again at the next sign-in."""
    services_of(request).people.reset_totp(session.actor, user)
    return redirect(f"{PREFIX}/admin/people?done=totp_reset")


@router.post("/people/{user}/deactivate")
def deactivate_user(
    user: str, request: Request, session: Annotated[Session, Depends(page("users.deactivate"))]
) -> Response:
    """At once: tokens stop working, live sessions end."""
    services_of(request).people.deactivate(session.actor, user)
    return redirect(f"{PREFIX}/admin/people?done=deactivated")


# --- contracts -------------------------------------------------------------------------


@router.get("/contracts")
def contracts(request: Request, session: AdminPage) -> Response:
    services = services_of(request)
    tz = zone_of(services, session)
    orgs = {o.id: o.name for o in services.people.list_orgs(session.actor)}
    rows = [
        {
            "c": c,
            "vendor": orgs.get(c.vendor_id, ""),
            "hospital": orgs.get(c.hospital_id, ""),
            "until": i18n.local_time(c.valid_until, tz),
        }
        for c in services.estate.list_contracts(session.actor)
    ]
    return _section(request, "admin_contracts.html", session, rows=rows)


@router.post("/contracts")
def create_contract(
    request: Request, session: Annotated[Session, Depends(page("contracts.create"))]
) -> Response:
    services = services_of(request)
    form = _form(request, session, "contracts.create")
    instruments = _list(form.get("instruments", ""))
    if len(instruments) > 500 or any(len(n) > 63 for n in instruments):
        raise InvalidInput("name at most 500 instruments")
    services.estate.create_contract(
        session.actor,
        form.get("vendor", "").strip(),
        form.get("hospital", "").strip(),
        instruments,
        _when(form.get("valid_until", ""), zone_of(services, session)),
        form.get("reference", "").strip(),
    )
    return redirect(f"{PREFIX}/admin/contracts?done=contract_created")


@router.post("/contracts/{contract_id}/end")
def end_contract(
    contract_id: str,
    request: Request,
    session: Annotated[Session, Depends(page("contracts.end"))],
) -> Response:
    services_of(request).estate.end_contract(session.actor, contract_id)
    return redirect(f"{PREFIX}/admin/contracts?done=contract_ended")


# --- policies --------------------------------------------------------------------------


@router.get("/policies")
def policies(request: Request, session: AdminPage) -> Response:
    """The hospital's policy (a platform admin picks the hospital: ``?hospital=``)."""
    services = services_of(request)
    hospitals = [
        o.name for o in services.people.list_orgs(session.actor) if o.kind == OrgKind.HOSPITAL
    ]
    own = next(
        (o.name for o in services.people.list_orgs(session.actor) if o.id == session.actor.org_id),
        "",
    )
    wanted = request.query_params.get("hospital", "")[:63]
    hospital = wanted if wanted in hospitals else (own if own in hospitals else "")
    if not hospital and hospitals:
        hospital = hospitals[0]
    policy = services.estate.show_policy(session.actor, hospital) if hospital else None
    return _section(
        request,
        "admin_policies.html",
        session,
        hospitals=hospitals,
        hospital=hospital,
        p=policy,
        updated=i18n.local_time(policy.updated_at, zone_of(services, session)) if policy else "",
    )


@router.post("/policies/{hospital}")
def update_policy(
    hospital: str, request: Request, session: Annotated[Session, Depends(page("policies.update"))]
) -> Response:
    """Save the whole policy form, as ``PATCH /v1/policies/{hospital}`` (the service's
    checks: durations, 1 or 2 approvers, working hours, time zone)."""
    form = _form(request, session, "policies.update")
    changes: dict[str, Any] = {
        "max_duration_s": _int(form.get("max_duration_min", ""), "the longest window") * 60,
        "approvals_required": _int(form.get("approvals_required", ""), "approvals"),
        "critical_approvals_required": _int(
            form.get("critical_approvals_required", ""), "approvals"
        ),
        "hours_start": form.get("hours_start", "").strip(),
        "hours_end": form.get("hours_end", "").strip(),
        "timezone": form.get("timezone", "").strip() or i18n.DEFAULT_TZ,
        "file_transfer_allowed": form.get("file_transfer_allowed") == "on",
        "emergency_allowed": form.get("emergency_allowed") == "on",
        "emergency_max_duration_s": _int(
            form.get("emergency_max_duration_min", ""), "the longest emergency"
        )
        * 60,
        "request_ttl_s": _int(form.get("request_ttl_h", ""), "the request lifetime") * 3600,
        "record_input": form.get("record_input") == "on",
        "clipboard_allowed": form.get("clipboard_allowed") == "on",
        "drive_allowed": form.get("drive_allowed") == "on",
    }
    services_of(request).estate.update_policy(session.actor, hospital, changes)
    return redirect(f"{PREFIX}/admin/policies?hospital={hospital}&done=policy_saved")


# --- gateways --------------------------------------------------------------------------


def _gateway_page(request: Request, session: Session, **values: Any) -> Response:
    services = services_of(request)
    tz = zone_of(services, session)
    orgs = {o.id: o for o in services.people.list_orgs(session.actor)}
    rows = [
        {
            "g": g,
            "hospital": orgs[g.hospital_id].name if g.hospital_id in orgs else "",
            "enrolled": i18n.local_time(g.enrolled_at, tz),
            "seen": i18n.local_time(g.last_inventory_at, tz),
        }
        for g in services.gateways.list_gateways(session.actor)
    ]
    hospitals = sorted(o.name for o in orgs.values() if o.kind == OrgKind.HOSPITAL)
    values.setdefault("issued", None)
    return _section(
        request, "admin_gateways.html", session, rows=rows, hospitals=hospitals, **values
    )


@router.get("/gateways")
def gateways(request: Request, session: AdminPage) -> Response:
    return _gateway_page(request, session)


@router.post("/gateways/token")
def issue_token(
    request: Request, session: Annotated[Session, Depends(page("gateways.token"))]
) -> Response:
    """A one-time enrolment token, as ``POST /v1/gateways/tokens``: shown on this page
    once (never stored in the clear, never shown again)."""
    services = services_of(request)
    form = _form(request, session, "gateways.token")
    ttl_min = _int(form.get("ttl_min", "") or "60", "the token lifetime")
    issued = services.gateways.issue_token(
        session.actor, form.get("hospital", "").strip() or session.actor.org_id, ttl_min * 60
    )
    tz = zone_of(services, session)
    return _gateway_page(
        request,
        session,
        issued={
            "token": issued.token,
            "hospital": issued.hospital,
            "expires": i18n.local_time(issued.expires_at, tz),
        },
    )


@router.post("/gateways/{gateway}/revoke")
def revoke_gateway(
    gateway: str, request: Request, session: Annotated[Session, Depends(page("gateways.revoke"))]
) -> Response:
    """The gateway's key stops working at once (its tunnel is refused from then on)."""
    services_of(request).gateways.revoke(session.actor, gateway)
    return redirect(f"{PREFIX}/admin/gateways?done=gateway_revoked")


# --- instruments -----------------------------------------------------------------------


@router.get("/instruments")
def instruments(request: Request, session: AdminPage) -> Response:
    services = services_of(request)
    orgs = {o.id: o for o in services.people.list_orgs(session.actor)}
    gws = {g.id: g.name for g in services.gateways.list_gateways(session.actor)}
    rows = [
        {
            "i": i,
            "hospital": orgs[i.hospital_id].name if i.hospital_id in orgs else "",
            "gateway": gws.get(i.gateway_id or "", ""),
        }
        for i in services.estate.list_instruments(session.actor)
    ]
    hospitals = sorted(o.name for o in orgs.values() if o.kind == OrgKind.HOSPITAL)
    return _section(
        request,
        "admin_instruments.html",
        session,
        rows=rows,
        hospitals=hospitals,
        criticalities=CRITICALITIES,
        protocols=PROTOCOLS,
        keyboard_layouts=KEYBOARD_LAYOUTS,
    )


@router.post("/instruments")
def create_instrument(
    request: Request, session: Annotated[Session, Depends(page("instruments.create"))]
) -> Response:
    """Register an instrument, as ``POST /v1/instruments`` (name, host, ports, criticality,
    protocol and keyboard layout checked by the service; the credential is set through
    the API)."""
    form = _form(request, session, "instruments.create")
    ports = [_int(p, "a port") for p in _list(form.get("ports", ""))]
    if len(ports) > 64:
        raise InvalidInput("name at most 64 ports")
    values: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "host": form.get("host", "").strip(),
        "ssh_port": _int(form.get("ssh_port", "") or "22", "the SSH port"),
        "ports": ports,
        "protocol": form.get("protocol", "ssh").strip() or "ssh",
        "keyboard_layout": form.get("keyboard_layout", "en-US").strip() or "en-US",
        "department": form.get("department", "").strip(),
        "model": form.get("model", "").strip(),
        "vendor": form.get("vendor", "").strip(),
        "criticality": form.get("criticality", "normal").strip() or "normal",
        "login_username": form.get("login_username", "").strip(),
    }
    if form.get("gateway", "").strip():
        values["gateway"] = form["gateway"].strip()
    hospital = form.get("hospital", "").strip() or None
    services_of(request).estate.create_instrument(session.actor, hospital, values)
    return redirect(f"{PREFIX}/admin/instruments?done=instrument_created")
