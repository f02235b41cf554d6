"""The engineer's pages: my instruments, request access, my requests and grants,
my ssh_config, my SSH keys.

Every page asks the permission table for ``console.engineer`` (engineers only);
every form asks the API's own action and calls the same service as the API route,
so the checks and the audit events are the API's:

- request access: ``requests.create`` → :meth:`RequestService.create`
  (``POST /v1/requests``); emergency access: ``emergency.start`` →
  :meth:`GrantService.start_emergency` (``POST /v1/emergency``), the same form's
  second button;
- cancel a pending request: ``requests.cancel``; end a grant early: ``grants.end``;
- register an SSH public key: ``keys.add`` → :meth:`PeopleService.add_key`
  (``POST /v1/me/keys``, the same validation); retire one: ``keys.revoke``;
- ssh_config: the text ``hoshu ssh-config`` prints for the instruments under the
  caller's live grants (``GET /v1/me/instruments``), made by the front door's own
  renderer (``app.state.ssh_config``, set by :mod:`broker.assembly`; without a
  front door there is nothing to connect to, and the page says so: 503).

Form fields are bounded as the API's ``RequestIn`` bounds them (:data:`LIMITS`);
a field past its bound is refused with the action's ``*.refused`` event
(``EventResultDetails`` ``field_too_long``) and nothing changes.  Bad values
(no such instrument, a port not offered, a window the policy refuses) are the
service's errors, shown as the console's error page.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from audit.events import Result
from broker.access.errors import AccessError, InvalidInput, Unavailable
from broker.access.model import Decision, GrantStatus, RequestStatus
from broker.access.permissions import refusal_event
from broker.access.requests import NewRequest
from broker.console import i18n
from broker.console.web import PREFIX, Session, client_ip, harden, page, redirect, render
from broker.console.web import services_of as _services

router = APIRouter(prefix=PREFIX + "/my", tags=["console"])

EngineerPage = Annotated[Session, Depends(page("console.engineer"))]
# the bounds of the API's RequestIn (broker.api.schemas), field by field
LIMITS = {
    "instruments": 20 * 64,
    "ports": 32 * 6,
    "reason": 2000,
    "ticket": 200,
    "work_plan": 20000,
    "start": 32,
    "duration": 8,
    "public_key": 16384,
}
MAX_INSTRUMENTS = 20
MAX_PORTS = 32
MIN_DURATION_MIN, MAX_DURATION_MIN = 1, 30 * 24 * 60
NOTICES = frozenset(
    {"request_sent", "emergency_started", "cancelled", "ended", "key_added", "key_revoked"}
)
SshConfig = Callable[[str, list[str]], str]
_SPLIT = re.compile(r"[\s,、]+")


def refuse_field(request: Request, session: Session, action: str, name: str) -> InvalidInput:
    """The refusal of a field past its bound: the action's ``*.refused`` event (as the
    API writes for a refused call), then the error to raise."""
    services = _services(request)
    services.ctx.emitter.emit(
        services.ctx.event(
            refusal_event(action),
            session.actor,
            result=Result.FAILURE,
            details={"reason": f"the field {name} is too long"},
            Operation=action,
            EventResultDetails="field_too_long",
            SrcIpAddr=client_ip(request),
        )
    )
    return InvalidInput(f"the field {name} is too long", code="field_too_long")


def bounded(
    request: Request, session: Session, action: str, limits: Mapping[str, int] = LIMITS
) -> Mapping[str, str]:
    """The form, every field within its bound in ``limits`` (2000 characters for a field
    not named there; past it: refused, see :func:`refuse_field`).  Line breaks are
    read as the API gets them (a browser sends a textarea's as CR LF)."""
    form = {k: v.replace("\r\n", "\n") for k, v in session.form.items()}
    for name, value in form.items():
        if len(value) > limits.get(name, 2000):
            raise refuse_field(request, session, action, name)
    return form


def _names(text: str) -> list[str]:
    return [n for n in _SPLIT.split(text.strip()) if n]


def _ports(text: str) -> list[int]:
    ports: list[int] = []
    for item in _names(text):
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise InvalidInput(f"not a port number: {item[:10]!r}")
        ports.append(int(item))
    if len(ports) > MAX_PORTS:
        raise InvalidInput(f"name at most {MAX_PORTS} ports")
    return ports


def _zone_for(request: Request, session: Session, instruments: list[str]) -> ZoneInfo:
    """The time zone a scheduled start is read in: the instruments' hospital's."""
    services = _services(request)
    try:
        inst = services.estate.show_instrument(session.actor, instruments[0])
        return i18n.zone(services.estate.show_policy(session.actor, inst.hospital_id).timezone)
    except AccessError:
        return i18n.zone(None)


def new_request(request: Request, session: Session, action: str) -> NewRequest:
    """The request form read as the API reads ``RequestIn``."""
    form = bounded(request, session, action)
    instruments = [n.lower() for n in _names(form.get("instruments", ""))]
    if not 1 <= len(instruments) <= MAX_INSTRUMENTS or any(len(n) > 63 for n in instruments):
        raise InvalidInput(f"name 1 to {MAX_INSTRUMENTS} instruments")
    reason = form.get("reason", "")
    if not reason.strip():
        raise InvalidInput("a reason is required")
    duration = form.get("duration", "").strip()
    if not duration.isdigit() or not MIN_DURATION_MIN <= int(duration) <= MAX_DURATION_MIN:
        raise InvalidInput("the duration is 1 minute to 30 days, in minutes")
    start: datetime | None = None
    raw_start = form.get("start", "").strip()
    if raw_start and action == "requests.create":
        try:
            start = datetime.fromisoformat(raw_start)
        except ValueError as exc:
            raise InvalidInput("the start is not a date and time") from exc
        if start.tzinfo is None:
            start = start.replace(tzinfo=_zone_for(request, session, instruments))
    return NewRequest(
        instruments,
        int(duration) * 60,
        reason,
        _ports(form.get("ports", "")),
        form.get("file_transfer", "") == "on",
        form.get("ticket", ""),
        form.get("work_plan", ""),
        start,
    )


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done")
    return done if done in NOTICES else None


# --- pages ---------------------------------------------------------------------------


@router.get("/instruments")
def my_instruments(request: Request, session: EngineerPage) -> Response:
    """Instruments my organisation's contracts cover, and which of them I may reach now
    (a live grant), with the ssh_config download."""
    services = _services(request)
    services.grants.sweep()
    live = {
        n for g in services.grants.list_grants(session.actor, live_only=True) for n in g.instruments
    }
    hospitals: dict[str, str] = {}
    rows = []
    for inst in services.estate.list_instruments(session.actor):
        if inst.hospital_id not in hospitals:
            org = services.people.org_of(inst.hospital_id)
            hospitals[inst.hospital_id] = org.name if org else ""
        rows.append({"i": inst, "hospital": hospitals[inst.hospital_id], "live": inst.name in live})
    return render(request, "engineer_instruments.html", rows=rows, notice=_notice(request))


@router.get("/request")
def request_form(request: Request, session: EngineerPage) -> Response:
    """The request form; the instruments I may ask for are listed beside it."""
    services = _services(request)
    names = [i.name for i in services.estate.list_instruments(session.actor)]
    return render(
        request,
        "engineer_request.html",
        names=names,
        preset=request.query_params.get("instrument", "")[:63],
        limits=LIMITS,
    )


@router.post("/requests")
def create_request(
    request: Request, session: Annotated[Session, Depends(page("requests.create"))]
) -> Response:
    """Request access, as ``POST /v1/requests``: the approvers of the hospital are told."""
    new = new_request(request, session, "requests.create")
    _services(request).requests.create(session.actor, new)
    return redirect(f"{PREFIX}/my/requests?done=request_sent")


@router.post("/emergency")
def start_emergency(
    request: Request, session: Annotated[Session, Depends(page("emergency.start"))]
) -> Response:
    """Emergency access now, as ``POST /v1/emergency`` (where the hospital allows it):
    the approvers are alerted at once and review it afterwards."""
    new = new_request(request, session, "emergency.start")
    _services(request).grants.start_emergency(session.actor, new)
    return redirect(f"{PREFIX}/my/requests?done=emergency_started")


@router.get("/requests")
def my_requests(request: Request, session: EngineerPage) -> Response:
    """My requests (pending first, with the approvals so far; decided ones with the
    approvers' comments) and my grants, in Asia/Tokyo (a vendor has no policy zone)."""
    services = _services(request)
    services.grants.sweep()
    tz = i18n.zone(None)
    found = services.requests.list_requests(session.actor, None)
    found = sorted(found, key=lambda r: (r.status != RequestStatus.PENDING, r.created_at))
    grants = services.grants.list_grants(session.actor)
    with services.ctx.uow() as tx:
        decided = (
            tx.find(Decision, request_id=[r.id for r in found], order_by="at") if found else []
        )
    approvals = Counter(d.request_id for d in decided if d.verdict == "approve")
    comments: dict[str, list[str]] = {}
    for d in decided:
        if d.comment:
            comments.setdefault(d.request_id, []).append(d.comment)
    hospitals = {
        h: (o.name if (o := services.people.org_of(h)) else "")
        for h in {r.hospital_id for r in found} | {g.hospital_id for g in grants}
    }
    requests: list[dict[str, Any]] = [
        {
            "r": r,
            "hospital": hospitals.get(r.hospital_id, ""),
            "created": i18n.local_time(r.created_at, tz),
            "start": i18n.local_time(r.start_at, tz),
            "hours": r.duration_s // 3600,
            "minutes": (r.duration_s % 3600) // 60,
            "approvals": approvals.get(r.id, 0),
            "comments": comments.get(r.id, []),
        }
        for r in found
    ]
    live = (GrantStatus.ACTIVE, GrantStatus.APPROVED)
    rows = [
        {
            "g": g,
            "hospital": hospitals.get(g.hospital_id, ""),
            "starts": i18n.local_time(g.starts_at, tz),
            "ends": i18n.local_time(g.ends_at, tz),
            "open": g.status == GrantStatus.ACTIVE,  # only an active grant ends early
        }
        for g in sorted(grants, key=lambda g: (g.status not in live, -g.starts_at.timestamp()))
    ]
    return render(
        request,
        "engineer_requests.html",
        requests=requests,
        grants=rows,
        tz=str(tz.key),
        notice=_notice(request),
    )


@router.post("/requests/{request_id}/cancel")
def cancel(
    request_id: str,
    request: Request,
    session: Annotated[Session, Depends(page("requests.cancel"))],
) -> Response:
    """Withdraw my pending request, as ``POST /v1/requests/{id}/cancel``."""
    _services(request).requests.cancel(session.actor, request_id)
    return redirect(f"{PREFIX}/my/requests?done=cancelled")


@router.post("/grants/{grant_id}/end")
def end_grant(
    grant_id: str, request: Request, session: Annotated[Session, Depends(page("grants.end"))]
) -> Response:
    """End my grant now (work done), as ``POST /v1/grants/{id}/end``."""
    _services(request).grants.end(session.actor, grant_id)
    return redirect(f"{PREFIX}/my/requests?done=ended")


@router.get("/ssh-config")
def ssh_config(request: Request, session: EngineerPage) -> Response:
    """My ssh_config as a download: what ``hoshu ssh-config`` prints for the
    instruments of my live grants."""
    make: SshConfig | None = getattr(request.app.state, "ssh_config", None)
    if make is None:
        raise Unavailable("the SSH front door is not running on this broker")
    services = _services(request)
    services.grants.sweep()
    names: list[str] = []
    for g in services.grants.list_grants(session.actor, live_only=True):
        names += [n for n in g.instruments if n not in names]
    text = make(session.actor.username, names)
    response = Response(
        text,
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="hoshu_ssh_config"'},
    )
    return harden(response)


@router.get("/keys")
def my_keys(request: Request, session: EngineerPage) -> Response:
    """My registered SSH public keys, and the form to add one."""
    services = _services(request)
    tz = i18n.zone(None)
    keys = [
        {"k": k, "added": i18n.local_time(k.created_at, tz)}
        for k in services.people.list_keys(session.actor)
    ]
    return render(request, "engineer_keys.html", keys=keys, notice=_notice(request))


@router.post("/keys")
def add_key(request: Request, session: Annotated[Session, Depends(page("keys.add"))]) -> Response:
    """Register a public key, as ``POST /v1/me/keys`` (the same checks: type, size,
    not already registered)."""
    form = bounded(request, session, "keys.add")
    line = form.get("public_key", "").strip()
    if not line:
        raise InvalidInput("paste a public key")
    _services(request).people.add_key(session.actor, line)
    return redirect(f"{PREFIX}/my/keys?done=key_added")


@router.post("/keys/{key_id}/revoke")
def revoke_key(
    key_id: str, request: Request, session: Annotated[Session, Depends(page("keys.revoke"))]
) -> Response:
    _services(request).people.revoke_key(session.actor, key_id)
    return redirect(f"{PREFIX}/my/keys?done=key_revoked")
