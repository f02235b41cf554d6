"""Every API error in one JSON shape: ``{"error": {"code", "message", "details"?}}``.

Domain errors map to HTTP status here and nowhere else.  Refusals that matter
(permission, policy, illegal state) also write ``request.refused`` or
``admin.refused`` naming the caller and the action.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from audit.errors import AuditError
from audit.events import Result
from broker.access import errors as e
from broker.access.ports import Actor

log = logging.getLogger("hoshu.api")

STATUS: list[tuple[type[e.AccessError], int]] = [
    (e.LockedOut, 401), (e.Unauthenticated, 401), (e.PermissionDenied, 403),
    (e.NotFound, 404), (e.Conflict, 409), (e.Gone, 410), (e.InvalidInput, 422),
]
REFUSALS = (e.PermissionDenied, e.PolicyViolation, e.IllegalTransition)
HTTP_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 410: "gone",
              413: "body_too_large", 415: "unsupported_media_type", 422: "invalid_input"}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def status_for(exc: e.AccessError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def _record_refusal(request: Request, exc: e.AccessError) -> None:
    actor: Actor | None = getattr(request.state, "actor", None)
    action: str = getattr(request.state, "action", "") or request.url.path
    services = getattr(request.app.state, "services", None)
    if services is None:
        return
    kind = "request.refused" if action.startswith(("requests.", "grants.", "emergency.")) \
        else "admin.refused"
    try:
        services.ctx.emit(kind, actor, result=Result.FAILURE, Operation=action,
                          EventResultDetails=exc.code, details={"reason": exc.message},
                          SrcIpAddr=request.client.host if request.client else None)
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
    details = [{"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", ""),
                "type": err.get("type", "")} for err in exc.errors()]
    return error_response(422, "invalid_input", "the request does not match the schema",
                          details)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail),
                          headers=getattr(exc, "headers", None))


async def audit_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("audit log refused an event: %s", exc)
    return error_response(503, "audit_unavailable",
                          "the audit log cannot be written: nothing was changed")


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.AccessError, access_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(AuditError, audit_error)
    app.add_exception_handler(Exception, internal_error)
