"""Auditor API: event queries and exports, recordings, work reports and reviews.

``build_router(...)`` returns an ``APIRouter`` for ``create_app`` to include.
Who may call what is the permission table (:mod:`broker.access.permissions`,
actions ``audit.*``, ``recordings.read``, ``reports.*``, ``reviews.show``),
asked through :func:`broker.api.deps.require` like every other route; which
hospital's records a permitted caller sees is the table's record-level rule
(:func:`~broker.access.permissions.hospital_scope`, ...):

* events, exports, reports, reviews: the platform's auditors and platform
  admins see every hospital; a hospital's approvers, auditors and admins see
  only their own hospital (the query is narrowed, not trusted); vendor
  accounts are refused;
* recordings: only the session's hospital's approvers and auditors, and the
  platform's auditors.  Each read is a ``recording.viewed`` event and each
  refusal a ``recording.refused`` event.  Recordings come from the broker's
  recording store (files, or Azure Blob storage: any replica serves any
  recording); the response holds exactly the bytes its ``X-Recording-SHA256``
  and ``recording.viewed`` describe, even while the recording still grows;
* signing a work report: only an approver of the report's hospital.

Refusals raise domain errors; :mod:`broker.api.errors` maps them to HTTP and
writes the refusal event.  Token scopes: reads need ``read``, signing needs
``decisions`` (``*`` allows all).
"""

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from audit.emitter import Emitter
from audit.events import new_event
from audit.export import FORMATS, export_lines
from audit.index import AuditIndex, EventQuery, QueryError
from audit.recording import RecordingFileError, recording_path
from audit.recstore import RecordingStore, digest, read_upto
from audit.recstore.files import FileStore
from audit.report import ReportError
from audit.report_render import LANGS, render_html
from audit.review import build_review, render_review_html
from audit.workreports import ReportService
from broker.access.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from broker.access.permissions import (
    Principal,
    check_report_signer,
    hospital_scope,
    may_read_recording,
)
from broker.api.deps import Authenticate, refusal_context, require

MAX_EXPORT_ROWS = 1_000_000


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    report_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    comment: str | None = Field(default=None, max_length=2000)


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
    recordings: RecordingStore | None = None,
    authenticate: Authenticate | None = None,
    sink_status: Callable[[], list[dict[str, Any]]] | None = None,
) -> APIRouter:
    router = APIRouter(tags=["audit"])
    store = recordings if recordings is not None else FileStore(recordings_dir)

    def allowed(action: str) -> Any:
        return Depends(require(action, authenticate=authenticate, emitter=emitter))

    Search = Annotated[Principal, allowed("audit.search")]
    Export = Annotated[Principal, allowed("audit.export")]
    Recordings = Annotated[Principal, allowed("recordings.read")]
    ShowReport = Annotated[Principal, allowed("reports.show")]
    GenerateReport = Annotated[Principal, allowed("reports.generate")]
    SignReport = Annotated[Principal, allowed("reports.sign")]
    Reviews = Annotated[Principal, allowed("reviews.show")]
    Sinks = Annotated[Principal, allowed("audit.sinks")]

    def query_dep(
        start: str | None = None,
        end: str | None = None,
        hospital: str | None = None,
        instrument: str | None = None,
        engineer: str | None = None,
        vendor: str | None = None,
        type: Annotated[list[str] | None, Query()] = None,
        outcome: str | None = None,
        session: str | None = None,
        request_id: str | None = None,
        grant: str | None = None,
        command: str | None = None,
        limit: int = 100,
        page: str | None = None,
        order: str = "asc",
    ) -> dict[str, Any]:
        return {
            "start": start,
            "end": end,
            "hospital_id": hospital,
            "instrument": instrument,
            "engineer": engineer,
            "vendor_id": vendor,
            "types": tuple(type or ()),
            "outcome": outcome,
            "session_id": session,
            "request_id": request_id,
            "grant_id": grant,
            "command": command,
            "limit": limit,
            "page": page,
            "newest_first": order == "desc",
        }

    QueryDep = Annotated[dict[str, Any], Depends(query_dep)]

    def make_query(caller: Principal, raw: dict[str, Any]) -> EventQuery:
        scope = hospital_scope(caller)
        args = dict(raw)
        args["start"] = _parse_time(raw["start"], "start")
        args["end"] = _parse_time(raw["end"], "end")
        return EventQuery(hospital_ids=scope, **args)

    @router.get("/v1/audit/events")
    def search(caller: Search, raw: QueryDep) -> Response:
        page = index.search(make_query(caller, raw))
        return JSONResponse({"events": page.events, "next_page": page.next_page})

    @router.get("/v1/audit/export")
    def export(request: Request, caller: Export, raw: QueryDep, format: str = "jsonl") -> Response:
        if format not in FORMATS:
            raise QueryError(f"format must be one of {', '.join(FORMATS)}")
        q = make_query(caller, {**raw, "limit": 1000, "page": None})
        q.validate()
        filters = {k: v for k, v in raw.items() if v not in (None, (), "") and k != "limit"}
        emitter.emit(
            new_event(
                "audit.exported",
                ActorUserId=caller.user_id,
                ActorUsername=caller.username,
                SrcIpAddr=_src(request),
                DvcRole="broker",
                Operation="export",
                details={
                    "format": format,
                    "count": None,
                    "filters": json.dumps(filters, default=str),
                },
            )
        )
        lines: Iterator[str] = export_lines(index.iterate(q, max_rows=MAX_EXPORT_ROWS), format)
        media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
        return StreamingResponse(
            (line.encode() for line in lines),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="hoshu-audit.{format}"'},
        )

    @router.get("/v1/recordings/{session_id}")
    def recording(session_id: str, request: Request, caller: Recordings) -> Response:
        try:
            path = recording_path(recordings_dir, session_id)
        except RecordingFileError as exc:
            raise InvalidInput(str(exc), code="invalid_session_id") from exc
        started = index.search(
            EventQuery(session_id=session_id, types=("session.started",), limit=1)
        ).events
        hospital = started[0].get("HospitalId") if started else None
        refusal_context(request, HospitalId=hospital)
        if not may_read_recording(caller, hospital):
            raise PermissionDenied(
                "recordings are readable only by the hospital's approvers "
                "and auditors and by platform auditors"
            )
        try:
            size, sha = digest(store, path.name)
        except RecordingFileError as exc:
            if store.stat(path.name) is None:
                raise NotFound(f"no recording for session {session_id}") from exc
            raise
        emitter.emit(
            new_event(
                "recording.viewed",
                RecordingSHA256=sha,
                RecordingSize=size,
                ActorUserId=caller.user_id,
                ActorUsername=caller.username,
                SrcIpAddr=_src(request),
                TargetSessionId=session_id,
                HospitalId=hospital,
                DvcRole="broker",
                details={"recording": path.name},
            )
        )
        return StreamingResponse(
            read_upto(store, path.name, size),
            media_type="application/x-asciicast",
            headers={"X-Recording-SHA256": sha, "Content-Length": str(size)},
        )

    def _build(grant_id: str) -> dict[str, Any]:
        try:
            return reports.build(grant_id)
        except ReportError as exc:
            raise NotFound(str(exc)) from exc

    def _report_for(caller: Principal, grant_id: str) -> dict[str, Any]:
        scope = hospital_scope(caller)
        report = _build(grant_id)
        if scope is not None and report["plan"].get("hospital_id") not in scope:
            raise NotFound(f"no report for grant {grant_id}")
        return report

    @router.get("/v1/reports/{grant_id}")
    def show_report(
        grant_id: str, caller: ShowReport, format: str = "json", lang: str = "ja"
    ) -> Response:
        if lang not in LANGS or format not in ("json", "html"):
            raise QueryError("format must be json or html and lang ja or en")
        report = _report_for(caller, grant_id)
        report["status"] = reports.status(grant_id)
        if format == "html":
            return HTMLResponse(render_html(report, lang))
        return JSONResponse(report)

    @router.post("/v1/reports/{grant_id}/generate")
    def generate_report(grant_id: str, caller: GenerateReport) -> Response:
        _report_for(caller, grant_id)
        try:
            return JSONResponse(reports.generate(grant_id), status_code=201)
        except ReportError as exc:
            raise NotFound(str(exc)) from exc

    @router.post("/v1/reports/{grant_id}/sign")
    def sign_report(grant_id: str, body: SignIn, request: Request, caller: SignReport) -> Response:
        hospital = _build(grant_id)["plan"].get("hospital_id")
        refusal_context(request, HospitalId=hospital)
        check_report_signer(caller, hospital)
        try:
            event = reports.sign(
                grant_id,
                body.report_sha256,
                user_id=caller.user_id,
                username=caller.username,
                comment=body.comment,
            )
        except ReportError as exc:
            raise Conflict(str(exc)) from exc
        return JSONResponse(event, status_code=201)

    @router.get("/v1/reviews/{month}")
    def review(
        month: str,
        caller: Reviews,
        hospital: str | None = None,
        format: str = "json",
        lang: str = "ja",
    ) -> Response:
        scope = hospital_scope(caller)
        if scope is not None:
            if hospital not in (None, scope[0]):
                raise NotFound("no such hospital")
            hospital = scope[0]
        result = build_review(index, month, hospital_id=hospital)
        if format == "html" and lang in LANGS:
            return HTMLResponse(render_review_html(result, lang))
        return JSONResponse(result)

    @router.get("/v1/audit/sinks")
    def sinks(caller: Sinks) -> Response:
        return JSONResponse({"sinks": sink_status() if sink_status else []})

    return router


def _src(request: Request) -> str | None:
    return request.client.host if request.client else None
