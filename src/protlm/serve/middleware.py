"""ASGI middleware: bearer-token check, request body limit, request metrics.

Plain ASGI (not Starlette's BaseHTTPMiddleware), so the `receive` channel reaches the app
untouched but for counting: a request can still learn that its client disconnected.
"""

from __future__ import annotations

import hmac
import json
import time

from starlette.exceptions import HTTPException

from protlm.serve.metrics import Metrics


async def send_error(send, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
    """A JSON error reply ({"error": {"type", "message"}}) sent straight from a middleware."""
    body = json.dumps({"error": {"type": kind, "message": message}}, separators=(",", ":")).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v
    return None


class BearerAuth:
    """Every path but `public` needs `Authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, app, token: str, public: frozenset[str]):
        self.app, self.token, self.public = app, token.encode(), public

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.public:
            return await self.app(scope, receive, send)
        scheme, _, given = (_header(scope, b"authorization") or b"").partition(b" ")
        # compare_digest on the token itself: the time taken does not depend on how much matches
        if not (scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)):
            return await send_error(send, 401, "unauthorized", "a valid bearer token is required "
                                    "(header 'Authorization: Bearer <token>')", {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised while the body is read, so FastAPI answers 413 whatever reads it."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit} bytes; split the request")


class BodyLimit:
    """Refuse bodies over `max_bytes`: at once from Content-Length, else while reading."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await send_error(send, 413, "too_large", f"request body over the limit of "
                                    f"{self.max_bytes} bytes; split the request")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # a chunked body without Content-Length
                    raise BodyTooLarge(self.max_bytes)
            return message

        return await self.app(scope, counted, send)


class RequestMetrics:
    """Counts every reply by endpoint and status, and its latency (until the last body byte)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def watched(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.request(scope["path"], status[0], time.perf_counter() - t0)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            self.metrics.request(scope["path"], 500, time.perf_counter() - t0)
            raise
