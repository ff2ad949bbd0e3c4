"""`protlm serve`: one model behind HTTP for a team, with dynamic batching and a page.

`create_app(ServeConfig(model=...))` builds the ASGI app; `serve(cfg)` runs it on uvicorn.
Module map: config (settings), backend (the model and every protlm import), batcher (queue and
model thread), service (life cycle, limits), routes (the /v1 API), schemas (pydantic models),
encode (JSON / npy / safetensors), middleware (token, body limit, metrics), metrics
(Prometheus text), page (the page at /, files in static/), server (uvicorn, SIGTERM).
"""

from protlm.serve.app import create_app
from protlm.serve.config import ServeConfig, read_token
from protlm.serve.server import serve

__all__ = ["ServeConfig", "create_app", "read_token", "serve"]
