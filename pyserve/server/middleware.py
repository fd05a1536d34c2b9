"""Pure ASGI middlewares: request accounting, request-body size and time limits, Bearer API key.

Pure ASGI (not ``BaseHTTPMiddleware``) so that ``receive`` still reports client disconnects to
the endpoints and streaming responses are not buffered.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pyserve.server.errors import error_bytes
from pyserve.server.metrics import ServerMetrics

DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")
_OUTCOME = "pyserve_outcome"  # key in scope["state"]: "aborted" or "rejected" set by a route


def set_outcome(scope: Scope, outcome: str) -> None:
    """Marks the request's outcome for the accounting middleware (a 200 stream may still end
    aborted, e.g. at shutdown, or rejected, with an in-band error event)."""
    scope.setdefault("state", {})[_OUTCOME] = outcome


class AccountingMiddleware:
    """Counts every HTTP request as started, then exactly one of completed, aborted or rejected.

    rejected: answered with a status >= 400 (other than 499) or marked so by the route;
    aborted: the client left (499, or the response never finished) or the engine aborted it;
    completed: everything else. So started = completed + aborted + rejected at any quiet moment.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.metrics.request_started()
        status = 0
        finished = False

        async def tracked(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            marked = scope.get("state", {}).get(_OUTCOME)
            if status == 499 or not finished:
                outcome = "aborted"
            elif status >= 400:
                outcome = "rejected"
            else:
                outcome = marked or "completed"
            self.metrics.request_ended(outcome)


async def send_error(scope: Scope, send: Send, status: int, message: str,
                     code: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:  # fmt: skip
    """Answers with an OpenAI error object (for middlewares, before any route ran)."""
    body = error_bytes(status, message, code, scope.get("path", ""))
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw + (headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodyLimitMiddleware:
    """Rejects request bodies over ``max_bytes`` with 413, whether announced or streamed.

    A body that has not fully arrived ``timeout_s`` after the request started gets 408 and the
    connection is closed (slow or stalled uploads hold no worker for longer).

    NOTE: the body is read here in full (it is at most ``max_bytes``) and replayed to the app;
    later ``receive()`` calls go to the server, so disconnects still reach the endpoints.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 60.0) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_bytes}")
        if not timeout_s > 0:
            raise ValueError(f"body timeout must be > 0, got {timeout_s}")
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body exceeds the limit of {self.max_bytes} bytes"
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await send_error(scope, send, 413, too_big, "request_too_large")
            return
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                _timed_out(scope, "body")
                await send_error(scope, send, 408, f"the request body did not arrive within "
                                 f"{self.timeout_s:g} s", "request_timeout",
                                 [(b"connection", b"close")])  # fmt: skip
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(scope, send, 413, too_big, "request_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _timed_out(scope: Scope, phase: str) -> None:
    app = scope.get("app")
    state = getattr(getattr(app, "state", None), "pyserve", None)
    if state is not None:
        state.metrics.observe_timeout(phase)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ApiKeyMiddleware:
    """Requires ``Authorization: Bearer <key>`` on ``/v1/*`` and ``extra_paths`` (the API docs);
    health and metrics stay open."""

    def __init__(self, app: ASGIApp, api_key: str, prefix: str = "/v1",
                 extra_paths: tuple[str, ...] = ()) -> None:  # fmt: skip
        if not api_key or not api_key.strip():
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self._key = api_key.encode()
        self.prefix = prefix
        self.extra_paths = extra_paths

    def _protected(self, path: str) -> bool:
        return path.startswith(self.prefix) or any(
            path == p or path.startswith(p + "/") for p in self.extra_paths
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        auth = dict(scope.get("headers", ())).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        challenge = [(b"www-authenticate", b"Bearer")]
        if not auth:
            await send_error(scope, send, 401,
                             "missing API key: send 'Authorization: Bearer <key>'",
                             "missing_api_key", challenge)  # fmt: skip
            return
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
            await send_error(scope, send, 401, "incorrect API key provided", "invalid_api_key",
                             challenge)  # fmt: skip
            return
        await self.app(scope, receive, send)
