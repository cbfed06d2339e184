"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from nanovllm_core.errors import InvalidRequestError

logger = logging.getLogger(__name__)


RETRY_AFTER_S = "1"  # how long a 429 or 503 asks the client to wait


class APIError(Exception):
    status_code = 400
    error_type = "invalid_request_error"
    retry_later = False  # the same request may succeed later: say when (Retry-After)

    def __init__(self, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        if headers is None and self.retry_later:
            headers = {"Retry-After": RETRY_AFTER_S}
        self.message, self.param, self.code, self.headers = message, param, code, headers

    def body(self) -> dict:
        return error_body(self.message, self.error_type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    status_code, error_type = 401, "authentication_error"


class NotFound(APIError):
    status_code, error_type = 404, "not_found_error"


class RequestTooLarge(APIError):
    status_code, error_type = 413, "invalid_request_error"


class TooManyRequests(APIError):
    status_code, error_type, retry_later = 429, "rate_limit_error", True


class RequestTimeout(APIError):
    status_code, error_type = 408, "timeout_error"


class Unavailable(APIError):
    status_code, error_type, retry_later = 503, "service_unavailable_error", True


class InternalError(APIError):
    status_code, error_type = 500, "internal_server_error"


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def from_engine_error(error: InvalidRequestError) -> BadRequest:
    return BadRequest(str(error), param=error.param, code=error.code)


def sse_error(error: "APIError") -> str:
    """An error sent inside an event stream that has already begun."""
    return f"data: {json.dumps(error.body())}\n\n"


def _describe_validation_error(error: dict) -> tuple[str, str | None]:
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = location[0] if location else None
    if error.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    where = ".".join(location) or "body"
    return f"Invalid value for '{where}': {error.get('msg', 'invalid')}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(InvalidRequestError)
    async def engine_refused(request: Request, error: InvalidRequestError) -> JSONResponse:
        return from_engine_error(error).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation_error(error.errors()[0] if error.errors() else {})
        return BadRequest(message, param=param).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        error_type = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        body = error_body(str(error.detail), error_type)
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error serving %s", request.url.path)
        return InternalError("The server had an error while processing the request.").response()
