"""Fixtures of the serve tests: a debug model with realistic weights, and a real uvicorn server
on a free loopback port in a thread of the test process (so tests can reach its state)."""

from __future__ import annotations

import copy
import threading
import time

import httpx
import pytest
from _models import perturbed

from protlm.serve import ServeConfig, create_app
from protlm.serve.backend import Backend


class ServerThread:
    """`with ServerThread(app) as s:` serves `app` on 127.0.0.1:<free port> until the block ends;
    entering waits for /readyz."""

    def __init__(self, app, ready: bool = True):
        import uvicorn

        self.app, self.ready = app, ready
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_keep_alive=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def service(self):
        return self.app.state.service

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        while self.ready and httpx.get(self.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def serve_model():
    return perturbed()


@pytest.fixture(scope="module")
def reference_model(serve_model):
    """A copy for computing expected values while the server runs the original."""
    return copy.deepcopy(serve_model)


def start(model, **settings) -> ServerThread:
    """A server (not yet entered) for an already loaded model; settings as ServeConfig's."""
    cfg = ServeConfig(model="debug", **settings)
    return ServerThread(create_app(cfg, Backend(model, model.alphabet, "debug", "cpu", "fp32",
                                                cfg.max_batch_tokens)))
