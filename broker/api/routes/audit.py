"""Auditor API: event queries and exports, recordings, work reports and reviews.

``build_router(...)`` returns an ``APIRouter`` for ``create_app`` to include.
Who sees what (deny by default; checked here, after authentication):

* events, exports, reports, reviews: the platform's auditors and platform
  admins see every hospital; a hospital's approvers, auditors and admins see
  only their own hospital (the query is narrowed, not trusted); vendor
  accounts are refused;
* recordings: only the session's hospital's approvers and auditors, and the
  platform's auditors.  Each read is an ``recording.viewed`` event and each
  refusal a ``recording.refused`` event;
* signing a work report: only an approver of the report's hospital.

Token scopes: reads need ``read``, signing needs ``decisions`` (``*`` allows all).
"""


import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from audit.emitter import Emitter
from audit.events import new_event
from audit.export import FORMATS, export_lines
from audit.index import AuditIndex, EventQuery, QueryError
from audit.recording import RecordingError, file_sha256, recording_path
from audit.report import ReportError
from audit.report_render import LANGS, render_html
from audit.review import build_review, render_review_html
from audit.workreports import ReportService
from broker.access.errors import NotFound, PermissionDenied, Unauthenticated
from broker.api.errors import error_response

MAX_EXPORT_ROWS = 1_000_000
_HOSPITAL_READERS = frozenset({"approver", "auditor", "hospital_admin"})
_PLATFORM_READERS = frozenset({"auditor", "platform_admin"})
_RECORDING_HOSPITAL = frozenset({"approver", "auditor"})


class Caller(Protocol):
    """What the router needs to know about the caller (``broker.access.ports.Actor``)."""

    @property
    def user_id(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def org_id(self) -> str: ...
    @property
    def org_kind(self) -> str: ...
    @property
    def roles(self) -> frozenset[str]: ...
    @property
    def scopes(self) -> frozenset[str]: ...
    @property
    def src_ip(self) -> str | None: ...


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    report_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    comment: str | None = Field(default=None, max_length=2000)


def default_authenticate(request: Request) -> Caller:
    """Bearer token -> Actor through the control plane's auth service."""
    from broker.api.deps import bearer, client_ip

    services = getattr(request.app.state, "services", None)
    if services is None:
        raise Unauthenticated("authentication is not configured")
    actor: Caller = services.auth.authenticate(bearer(request), client_ip(request))
    return actor


def _scope(caller: Caller, scope: str) -> None:
    if "*" not in caller.scopes and scope not in caller.scopes:
        raise PermissionDenied(f"this token's scope does not allow {scope}")


def hospital_scope(caller: Caller) -> tuple[str, ...] | None:
    """None: every hospital; a tuple: only those; refused for everyone else."""
    if caller.org_kind == "platform" and caller.roles & _PLATFORM_READERS:
        return None
    if caller.org_kind == "hospital" and caller.roles & _HOSPITAL_READERS:
        return (caller.org_id,)
    raise PermissionDenied("only auditors, approvers and administrators read the audit trail")


def may_read_recording(caller: Caller, hospital_id: str | None) -> bool:
    if caller.org_kind == "platform" and "auditor" in caller.roles:
        return True
    return (caller.org_kind == "hospital" and bool(caller.roles & _RECORDING_HOSPITAL)
            and hospital_id is not None and caller.org_id == hospital_id)


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(f"{name} must be an ISO 8601 time") from exc
    if t.tzinfo is None:
        raise QueryError(f"{name} must carry a time zone (e.g. 2026-04-01T00:00:00Z)")
    return t


def build_router(
    *,
    index: AuditIndex,
    reports: ReportService,
    recordings_dir: Path,
    emitter: Emitter,
    authenticate: Callable[[Request], Caller] = default_authenticate,
    sink_status: Callable[[], list[dict[str, Any]]] | None = None,
) -> APIRouter:
    router = APIRouter(tags=["audit"])

    def caller_dep(request: Request) -> Caller:
        caller = authenticate(request)
        request.state.actor = caller
        return caller

    CallerDep = Annotated[Caller, Depends(caller_dep)]

    def query_dep(
        start: str | None = None, end: str | None = None, hospital: str | None = None,
        instrument: str | None = None, engineer: str | None = None,
        vendor: str | None = None, type: Annotated[list[str] | None, Query()] = None,
        outcome: str | None = None, session: str | None = None, request_id: str | None = None,
        grant: str | None = None, limit: int = 100, page: str | None = None,
        order: str = "asc",
    ) -> dict[str, Any]:
        return {"start": start, "end": end, "hospital_id": hospital, "instrument": instrument,
                "engineer": engineer, "vendor_id": vendor, "types": tuple(type or ()),
                "outcome": outcome, "session_id": session, "request_id": request_id,
                "grant_id": grant, "limit": limit, "page": page,
                "newest_first": order == "desc"}

    QueryDep = Annotated[dict[str, Any], Depends(query_dep)]

    def make_query(caller: Caller, raw: dict[str, Any]) -> EventQuery:
        _scope(caller, "read")
        scope = hospital_scope(caller)
        args = dict(raw)
        args["start"] = _parse_time(raw["start"], "start")
        args["end"] = _parse_time(raw["end"], "end")
        return EventQuery(hospital_ids=scope, **args)

    def bad(exc: Exception, status: int = 400, code: str = "invalid_query") -> JSONResponse:
        return error_response(status, code, str(exc))

    @router.get("/v1/audit/events")
    def search(caller: CallerDep, raw: QueryDep) -> Response:
        try:
            page = index.search(make_query(caller, raw))
        except QueryError as exc:
            return bad(exc)
        return JSONResponse({"events": page.events, "next_page": page.next_page})

    @router.get("/v1/audit/export")
    def export(caller: CallerDep, raw: QueryDep, format: str = "jsonl") -> Response:
        if format not in FORMATS:
            return bad(QueryError(f"format must be one of {', '.join(FORMATS)}"))
        try:
            q = make_query(caller, {**raw, "limit": 1000, "page": None})
            q.validate()
        except QueryError as exc:
            return bad(exc)
        filters = {k: v for k, v in raw.items() if v not in (None, (), "") and k != "limit"}
        emitter.emit(new_event(
            "audit.exported", ActorUserId=caller.user_id, ActorUsername=caller.username,
            SrcIpAddr=caller.src_ip, DvcRole="broker", Operation="export",
            details={"format": format, "count": None, "filters": json.dumps(filters,
                                                                            default=str)}))
        lines: Iterator[str] = export_lines(index.iterate(q, max_rows=MAX_EXPORT_ROWS), format)
        media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
        return StreamingResponse((line.encode() for line in lines), media_type=media,
                                 headers={"Content-Disposition":
                                          f'attachment; filename="hoshu-audit.{format}"'})

    @router.get("/v1/recordings/{session_id}")
    def recording(session_id: str, caller: CallerDep) -> Response:
        _scope(caller, "read")
        try:
            path = recording_path(recordings_dir, session_id)
        except RecordingError as exc:
            return bad(exc, 400, "invalid_session_id")
        started = index.search(EventQuery(session_id=session_id,
                                          types=("session.started",), limit=1)).events
        hospital = started[0].get("HospitalId") if started else None
        common: dict[str, Any] = {"ActorUserId": caller.user_id, "ActorUsername": caller.username,
                  "SrcIpAddr": caller.src_ip, "TargetSessionId": session_id,
                  "HospitalId": hospital, "DvcRole": "broker"}
        if not may_read_recording(caller, hospital):
            emitter.emit(new_event("recording.refused", EventResult="Failure", **common,
                                   details={"reason": "not an approver or auditor of the "
                                                      "session's hospital"}))
            raise PermissionDenied("recordings are readable only by the hospital's approvers "
                                   "and auditors and by platform auditors")
        if not path.is_file():
            raise NotFound(f"no recording for session {session_id}")
        size, sha = file_sha256(path)
        emitter.emit(new_event("recording.viewed", RecordingSHA256=sha, RecordingSize=size,
                               **common, details={"recording": path.name}))
        return FileResponse(path, media_type="application/x-asciicast",
                            headers={"X-Recording-SHA256": sha})

    def _report_for(caller: CallerDep, grant_id: str) -> dict[str, Any]:
        _scope(caller, "read")
        scope = hospital_scope(caller)
        report = reports.build(grant_id)
        if scope is not None and report["plan"].get("hospital_id") not in scope:
            raise NotFound(f"no report for grant {grant_id}")
        return report

    @router.get("/v1/reports/{grant_id}")
    def show_report(grant_id: str, caller: CallerDep, format: str = "json",
                    lang: str = "ja") -> Response:
        if lang not in LANGS or format not in ("json", "html"):
            return bad(QueryError("format must be json or html and lang ja or en"))
        try:
            report = _report_for(caller, grant_id)
        except ReportError as exc:
            return bad(exc, 404, "not_found")
        report["status"] = reports.status(grant_id)
        if format == "html":
            return HTMLResponse(render_html(report, lang))
        return JSONResponse(report)

    @router.post("/v1/reports/{grant_id}/generate")
    def generate_report(grant_id: str, caller: CallerDep) -> Response:
        try:
            _report_for(caller, grant_id)
            return JSONResponse(reports.generate(grant_id), status_code=201)
        except ReportError as exc:
            return bad(exc, 404, "not_found")

    @router.post("/v1/reports/{grant_id}/sign")
    def sign_report(grant_id: str, body: SignIn, caller: CallerDep) -> Response:
        _scope(caller, "decisions")
        try:
            report = reports.build(grant_id)
        except ReportError as exc:
            return bad(exc, 404, "not_found")
        if not (caller.org_kind == "hospital" and "approver" in caller.roles
                and caller.org_id == report["plan"].get("hospital_id")):
            raise PermissionDenied("only an approver of the hospital signs its work reports")
        try:
            event = reports.sign(grant_id, body.report_sha256, user_id=caller.user_id,
                                 username=caller.username, comment=body.comment)
        except ReportError as exc:
            return bad(exc, 409, "conflict")
        return JSONResponse(event, status_code=201)

    @router.get("/v1/reviews/{month}")
    def review(month: str, caller: CallerDep, hospital: str | None = None,
               format: str = "json", lang: str = "ja") -> Response:
        _scope(caller, "read")
        scope = hospital_scope(caller)
        if scope is not None:
            if hospital not in (None, scope[0]):
                raise NotFound("no such hospital")
            hospital = scope[0]
        try:
            result = build_review(index, month, hospital_id=hospital)
        except QueryError as exc:
            return bad(exc)
        if format == "html" and lang in LANGS:
            return HTMLResponse(render_review_html(result, lang))
        return JSONResponse(result)

    @router.get("/v1/audit/sinks")
    def sinks(caller: CallerDep) -> Response:
        _scope(caller, "read")
        if hospital_scope(caller) is not None:
            raise PermissionDenied("sink status is for platform operators")
        return JSONResponse({"sinks": sink_status() if sink_status else []})

    return router
