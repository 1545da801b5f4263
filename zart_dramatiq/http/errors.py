"""Errors as JSON with a stable code and a message a person can act on."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker_pg import DatabaseUnavailable, SchemaMissing

from ..errors import (
    ConcurrencyKeyError,
    ExecutionConflict,
    ExecutionFinished,
    InvalidSchedule,
    PayloadTooLarge,
    SerializationError,
    UnknownActor,
    UnknownExecution,
    UnknownSchedule,
    ZartError,
)


class ApiError(Exception):
    """A request the API refuses: its HTTP status, stable code and message."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


#: zart's own errors, as the API answers them.
_ZART_ERRORS: list[tuple[type[ZartError], int, str]] = [
    (UnknownExecution, 404, "unknown_execution"),
    (UnknownActor, 404, "unknown_actor"),
    (UnknownSchedule, 404, "unknown_schedule"),
    (ExecutionConflict, 409, "execution_conflict"),
    (ExecutionFinished, 409, "execution_finished"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (SerializationError, 422, "invalid_input"),
    (ConcurrencyKeyError, 422, "invalid_input"),
    (InvalidSchedule, 422, "invalid_schedule"),
]


def error_response(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": {"code": code, "message": message, **details}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Answer every error as JSON: ours, zart's, bad requests and unknown routes."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, **error.details)

    @app.exception_handler(ZartError)
    async def zart_error(request: Request, error: ZartError) -> JSONResponse:
        for kind, status, code in _ZART_ERRORS:
            if isinstance(error, kind):
                return error_response(status, code, str(error))
        return error_response(400, "rejected", str(error))

    @app.exception_handler(DatabaseUnavailable)
    async def unavailable(request: Request, error: DatabaseUnavailable) -> JSONResponse:
        return error_response(
            503, "database_unavailable", f"{error} Try again once the database answers."
        )

    @app.exception_handler(SchemaMissing)
    async def unmigrated(request: Request, error: SchemaMissing) -> JSONResponse:
        return error_response(503, "schema_missing", str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]}
            for e in error.errors()
        ]
        if any(e["type"] == "json_invalid" for e in error.errors()):
            return error_response(
                400, "bad_json", "the request body is not valid JSON", problems=problems
            )
        summary = "; ".join(f"{p['where']}: {p['problem']}" for p in problems)
        return error_response(
            422, "invalid_request", f"the request does not fit: {summary}", problems=problems
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail))


class BodyLimit:
    """Refuses request bodies larger than ``max_bytes`` with 413, before the route reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "body_too_large",
            f"the request body is larger than {self.max_bytes} bytes; "
            "send less, or raise the app's max_body_bytes",
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass
