"""OpenAI-style error objects and the FastAPI exception handlers that produce them.

Every failure leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with a
4xx status for the caller's mistakes and 5xx only for the engine's own failures. Under
``/v1/messages`` the body is Anthropic's shape, ``{"type": "error", "error": {"type", "message",
"param"}}``. An unknown field is a 400 whose ``param`` is its path (``messages.2.foo``).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("pyserve.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class OpenAIError(Exception):
    """An error to answer with; ``status`` picks the HTTP code and the default ``type``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    def body(self) -> dict:
        """The JSON object sent to the client."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}  # fmt: skip

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)

    def sse(self) -> str:
        """The error as one server-sent event (inside a stream that already answered 200)."""
        return f"data: {json.dumps(self.body())}\n\n"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    """A 400 ``invalid_request_error``."""
    return OpenAIError(400, message, param=param, code=code)


def error_bytes(status: int, message: str, code: str | None = None, path: str = "") -> bytes:
    """Raw JSON body for ASGI middlewares that answer before FastAPI runs (``path``: the request's,
    which picks the Anthropic shape under /v1/messages)."""
    err = OpenAIError(status, message, code=code)
    return json.dumps(anthropic_body(err) if _anthropic(path) else err.body()).encode()


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    # NOTE: in a union every member reports; the deepest location is the most specific problem
    # (a bad part inside a content list, not "content is not a string").
    first = max(errors, key=lambda e: len(_loc(e)))
    loc = _loc(first)
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg', '')}", None
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: '{param}'", param
    msg = first.get("msg", "invalid value")
    where = f"'{param}'" if param else "request body"
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return f"{where}: {msg}{extra}", param


def _loc(error: dict) -> list[str]:
    return [str(p) for p in error.get("loc", ()) if p != "body" and not _is_type_tag(p)]


def _is_type_tag(part: object) -> bool:
    """Pydantic puts the union member ('str', 'list[int]', 'function-after[...]') into loc."""
    if not isinstance(part, str):
        return False
    # NOTE: model members of a union appear by class name (API field names are snake_case).
    return ("[" in part or part[:1].isupper()
            or part in ("str", "int", "float", "bool", "list", "dict", "none"))  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    """Routes validation errors (400), HTTP errors and unexpected ones through OpenAIError."""

    @app.exception_handler(OpenAIError)
    async def _openai(request: Request, exc: OpenAIError) -> JSONResponse:
        return _counted(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _counted(request, bad_request(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return _counted(request, OpenAIError(exc.status_code, detail),
                        getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled server error")
        return _counted(request, OpenAIError(500, f"internal server error: {type(exc).__name__}"))


# Anthropic's error types where they differ from OpenAI's
_ANTHROPIC_TYPES = {413: "request_too_large", 500: "api_error", 503: "overloaded_error"}


def anthropic_body(err: OpenAIError) -> dict:
    """``err`` in the Anthropic Messages error shape (``param`` kept: it names the field)."""
    kind = _ANTHROPIC_TYPES.get(err.status, err.type)
    return {"type": "error", "error": {"type": kind, "message": err.message, "param": err.param}}


def _anthropic(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def _counted(request: Request, err: OpenAIError, headers=None) -> JSONResponse:
    """The error response (Anthropic-shaped under /v1/messages), counted in the app's metrics."""
    state = getattr(request.app.state, "pyserve", None)
    if state is not None:
        state.metrics.observe_error(err.status)
    if _anthropic(request.url.path):
        return JSONResponse(anthropic_body(err), status_code=err.status, headers=headers)
    return err.response(headers)
