"""Every API error in one JSON shape: ``{"error": {"code", "message", "details"?}}``.

Domain errors map to HTTP status here and nowhere else, for every router
(control plane, audit, live sessions, SSH certificates).  Every refusal
(permission, policy, illegal state) also writes the ``*.refused`` event the
permission table names for the action (:func:`~broker.access.permissions.refusal_event`):
the caller, the action, the reason, the source address, and whatever ids the
request names (``RequestId``, ``GrantId``, ``TargetSessionId``) or the route
added (``broker.api.deps.refusal_context``).  Query errors of the audit trail
are 400.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit.errors import AuditError
from audit.events import Result, new_event
from audit.index import QueryError
from broker.access import errors as e
from broker.access.permissions import refusal_event
from broker.access.ports import Actor

log = logging.getLogger(__name__)

STATUS: list[tuple[type[e.AccessError], int]] = [
    (e.LockedOut, 401),
    (e.Unauthenticated, 401),
    (e.PermissionDenied, 403),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.Gone, 410),
    (e.InvalidInput, 422),
    (e.Unavailable, 503),
]
REFUSALS = (e.PermissionDenied, e.PolicyViolation, e.IllegalTransition)
HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def status_for(exc: e.AccessError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


# path parameters that name the object of a refused call, as event columns
_PATH_COLUMNS = {"request_id": "RequestId", "grant_id": "GrantId", "session_id": "TargetSessionId"}


def _record_refusal(request: Request, exc: e.AccessError) -> None:
    actor: Any = getattr(request.state, "actor", None)
    action: str = getattr(request.state, "action", "") or request.url.path
    services = getattr(request.app.state, "services", None)
    emitter = getattr(request.state, "refusal_emitter", None)
    columns: dict[str, Any] = {
        col: str(request.path_params[name])
        for name, col in _PATH_COLUMNS.items()
        if request.path_params.get(name)
    }
    if action.startswith("reports.") and "GrantId" in columns:
        # a refused sign-off is about the report, not an event of the grant's work
        columns.update(ObjectType="work_report", Object=columns.pop("GrantId"))
    columns.update(getattr(request.state, "refusal_columns", {}))
    columns.update(
        Operation=action,
        EventResultDetails=exc.code,
        SrcIpAddr=request.client.host if request.client else None,
    )
    kind = refusal_event(action)
    details = {"reason": exc.message}
    try:
        if services is not None and (actor is None or isinstance(actor, Actor)):
            event = services.ctx.event(
                kind, actor, result=Result.FAILURE, details=details, **columns
            )
            (emitter or services.ctx.emitter).emit(event)
            return
        if actor is not None:
            columns.update(
                ActorUserId=actor.user_id,
                ActorUsername=actor.username,
                ActorOrganization=getattr(actor, "org_id", None) or None,
            )
        sink = emitter or (services.ctx.emitter if services is not None else None)
        if sink is not None:
            sink.emit(
                new_event(
                    kind,
                    EventResult=Result.FAILURE.value,
                    DvcHostname="broker",
                    DvcRole="broker",
                    details=details,
                    **columns,
                )
            )
    except AuditError:
        log.exception("could not record a refusal")


async def access_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.AccessError)
    if isinstance(exc, REFUSALS):
        _record_refusal(request, exc)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, e.Unauthenticated) else None
    return error_response(status_for(exc), exc.code, exc.message, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]
    return error_response(422, "invalid_input", "the request does not match the schema", details)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    return error_response(
        exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)
    )


async def query_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(400, "invalid_query", str(exc))


async def audit_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("audit log refused an event: %s", exc)
    return error_response(
        503, "audit_unavailable", "the audit log cannot be written: nothing was changed"
    )


def database_busy(exc: BaseException) -> bool:
    """SQLite's write lock still taken when the busy timeout ran out ("database is locked")."""
    orig = getattr(exc, "orig", None)
    return isinstance(orig, sqlite3.OperationalError) and any(
        word in str(orig).lower() for word in ("database is locked", "database is busy")
    )


async def operational_error(request: Request, exc: Exception) -> JSONResponse:
    """A busy SQLite (a burst of writers queued past the busy timeout): nothing was
    changed (the transaction never began or was rolled back), so try again shortly."""
    if not database_busy(exc):
        return await internal_error(request, exc)
    log.warning("database busy on %s: answered 503", request.url.path)
    return error_response(
        503,
        "database_busy",
        "the database is busy with other requests: nothing was changed, try again shortly",
        headers={"Retry-After": "1"},
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.AccessError, access_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(QueryError, query_error)
    app.add_exception_handler(AuditError, audit_error)
    app.add_exception_handler(sa.exc.OperationalError, operational_error)
    app.add_exception_handler(Exception, internal_error)
