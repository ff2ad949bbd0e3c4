"""`protlm serve` run: the app on uvicorn, SIGTERM drained, a failed model load reported.

SIGTERM or Ctrl-C: uvicorn stops accepting connections, the requests in flight (queued ones
included) are answered, then the process exits 0; /readyz says 'draining' meanwhile. A second
Ctrl-C forces the exit.
"""

from __future__ import annotations

import copy
import logging

from protlm.serve.app import create_app
from protlm.serve.backend import check_options
from protlm.serve.config import ServeConfig

log = logging.getLogger("protlm.serve")


def log_config(level: str) -> dict:
    """uvicorn's logging set-up, with protlm's logger on the same handler."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["protlm"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return cfg


def serve(cfg: ServeConfig) -> None:
    """Serve until SIGTERM / Ctrl-C; raise the model's load error (a ProtlmError for the CLI)."""
    import uvicorn

    check_options(cfg.device, cfg.dtype)  # before listening: a bad --device / --dtype fails at once
    app = create_app(cfg)
    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if service.state == "ready":
                service.state = "draining"
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again after its graceful shutdown, which would end the
            # process with 143 after a clean drain: a drained server exits 0 instead
            getattr(self, "_captured_signals", []).clear()

    server = Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                   log_config=log_config(cfg.log_level), limit_concurrency=cfg.max_connections,
                                   timeout_keep_alive=5, server_header=False))
    service.on_fatal = lambda: setattr(server, "should_exit", True)
    if cfg.public and cfg.token is None:
        log.warning("listening on %s without --token-file: anyone who reaches this port can use the model",
                    cfg.host)
    log.info("protlm serve: %s on http://%s:%d (page at /, API docs at /docs)%s", cfg.model,
             f"[{cfg.host}]" if ":" in cfg.host else cfg.host, cfg.port,
             "; bearer token required" if cfg.token else "")
    server.run()
    if service.load_error is not None:
        raise service.load_error
