"""Pure ASGI middlewares: request-body size limit and Bearer API key.

Pure ASGI (not ``BaseHTTPMiddleware``) so that ``receive`` still reports client disconnects to
the endpoints and streaming responses are not buffered.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pyserve.server.errors import error_bytes


async def send_error(send: Send, status: int, message: str, code: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:  # fmt: skip
    """Answers with an OpenAI error object (for middlewares, before any route ran)."""
    body = error_bytes(status, message, code)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw + (headers or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodyLimitMiddleware:
    """Rejects request bodies over ``max_bytes`` with 413, whether announced or streamed.

    NOTE: the body is read here in full (it is at most ``max_bytes``) and replayed to the app;
    later ``receive()`` calls go to the server, so disconnects still reach the endpoints.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body exceeds the limit of {self.max_bytes} bytes"
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await send_error(send, 413, too_big, "request_too_large")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, 413, too_big, "request_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


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
    """Requires ``Authorization: Bearer <key>`` on ``/v1/*`` (health and metrics stay open)."""

    def __init__(self, app: ASGIApp, api_key: str, prefix: str = "/v1") -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self._key = api_key.encode()
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        auth = dict(scope.get("headers", ())).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        challenge = [(b"www-authenticate", b"Bearer")]
        if not auth:
            await send_error(send, 401, "missing API key: send 'Authorization: Bearer <key>'",
                             "missing_api_key", challenge)  # fmt: skip
            return
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
            await send_error(send, 401, "incorrect API key provided", "invalid_api_key", challenge)
            return
        await self.app(scope, receive, send)
