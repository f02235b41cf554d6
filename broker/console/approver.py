"""The approver's remaining pages: emergency reviews, work reports to sign, host keys.

Each page asks :func:`~broker.console.web.page` for its own console action
(``console.emergencies``, ``console.reports``, ``console.host_keys`` in the
permission table) and each form for the API's action, then calls the service the
API route calls, so the checks and the audit event are the API's:

- **Emergency-access reviews** (``/console/emergencies``): the hospital's
  emergency grants not yet reviewed, with the engineer, instruments, start, the
  reason and the sessions under it with their recordings' SHA-256 (from the work
  report the audit trail gives).  Reviewing is ``emergency.review``
  (:meth:`~broker.access.grants.GrantService.review`, ``emergency.started`` →
  ``emergency.reviewed``; rejecting also revokes).
- **Work reports to sign off** (``/console/reports``, one report at
  ``/console/reports/{grant_id}``, printable: a print style sheet hides the
  navigation and the form).  The report is the API's (``GET /v1/reports/{id}``:
  :class:`~audit.workreports.ReportService`, found at ``app.state.work_reports``).
  Signing is ``reports.sign`` with the API's signer rule
  (:func:`~broker.access.permissions.check_report_signer`: an approver of the
  report's hospital) and the SHA-256 of the report the approver read.
- **Host keys** (``/console/host-keys``): the hospital's instruments whose host key
  changed, old and new fingerprint; accepting is ``instruments.accept_host_key``
  (:meth:`~broker.access.estate.EstateService.accept_host_key`: the instrument's
  hospital's approver or admin).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from audit.index import EventQuery
from audit.report import ReportError
from broker.access.errors import Conflict, InvalidInput, NotFound, Unavailable
from broker.access.model import AccessRequest
from broker.access.permissions import check_report_signer
from broker.console import i18n
from broker.console.routes import zone_of
from broker.console.web import PREFIX, Session, page, redirect, render, services_of

router = APIRouter(prefix=PREFIX, tags=["console"])

EmergenciesSession = Annotated[Session, Depends(page("console.emergencies"))]
ReportsSession = Annotated[Session, Depends(page("console.reports"))]
HostKeysSession = Annotated[Session, Depends(page("console.host_keys"))]

NOTICES = frozenset({"emergency_reviewed", "report_signed", "host_key_accepted"})
MAX_COMMENT = 2000
MAX_REPORTS_LISTED = 200
# why a report is outside its plan (audit.report's codes) → the catalog's words
REASON_KEYS = {
    code: f"appr.reason_{code}"
    for code in (
        "emergency_access",
        "refused_attempt",
        "instrument_not_in_plan",
        "port_not_in_plan",
        "outside_window",
        "file_not_in_plan",
    )
}


class WorkReports(Protocol):
    """The audit trail's work reports (:class:`audit.workreports.ReportService`)."""

    index: Any

    def build(self, grant_id: str) -> dict[str, Any]: ...
    def status(self, grant_id: str) -> dict[str, Any]: ...
    def sign(
        self,
        grant_id: str,
        report_sha256: str,
        *,
        user_id: str,
        username: str,
        comment: str | None = None,
    ) -> dict[str, Any]: ...


def reports_of(request: Request) -> WorkReports:
    reports: WorkReports | None = getattr(request.app.state, "work_reports", None)
    if reports is None:
        raise Unavailable("work reports are not available on this broker")
    return reports


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done")
    return done if done in NOTICES else None


def _comment(session: Session) -> str:
    comment = session.form.get("comment", "").strip()
    if len(comment) > MAX_COMMENT:
        raise InvalidInput(f"the comment is too long ({MAX_COMMENT} characters at most)")
    return comment


# --- emergency-access reviews ----------------------------------------------------------


def _sessions(request: Request, grant_id: str) -> list[dict[str, Any]]:
    """The sessions under a grant and their recordings' hashes, from its work report."""
    reports: WorkReports | None = getattr(request.app.state, "work_reports", None)
    if reports is None:
        return []
    try:
        report = reports.build(grant_id)
    except ReportError:
        return []
    sessions: list[dict[str, Any]] = report["actual"]["sessions"]
    return sessions


def _emergencies(request: Request, session: Session) -> dict[str, Any]:
    services = services_of(request)
    actor = session.actor
    tz = zone_of(services, session)
    found = [
        g
        for g in services.grants.list_grants(actor, unreviewed_emergencies=True)
        if g.hospital_id == actor.org_id
    ]
    people = services.people.names({g.user_id for g in found})
    with services.ctx.uow() as tx:
        reqs = {
            r.id: r
            for r in (tx.find(AccessRequest, id=[g.request_id for g in found]) if found else [])
        }
    items = []
    for g in found:
        r = reqs.get(g.request_id)
        items.append(
            {
                "g": g,
                "engineer": people.get(g.user_id, ""),
                "own": g.user_id == actor.user_id,
                "started": i18n.local_time(g.starts_at, tz),
                "ends": i18n.local_time(g.ends_at, tz),
                "reason": r.reason if r else "",
                "ticket": g.ticket,
                "sessions": _sessions(request, g.id),
            }
        )
    return {"items": items, "tz": str(tz.key), "when": _when(tz)}


def _when(tz: Any) -> Any:
    """An event's UTC time (ISO text) in the organisation's zone, for the templates."""
    return lambda value: i18n.local_time(_parse(value), tz) or ""


@router.get("/emergencies")
async def emergencies(request: Request, session: EmergenciesSession) -> Response:
    """Emergency access of my hospital waiting for its review."""
    values = await asyncio.to_thread(_emergencies, request, session)
    return render(request, "approver_emergencies.html", notice=_notice(request), **values)


@router.post("/emergencies/{grant_id}/review")
def review_emergency(
    grant_id: str,
    request: Request,
    session: Annotated[Session, Depends(page("emergency.review"))],
) -> Response:
    """Review, as ``POST /v1/grants/{id}/review``: accepted, or rejected (and revoked)."""
    verdict = session.form.get("verdict", "")
    services_of(request).grants.review(session.actor, grant_id, verdict, _comment(session))
    return redirect(f"{PREFIX}/emergencies?done=emergency_reviewed")


# --- work reports ----------------------------------------------------------------------


def _report_list(request: Request, session: Session) -> dict[str, Any]:
    reports = reports_of(request)
    services = services_of(request)
    tz = zone_of(services, session)
    hospital = session.actor.org_id
    query = EventQuery(
        hospital_id=hospital, types=("report.generated", "report.signed"), newest_first=True
    )
    generated: dict[str, dict[str, Any]] = {}
    signed: set[str] = set()
    for e in reports.index.iterate(query, max_rows=10_000):
        grant = str(e.get("GrantId") or "")
        if not grant:
            continue
        if e.get("EventType") == "report.signed":
            signed.add(grant)
        elif grant not in generated:
            generated[grant] = e
    items = []
    for grant, e in list(generated.items())[:MAX_REPORTS_LISTED]:
        if grant in signed:
            continue
        details = e.get("Details") or {}
        items.append(
            {
                "grant_id": grant,
                "generated": i18n.local_time(_parse(e.get("TimeGenerated")), tz),
                "verdict": str(details.get("verdict") or ""),
            }
        )
    return {"items": items, "tz": str(tz.key)}


def _parse(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


@router.get("/reports")
async def report_list(request: Request, session: ReportsSession) -> Response:
    """My hospital's work reports generated and not yet signed off."""
    values = await asyncio.to_thread(_report_list, request, session)
    return render(request, "approver_reports.html", notice=_notice(request), **values)


def _report(request: Request, session: Session, grant_id: str) -> dict[str, Any]:
    reports = reports_of(request)
    services = services_of(request)
    tz = zone_of(services, session)
    try:
        report = reports.build(grant_id)
    except ReportError as exc:
        raise NotFound(f"no report for grant {grant_id}") from exc
    if report["plan"].get("hospital_id") != session.actor.org_id:
        raise NotFound(f"no report for grant {grant_id}")  # the API's answer: not yours
    status = reports.status(grant_id)
    reasons = [
        {**r, "key": REASON_KEYS.get(str(r.get("code")), "")} for r in report.get("reasons", [])
    ]
    return {
        "reasons": reasons,
        "report": report,
        "state": status,
        "plan": report["plan"],
        "actual": report["actual"],
        "starts": i18n.local_time(_parse(report["plan"].get("starts")), tz),
        "ends": i18n.local_time(_parse(report["plan"].get("ends")), tz),
        "signed_at": i18n.local_time(_parse(status.get("signed_at")), tz),
        "when": _when(tz),
        "tz": str(tz.key),
    }


@router.get("/reports/{grant_id}")
async def report_page(grant_id: str, request: Request, session: ReportsSession) -> Response:
    """One work report, printable: the plan beside what was done; the sign-off form."""
    values = await asyncio.to_thread(_report, request, session, grant_id)
    return render(request, "approver_report.html", notice=_notice(request), **values)


@router.post("/reports/{grant_id}/sign")
def sign_report(
    grant_id: str,
    request: Request,
    session: Annotated[Session, Depends(page("reports.sign"))],
) -> Response:
    """Sign off, as ``POST /v1/reports/{id}/sign``: only an approver of the report's
    hospital, only the report with the SHA-256 the approver read."""
    reports = reports_of(request)
    try:
        hospital = reports.build(grant_id)["plan"].get("hospital_id")
    except ReportError as exc:
        raise NotFound(str(exc)) from exc
    # the refusal event carries the report's hospital, as the API's does
    columns: dict[str, Any] = getattr(request.state, "refusal_columns", {})
    if hospital:
        columns["HospitalId"] = hospital
    request.state.refusal_columns = columns
    check_report_signer(session.actor, hospital)
    sha = session.form.get("report_sha256", "")
    if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
        raise InvalidInput("report_sha256 must be the report's SHA-256 (64 hex digits)")
    try:
        reports.sign(
            grant_id,
            sha,
            user_id=session.actor.user_id,
            username=session.actor.username,
            comment=_comment(session) or None,
        )
    except ReportError as exc:
        raise Conflict(str(exc)) from exc
    return redirect(f"{PREFIX}/reports/{grant_id}?done=report_signed")


# --- host keys -------------------------------------------------------------------------


def _host_keys(request: Request, session: Session) -> dict[str, Any]:
    services = services_of(request)
    tz = zone_of(services, session)
    waiting = [
        i
        for i in services.estate.list_instruments(session.actor)
        if i.pending_host_key_fingerprint is not None and i.hospital_id == session.actor.org_id
    ]
    return {"items": waiting, "tz": str(tz.key)}


@router.get("/host-keys")
async def host_keys(request: Request, session: HostKeysSession) -> Response:
    """My hospital's instruments whose SSH host key changed (sessions to them blocked)."""
    values = await asyncio.to_thread(_host_keys, request, session)
    return render(request, "approver_host_keys.html", notice=_notice(request), **values)


@router.post("/host-keys/{name}/accept")
def accept_host_key(
    name: str,
    request: Request,
    session: Annotated[Session, Depends(page("instruments.accept_host_key"))],
) -> Response:
    """Accept, as ``POST /v1/instruments/{name}/accept-host-key``: the fingerprint shown
    must still be the pending one."""
    fingerprint = session.form.get("fingerprint", "").strip()
    if not fingerprint or len(fingerprint) > 200:
        raise InvalidInput("the fingerprint is missing or too long")
    services_of(request).estate.accept_host_key(session.actor, name, fingerprint)
    return redirect(f"{PREFIX}/host-keys?done=host_key_accepted")
