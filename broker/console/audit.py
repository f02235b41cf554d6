"""The console's auditor pages: event search and export, recordings played in the
browser, the chain's verification, the monthly review and the compliance report.

Each page has its action in the permission table (``console.audit``,
``console.audit_export``, ``console.recordings``, ``console.audit_verify``,
``console.audit_reports``: auditors of a hospital or of the platform) and then
asks the API's own action of the same table (``audit.search``, ``audit.export``,
``recordings.read``, ``reviews.show``), so the console never allows more than
the API.  What a permitted auditor sees is the API's record-level rule:

- events, exports and the review: a hospital's auditor only their own hospital
  (:func:`~broker.access.permissions.hospital_scope`; the query is narrowed, and
  asking for another hospital by name is refused with ``admin.refused``), the
  platform's auditors every hospital;
- recordings: :func:`~broker.access.permissions.may_read_recording` on the
  hospital of the session's ``session.started`` event; a refusal is
  ``recording.refused`` naming the session.

The pages read the broker's audit parts through :class:`AuditDesk`, found at
``app.state.audit_desk`` (set by :mod:`broker.assembly`): the event index, the
recording store (files or Azure Blob), the verification of the broker's chain
with the signing keys it holds (:meth:`audit.service.AuditRuntime.verify`, as
``hoshu audit verify`` checks it, and writing ``audit.verified`` or
``audit.verification_failed``), and the facts of the compliance report.
Without it the pages answer 503.

Exports are the search's filters, streamed (CSV through :mod:`audit.export`:
cells a spreadsheet would run as a formula are prefixed with ``'``; or JSON
Lines), at most :data:`MAX_EXPORT_ROWS` rows, each one ``audit.exported`` event.
A recording is played with asciinema-player (npm, pinned in package-lock.json,
its files served from ``node_modules`` under ``/console/static/vendor/``); our
``static/audit.js`` starts it from the page's data attributes (no inline
script).  The player's terminal runs as WebAssembly, so the player page alone
adds ``'wasm-unsafe-eval'`` to ``script-src`` (it allows compiling WebAssembly,
not JavaScript ``eval``).  Its bytes are read from the store in ranged reads up
to the size digested for the page's SHA-256, at most :data:`MAX_PLAY_BYTES`;
reading them is a ``recording.viewed`` event.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from audit import new_event
from audit.catalog import CATALOG
from audit.compliance import LABELS, Deployment, assess
from audit.export import FORMATS, export_lines
from audit.index import AuditIndex, EventQuery, QueryError
from audit.recording import RecordingFileError, recording_path
from audit.recstore import RecordingStore, digest, read_upto
from audit.review import build_review, month_range
from audit.verify import VerifyResult
from broker.access.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unavailable
from broker.access.model import OrgKind
from broker.access.permissions import authorize, hospital_scope, may_read_recording
from broker.console import i18n
from broker.console.routes import zone_of
from broker.console.web import CSP, PREFIX, Session, harden, language, page, render, services_of

router = APIRouter(prefix=PREFIX, tags=["console"])

PAGE_SIZE = 50
MAX_EXPORT_ROWS = 100_000
MAX_PLAY_BYTES = 64 * 1024 * 1024
MAX_TEXT = 200  # characters of one search field
MAX_GATEWAY_EVENTS = 10_000  # gateway.connected events read for the compliance report
PLAYER_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'")
OUR_STATIC = {
    "audit.js": "text/javascript; charset=utf-8",
    "audit.css": "text/css; charset=utf-8",
}
VENDOR = {  # asciinema-player's files, as npm installed them
    "asciinema-player.min.js": "text/javascript; charset=utf-8",
    "asciinema-player.css": "text/css; charset=utf-8",
}
VENDOR_DIR = Path(__file__).resolve().parents[2] / "node_modules" / "asciinema-player"

SearchSession = Annotated[Session, Depends(page("console.audit"))]
ExportSession = Annotated[Session, Depends(page("console.audit_export"))]
RecordingsSession = Annotated[Session, Depends(page("console.recordings"))]
VerifySession = Annotated[Session, Depends(page("console.audit_verify"))]
ReportsSession = Annotated[Session, Depends(page("console.audit_reports"))]


@dataclass
class AuditDesk:
    """The broker's audit parts the auditor pages read."""

    index: AuditIndex
    recordings: RecordingStore
    verify: Callable[[], VerifyResult]
    deployment: Callable[[], Deployment] = Deployment
    _verifying: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def verify_once(self) -> VerifyResult:
        """One verification at a time: a second press while one runs is refused."""
        if not self._verifying.acquire(blocking=False):
            raise Conflict("a verification of the chain is running already")
        try:
            return self.verify()
        finally:
            self._verifying.release()


def desk_of(request: Request) -> AuditDesk:
    desk: AuditDesk | None = getattr(request.app.state, "audit_desk", None)
    if desk is None:
        raise Unavailable("the audit trail is not available on this broker")
    return desk


def deployment_facts(settings: Any, index: AuditIndex) -> Deployment:
    """What the compliance report depends on, as ``hoshu audit compliance`` gathers it:
    the SIEM sinks (masking or not), retention, the storage and the gateways' modes
    (their newest ``gateway.connected`` events)."""
    sinks: list[tuple[str, bool]] = []
    for s in getattr(settings, "audit_sinks", None) or []:
        sinks.append((str(s.get("name") or s.get("kind")), bool(s.get("mask", True))))
    if getattr(settings, "azure_logs_endpoint", ""):
        sinks.append(("azure", True))
    modes: dict[str, str] = {}
    newest = EventQuery(types=("gateway.connected",), newest_first=True)
    for n, e in enumerate(index.iterate(newest)):
        if n >= MAX_GATEWAY_EVENTS:  # the newest connections tell each gateway's mode
            break
        gw = str(e.get("GatewayId") or e.get("DvcHostname") or "?")
        modes.setdefault(gw, str((e.get("Details") or {}).get("mode") or "always"))
    blob = bool(getattr(settings, "recordings_url", ""))
    return Deployment(
        label=f"broker at {getattr(settings, 'data_dir', '?')}",
        sinks=tuple(sinks),
        gateway_modes=modes,
        events_retention_days=getattr(settings, "audit_events_retention_days", None),
        recordings_retention_days=getattr(settings, "recordings_retention_days", None),
        storage="Azure Blob storage" if blob else "local files",
    )


# --- the search ----------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The search form's fields, as typed (times in the organisation's zone)."""

    engineer: str = ""
    instrument: str = ""
    hospital: str = ""
    type: str = ""
    start: str = ""
    end: str = ""
    session: str = ""
    command: str = ""  # text found in a command typed or run (the API's ``command``)

    @classmethod
    def of(cls, params: Mapping[str, str]) -> Filters:
        values = {}
        for name in cls.__dataclass_fields__:
            value = str(params.get(name, "")).strip()
            if len(value) > MAX_TEXT:
                raise InvalidInput(f"the field {name} is too long", code="form_too_long")
            values[name] = value
        return cls(**values)

    def pairs(self) -> list[tuple[str, str]]:
        return [(k, getattr(self, k)) for k in self.__dataclass_fields__ if getattr(self, k)]


def _local(value: str, tz: ZoneInfo, name: str) -> datetime | None:
    """``2026-03-02T10:00`` (the form's datetime-local) in the organisation's zone."""
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be a date and time like 2026-03-02T10:00") from exc
    return t.replace(tzinfo=tz) if t.tzinfo is None else t


def _hospitals(request: Request, session: Session) -> dict[str, str]:
    """The hospitals the caller may search (id → name): their own, or every one."""
    orgs = services_of(request).people.list_orgs(session.actor)
    scope = hospital_scope(session.actor)
    return {
        o.id: o.name
        for o in orgs
        if o.kind == OrgKind.HOSPITAL and (scope is None or o.id in scope)
    }


def _query(
    request: Request,
    session: Session,
    f: Filters,
    tz: ZoneInfo,
    hospitals: Mapping[str, str],
    *,
    limit: int = PAGE_SIZE,
    page_token: str | None = None,
) -> EventQuery:
    scope = hospital_scope(session.actor)
    hospital_id = None
    if f.hospital:
        hospital_id = next((i for i, n in hospitals.items() if f.hospital in (i, n)), None)
        if hospital_id is None:
            request.state.refusal_columns = {"Object": f.hospital[:128], "ObjectType": "hospital"}
            raise PermissionDenied("you may search only your own hospital's events")
    if f.type and f.type not in CATALOG:
        raise InvalidInput(f"unknown event type {f.type[:60]!r}")
    q = EventQuery(
        start=_local(f.start, tz, "start"),
        end=_local(f.end, tz, "end"),
        hospital_id=hospital_id,
        hospital_ids=scope,
        instrument=f.instrument or None,
        engineer=f.engineer or None,
        types=(f.type,) if f.type else (),
        session_id=f.session or None,
        command=f.command or None,
        limit=limit,
        page=page_token or None,
        newest_first=True,
    )
    try:
        q.validate()
    except QueryError as exc:
        raise InvalidInput(str(exc)) from exc
    return q


def _run(desk: AuditDesk, q: EventQuery) -> Any:
    try:
        return desk.index.search(q)
    except QueryError as exc:  # a page token that is not ours
        raise InvalidInput(str(exc)) from exc


def _event_row(e: Mapping[str, Any], tz: ZoneInfo, hospitals: Mapping[str, str]) -> dict[str, Any]:
    at = e.get("TimeGenerated")
    try:
        when = i18n.local_time(datetime.fromisoformat(str(at).replace("Z", "+00:00")), tz)
    except ValueError:
        when = str(at)
    hospital = str(e.get("HospitalId") or "")
    return {
        "uid": str(e.get("EventUid") or ""),
        "when": when,
        "type": str(e.get("EventType") or ""),
        "result": str(e.get("EventResult") or ""),
        "actor": str(e.get("ActorUsername") or ""),
        "instrument": str(e.get("TargetHostname") or ""),
        "hospital": hospitals.get(hospital, hospital),
        "session": str(e.get("TargetSessionId") or ""),
        "message": str(e.get("EventMessage") or e.get("EventResultDetails") or ""),
    }


def _search(request: Request, session: Session) -> dict[str, Any]:
    authorize(session.actor, "audit.search")
    desk = desk_of(request)
    tz = zone_of(services_of(request), session)
    hospitals = _hospitals(request, session)
    f = Filters.of(request.query_params)
    token = request.query_params.get("page", "")[:400] or None
    q = _query(request, session, f, tz, hospitals, page_token=token)
    found = _run(desk, q)
    return {
        "filters": f,
        "pairs": f.pairs(),
        "rows": [_event_row(e, tz, hospitals) for e in found.events],
        "next_page": found.next_page,
        "paged": token is not None,
        "hospitals": hospitals,
        "types": sorted(CATALOG),
        "tz": str(tz.key),
        "formats": FORMATS,
    }


@router.get("/audit")
async def search(request: Request, session: SearchSession) -> Response:
    """Events by engineer, instrument, hospital, type and time range, newest first,
    :data:`PAGE_SIZE` a page."""
    values = await asyncio.to_thread(_search, request, session)
    return render(request, "audit_search.html", **values)


@router.get("/audit/export")
async def export(request: Request, session: ExportSession) -> Response:
    """The same search as CSV or JSON Lines, streamed; one ``audit.exported`` event."""
    authorize(session.actor, "audit.export")
    fmt = request.query_params.get("format", "csv")
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")
    desk = desk_of(request)

    def prepare() -> EventQuery:
        tz = zone_of(services_of(request), session)
        f = Filters.of(request.query_params)
        q = _query(request, session, f, tz, _hospitals(request, session), limit=1000)
        services_of(request).ctx.emitter.emit(
            new_event(
                "audit.exported",
                ActorUserId=session.actor.user_id,
                ActorUsername=session.actor.username,
                SrcIpAddr=request.client.host if request.client else None,
                DvcRole="broker",
                Operation="export",
                details={
                    "format": fmt,
                    "count": None,
                    "filters": json.dumps(dict(f.pairs()), ensure_ascii=False),
                },
            )
        )
        return q

    q = await asyncio.to_thread(prepare)

    def lines() -> Iterator[bytes]:
        for line in export_lines(desk.index.iterate(q, max_rows=MAX_EXPORT_ROWS), fmt):
            yield line.encode("utf-8")

    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    response = StreamingResponse(
        lines(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="hoshu-audit.{fmt}"'},
    )
    return harden(response)


# --- recordings ----------------------------------------------------------------------


def _recordings(request: Request, session: Session) -> dict[str, Any]:
    authorize(session.actor, "recordings.read")
    desk = desk_of(request)
    tz = zone_of(services_of(request), session)
    hospitals = _hospitals(request, session)
    f = Filters.of(request.query_params)
    f = Filters(**{**f.__dict__, "type": "session.ended", "command": ""})
    token = request.query_params.get("page", "")[:400] or None
    q = _query(request, session, f, tz, hospitals, page_token=token)
    found = _run(desk, q)
    rows = []
    for e in found.events:
        if not may_read_recording(session.actor, e.get("HospitalId")):
            continue
        row = _event_row(e, tz, hospitals)
        row["size"] = e.get("RecordingSize")
        row["sha256"] = str(e.get("RecordingSHA256") or "")
        row["kind"] = str((e.get("Details") or {}).get("kind") or "")
        rows.append(row)
    return {
        "filters": f,
        "pairs": [p for p in f.pairs() if p[0] != "type"],
        "rows": rows,
        "next_page": found.next_page,
        "paged": token is not None,
        "hospitals": hospitals,
        "tz": str(tz.key),
    }


@router.get("/recordings")
async def recordings(request: Request, session: RecordingsSession) -> Response:
    """Finished sessions with a recording, newest first."""
    values = await asyncio.to_thread(_recordings, request, session)
    return render(request, "audit_recordings.html", **values)


def _session_events(desk: AuditDesk, session_id: str) -> tuple[dict[str, Any] | None, ...]:
    def first(kind: str) -> dict[str, Any] | None:
        found = desk.index.search(EventQuery(session_id=session_id, types=(kind,), limit=1))
        return found.events[0] if found.events else None

    return first("session.started"), first("session.ended")


def _readable(request: Request, session: Session, session_id: str) -> tuple[str, Any, Any]:
    """The recording's name and the session's start and end events, if the caller
    may read it (else raise: the refusal names the session)."""
    authorize(session.actor, "recordings.read")
    try:
        name = recording_path(Path("."), session_id).name
    except RecordingFileError as exc:
        raise InvalidInput(str(exc), code="invalid_session_id") from exc
    desk = desk_of(request)
    started, ended = _session_events(desk, session_id)
    hospital = (started or ended or {}).get("HospitalId")
    request.state.action = "recordings.read"  # a refusal is recording.refused
    request.state.refusal_columns = {
        "TargetSessionId": session_id,
        **({"HospitalId": hospital} if hospital else {}),
    }
    if not may_read_recording(session.actor, hospital):
        raise PermissionDenied(
            "recordings are readable only by the hospital's auditors and by platform auditors"
        )
    if started is None and ended is None:
        raise NotFound(f"no session {session_id}")
    return name, started, ended


MAX_MARKERS = 500  # command markers shown on the player's progress bar


def _command_markers(desk: AuditDesk, session_id: str) -> str:
    """The session's typed commands as asciinema-player markers, ``[[seconds, text]]``
    in JSON (read by audit.js; the template escapes it as an attribute value)."""
    found = desk.index.search(
        EventQuery(session_id=session_id, types=("session.command",), limit=MAX_MARKERS)
    )
    marks: list[list[Any]] = []
    for event in found.events:
        details = event.get("Details") or {}
        offset = details.get("offset")
        if isinstance(offset, int | float) and offset >= 0:
            marks.append([round(float(offset), 3), str(details.get("command") or "")[:200]])
    return json.dumps(marks, ensure_ascii=False)


def _player(request: Request, session: Session, session_id: str) -> dict[str, Any]:
    name, started, ended = _readable(request, session, session_id)
    desk = desk_of(request)
    tz = zone_of(services_of(request), session)
    hospitals = _hospitals(request, session)
    stored = desk.recordings.stat(name)
    size, sha = digest(desk.recordings, name) if stored is not None else (None, "")
    recorded = str((ended or {}).get("RecordingSHA256") or "")
    recorded_size = (ended or {}).get("RecordingSize")
    if stored is None:
        check = "missing"
    elif not recorded:
        check = "unsealed"  # still running, or ended without a hash (a lost broker)
    else:
        check = "match" if (sha == recorded and size == recorded_size) else "mismatch"
    row = _event_row(started or ended or {}, tz, hospitals)
    return {
        "markers": _command_markers(desk, session_id),
        "row": row,
        "ended": _event_row(ended, tz, hospitals) if ended else None,
        "kind": str(((started or ended or {}).get("Details") or {}).get("kind") or ""),
        "stored_sha": sha,
        "stored_size": size,
        "recorded_sha": recorded,
        "recorded_size": recorded_size,
        "check": check,
        "playable": stored is not None and size is not None and 0 < size <= MAX_PLAY_BYTES,
        "too_large": size is not None and size > MAX_PLAY_BYTES,
        "session_id": session_id,
        "tz": str(tz.key),
    }


@router.get("/recordings/{session_id}")
async def player(session_id: str, request: Request, session: RecordingsSession) -> Response:
    """The recording in the player (seek, speed), with its SHA-256 beside the one the
    session's end event recorded."""
    values = await asyncio.to_thread(_player, request, session, session_id)
    response = render(request, "audit_player.html", **values)
    response.headers["Content-Security-Policy"] = PLAYER_CSP
    return response


@router.get("/recordings/{session_id}/cast")
async def cast(session_id: str, request: Request, session: RecordingsSession) -> Response:
    """The recording's bytes (asciicast), exactly those its ``recording.viewed`` names."""

    def open_it() -> tuple[str, int, str]:
        name, started, _ended = _readable(request, session, session_id)
        store = desk_of(request).recordings
        if store.stat(name) is None:
            raise NotFound(f"no recording for session {session_id}")
        size, sha = digest(store, name)
        if size > MAX_PLAY_BYTES:
            raise InvalidInput(
                f"the recording is larger than {MAX_PLAY_BYTES // (1024 * 1024)} MiB: "
                "play it with hoshu audit play",
                code="recording_too_large",
            )
        hospital = (started or {}).get("HospitalId")
        services_of(request).ctx.emitter.emit(
            new_event(
                "recording.viewed",
                RecordingSHA256=sha,
                RecordingSize=size,
                ActorUserId=session.actor.user_id,
                ActorUsername=session.actor.username,
                SrcIpAddr=request.client.host if request.client else None,
                TargetSessionId=session_id,
                HospitalId=hospital,
                DvcRole="broker",
                Operation="play",
                details={"recording": name},
            )
        )
        return name, size, sha

    name, size, sha = await asyncio.to_thread(open_it)
    store = desk_of(request).recordings
    response = StreamingResponse(
        read_upto(store, name, size),
        media_type="application/x-asciicast",
        headers={"X-Recording-SHA256": sha, "Content-Length": str(size)},
    )
    return harden(response)


# --- the chain, the review, the compliance report ------------------------------------


@router.get("/audit/verify")
async def verify_page(request: Request, session: VerifySession) -> Response:
    """What verifying checks, and the button that runs it."""
    desk_of(request)
    return render(request, "audit_verify.html", result=None)


@router.post("/audit/verify")
async def verify(request: Request, session: VerifySession) -> Response:
    """Verify the chain now with the signing keys the broker holds (every version),
    as ``hoshu audit verify`` does; the outcome is an audit event too."""
    authorize(session.actor, "audit.search")
    desk = desk_of(request)
    result = await asyncio.to_thread(desk.verify_once)
    tz = await asyncio.to_thread(zone_of, services_of(request), session)
    now = i18n.local_time(services_of(request).ctx.now(), tz)
    return render(request, "audit_verify.html", result=result, checked_at=now)


def _month(value: str, now: datetime, tz: ZoneInfo) -> str:
    if not value:
        first = now.astimezone(tz).replace(day=1)
        return (first - timedelta(days=1)).strftime("%Y-%m")  # last month
    try:
        month_range(value)
    except QueryError as exc:
        raise InvalidInput(str(exc)) from exc
    return value


def _review(request: Request, session: Session) -> dict[str, Any]:
    authorize(session.actor, "reviews.show")
    desk = desk_of(request)
    services = services_of(request)
    tz = zone_of(services, session)
    hospitals = _hospitals(request, session)
    scope = hospital_scope(session.actor)
    month = _month(request.query_params.get("month", "")[:20], services.ctx.now(), tz)
    wanted = request.query_params.get("hospital", "")[:MAX_TEXT]
    hospital_id: str | None = None
    if scope is not None:
        hospital_id = scope[0]
        if wanted and wanted not in (hospital_id, hospitals.get(hospital_id)):
            request.state.refusal_columns = {"Object": wanted[:128], "ObjectType": "hospital"}
            raise PermissionDenied("you may review only your own hospital")
    elif wanted:
        hospital_id = next((i for i, n in hospitals.items() if wanted in (i, n)), None)
        if hospital_id is None:
            raise NotFound(f"no hospital {wanted}")
    review = build_review(desk.index, month, hospital_id=hospital_id, now=services.ctx.now())
    sections = [
        ("failed_logins", review["failed_logins"]["events"]),
        ("off_window", review["off_window_attempts"]["events"]),
        ("new_sources", review["new_source_addresses"]),
        ("emergencies", review["emergency_sessions"]),
        ("gateway", review["gateway_events"]),
    ]
    shown = []
    for key, events in sections:
        rows = []
        for e in events:
            at = str(e.get("time") or "")
            try:
                at = i18n.local_time(datetime.fromisoformat(at.replace("Z", "+00:00")), tz)
            except ValueError:
                pass
            rows.append({**e, "when": at, "hospital": hospitals.get(str(e.get("hospital_id")), "")})
        shown.append((key, rows))
    return {
        "review": review,
        "sections": shown,
        "month": month,
        "hospital": hospitals.get(hospital_id or "", ""),
        "hospital_id": hospital_id or "",
        "hospitals": hospitals,
        "all_hospitals": scope is None,
        "tz": str(tz.key),
    }


@router.get("/audit/review")
async def review(request: Request, session: ReportsSession) -> Response:
    """The monthly log review (the same as ``hoshu audit review``), printable."""
    values = await asyncio.to_thread(_review, request, session)
    return render(request, "audit_review.html", **values)


def _compliance(request: Request, session: Session) -> dict[str, Any]:
    authorize(session.actor, "reviews.show")
    desk = desk_of(request)
    lang = language(request)
    deployment = desk.deployment()
    return {
        "assessments": assess(deployment),
        "labels": LABELS[lang],
        "deployment": deployment,
    }


@router.get("/audit/compliance")
async def compliance(request: Request, session: ReportsSession) -> Response:
    """Each control's status for this deployment (as ``hoshu audit compliance``), printable."""
    values = await asyncio.to_thread(_compliance, request, session)
    return render(request, "audit_compliance.html", **values)


# --- files: our script and style, and the player's ------------------------------------


@router.get("/static/audit/{name}")
def our_static(name: str) -> Response:
    """The auditor pages' own script and style sheet."""
    if name not in OUR_STATIC:
        raise NotFound("no such file")
    data = resources.files("broker.console").joinpath("static", name).read_bytes()
    response = Response(
        data, media_type=OUR_STATIC[name], headers={"Cache-Control": "public, max-age=3600"}
    )
    return harden(response, store=True)


@router.get("/static/vendor/{name}")
def vendor_static(name: str) -> Response:
    """asciinema-player's bundle and style sheet, from the pinned npm package."""
    if name not in VENDOR:
        raise NotFound("no such file")
    path = VENDOR_DIR / "dist" / "bundle" / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Unavailable("the recording player is not installed (./run installs it)") from exc
    response = Response(
        data, media_type=VENDOR[name], headers={"Cache-Control": "public, max-age=86400"}
    )
    return harden(response, store=True)
