"""The HTTP API: FastAPI routes over protlm.serve.service (OpenAPI at /docs).

POST /v1/embeddings, /v1/contacts, /v1/variants, /v1/perplexity; GET /v1/models, /healthz,
/readyz, /metrics; the page at / (protlm.serve.page). Every error is one JSON shape,
{"error": {"type", "message"}}: 4xx for what the request got wrong (the library's ProtlmError
messages name the record and position), 503 with Retry-After when busy or loading, 500 with
the traceback in the server log only.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response

from protlm.serve import encode, page
from protlm.serve.backend import Backend, ProtlmError, __version__
from protlm.serve.batcher import QueueFull
from protlm.serve.config import ServeConfig
from protlm.serve.middleware import BearerAuth, BodyLimit, RequestMetrics
from protlm.serve.routes import router
from protlm.serve.service import ClientGone, NotReady, Service

PUBLIC = frozenset({"/", "/page.js", "/page.css", "/healthz", "/readyz", "/docs", "/openapi.json"})
ENDPOINTS = ("/v1/embeddings", "/v1/contacts", "/v1/variants", "/v1/perplexity", "/v1/models",
             "/healthz", "/readyz", "/metrics", "/", "/page.js", "/page.css", "/docs", "/openapi.json")
CLIENT_CLOSED = 499  # nginx's "client closed request": logged and counted, received by no one


def create_app(cfg: ServeConfig, backend: Backend | None = None) -> FastAPI:
    """The ASGI app serving `cfg.model` (or an already loaded `backend`, e.g. in tests)."""
    service = Service(cfg, backend, ENDPOINTS)
    app = FastAPI(title="protlm serve", version=__version__, lifespan=service.lifespan, redoc_url=None,
                  description="Embeddings, contact maps, variant scores and perplexity from one "
                  "protein language model, dynamically batched. Errors: {\"error\": {\"type\", \"message\"}}.")
    app.state.service = service
    app.include_router(router)
    app.include_router(page.router)
    _install_errors(app)
    # outermost last: metrics see every reply, auth answers before the body is read
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    if cfg.token is not None:
        app.add_middleware(BearerAuth, token=cfg.token, public=PUBLIC)
    app.add_middleware(RequestMetrics, metrics=service.metrics)

    @app.get("/healthz", tags=["operations"])
    async def healthz():
        """200 while the process serves HTTP (the model may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "loading, draining or failed"}})
    async def readyz():
        """200 once the model is loaded and one warm-up batch ran; 503 before, and while draining."""
        ready = service.state == "ready"
        return JSONResponse({"status": service.state}, status_code=200 if ready else 503,
                            headers=None if ready else {"Retry-After": "5"})

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics():
        """Prometheus text format: requests, latency, queue depth, batch sizes, residues/s."""
        return PlainTextResponse(service.metrics.render(service.gauges()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def _invalid(err: dict, content_type: str) -> str:
    """One schema error as 'where: what' (where: the field's dotted path, or 'body')."""
    loc = err["loc"][1:]  # after "body"
    if err["type"] == "json_invalid":  # loc: the character where parsing failed
        return f"body: invalid JSON at character {loc[0]}: {err.get('ctx', {}).get('error', err['msg'])}"
    if not loc and "json" not in content_type.lower():  # e.g. curl -d without a Content-Type header
        return f"body: {err['msg']} (send JSON with the header 'Content-Type: application/json')"
    return f"{'.'.join(str(x) for x in loc) or 'body'}: {err['msg']}"


def _install_errors(app: FastAPI) -> None:
    service: Service = app.state.service

    @app.exception_handler(ProtlmError)
    async def protlm_error(request: Request, e: ProtlmError):
        # the error type is the status's own word, whichever layer refused (not the class name:
        # a body over the limit and a request over --max-sequences are both "too_large")
        status, kind = getattr(e, "status", 422), getattr(e, "kind", "invalid_request")
        if status == 422:
            service.metrics.reject("invalid")
        elif status == 413:
            service.metrics.reject("too_large")
        return _error(status, kind, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        service.metrics.reject("invalid")
        parts = [_invalid(err, request.headers.get("content-type", "")) for err in e.errors()]
        return _error(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return _error(e.status_code, "http_error", str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(QueueFull)
    async def busy(request: Request, e: QueueFull):
        return _error(503, "busy", str(e), {"Retry-After": str(e.retry_after)})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, e: NotReady):
        return _error(503, "not_ready", str(e), {"Retry-After": "5"})

    @app.exception_handler(encode.NotAcceptable)
    async def not_acceptable(request: Request, e: encode.NotAcceptable):
        return _error(406, "not_acceptable", str(e))

    @app.exception_handler(ClientGone)
    async def gone(request: Request, e: ClientGone):
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        # Starlette raises the exception again after this reply: uvicorn logs its traceback
        return _error(500, "internal", "internal server error (the traceback is in the server log)")
