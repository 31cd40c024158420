"""The OpenAI error body and the exception handlers that give every failure that body.

Every error the server sends, its own and FastAPI's / Starlette's (validation, unknown route, wrong method,
malformed multipart), is ``{"error": {"message", "type", "param", "code"}}`` with the status the OpenAI
client maps to the right exception class (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
429 RateLimitError, 5xx InternalServerError). Messages and params are made encodable (a lone surrogate echoed
from a request becomes a ``\\udxxx`` escape), so rendering an error can never fail in turn. An unexpected
exception is a 500 whose message carries the request id, the key to its traceback in the server log.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("dalle2.serve")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    """An error answered with the OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = INVALID_REQUEST,
        headers: dict[str, str] | None = None,
    ) -> None:
        message, param = _encodable(message), None if param is None else _encodable(param)
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _encodable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode (lone surrogates) written as a backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def server_error(request: Request, cause: str = "") -> ApiError:
    """The 500 for an unexpected failure: says what failed (``cause``, if known) and the request id."""
    request_id = getattr(request.state, "request_id", None) or "unknown"
    what = f" ({cause})" if cause else ""
    return ApiError(
        500,
        f"The server had an error while processing your request{what}. If it persists, report the request id "
        f"{request_id}.",
        type=SERVER_ERROR,
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def invalid_url(method: str, path: str) -> ApiError:
    return ApiError(404, f"Invalid URL ({method} {path})")


class BodyTooLarge(Exception):
    """The request body is larger than the server accepts (raised while it is read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is too large: this server accepts at most {limit} bytes.",
        code="request_too_large",
    )


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = loc[0] if loc else None
    text = error.get("msg", "invalid value")
    return (f"{text} - '{param}'" if param else text), param


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the OpenAI error body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return too_large(exc.limit).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message, param = _validation_message(errors[0]) if errors else ("Invalid request.", None)
        return bad_request(message, param, "invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return invalid_url(request.method, request.url.path).response()
        if exc.status_code == 405:
            error = ApiError(405, f"Invalid method for URL ({request.method} {request.url.path})")
            return JSONResponse(error.body(), status_code=405, headers=dict(exc.headers or {}))
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        kind = SERVER_ERROR if exc.status_code >= 500 else INVALID_REQUEST
        return ApiError(exc.status_code, detail, type=kind).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        log.exception("unexpected error on %s %s (request id %s)", request.method, request.url.path, request_id)
        error = server_error(request)
        if request_id:  # this handler answers outside the middleware that adds the header to every other response
            error.headers["x-request-id"] = request_id
        return error.response()
