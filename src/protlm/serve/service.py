"""The server's state between requests: the model, its batcher, metrics and the life cycle.

Start-up listens at once and loads the model on the model thread, then runs one warm-up batch;
only then is the server ready (/readyz). A load that fails is logged and stops the server, and
`protlm serve` reports the error. Shutdown (SIGTERM) lets uvicorn finish the requests in flight
(the batcher keeps running for them), then stops the batcher.

Requests come here to be checked against the limits and queued (`records`, `run`); each
request waits for its items or for its client to go away, whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable, Hashable, Sequence

from protlm.serve.backend import Backend, ProtlmError, RequestError
from protlm.serve.batcher import Batcher, QueueFull, Stats
from protlm.serve.config import ServeConfig
from protlm.serve.metrics import Metrics

log = logging.getLogger("protlm.serve")


class TooLarge(RequestError):
    """A request over one of the per-request limits (HTTP 413)."""

    status, kind = 413, "too_large"


class UnknownModel(RequestError):
    """A request naming a model this server does not serve (HTTP 404)."""

    status, kind = 404, "unknown_model"


class NotReady(ProtlmError):
    """The model is still loading, or failed to (HTTP 503)."""


class ClientGone(ProtlmError):
    """The client disconnected before its reply was ready."""


class Service:
    """One model served: its backend, batcher and metrics (see the module docstring)."""

    def __init__(self, cfg: ServeConfig, backend: Backend | None = None, endpoints: Sequence[str] = ()):
        self.cfg, self.backend = cfg, backend
        self.metrics = Metrics(endpoints)
        self.batcher: Batcher | None = None
        self.state = "loading"  # loading -> ready -> draining; or failed
        self.load_error: BaseException | None = None
        self.on_fatal: Callable[[], None] = lambda: None  # set by protlm.serve.server: stop uvicorn
        self._loading: asyncio.Task | None = None
        self.in_flight = 0  # requests queued or computing

    # ---- life cycle ----
    @asynccontextmanager
    async def lifespan(self, app):
        self.batcher = Batcher(self._run_batch, self.cfg.max_batch_tokens, self.cfg.max_queue_tokens,
                               self.cfg.batch_wait_ms / 1000, self._on_batch)
        self.batcher.start()
        self._loading = asyncio.get_running_loop().create_task(self._load())
        try:
            yield
        finally:
            self.state = "draining" if self.state == "ready" else self.state
            await self.batcher.stop()  # waits for the model thread (a load in progress included)

    async def _load(self) -> None:
        cfg = self.cfg
        try:
            if self.backend is None:
                log.info("loading %s ...", cfg.model)
                self.backend = await self.batcher.call(Backend.load, cfg.model, cfg.device, cfg.dtype,
                                                       cfg.max_batch_tokens)
            t0 = time.perf_counter()
            await self.batcher.call(self.backend.warm_up)
            info = self.backend.info()
            log.info("ready: %s (%s, %d layers, d=%d, %.1fM parameters) on %s, %s; warm-up %.2f s",
                     info["id"], info["family"], info["layers"], info["embed_dim"], info["params"] / 1e6,
                     info["device"], info["dtype"], time.perf_counter() - t0)
            self.state = "ready"
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - reported by `protlm serve` after the server stops
            self.state, self.load_error = "failed", e
            if isinstance(e, ProtlmError):
                log.error("cannot serve %s: %s", cfg.model, e)
            else:
                log.exception("cannot serve %s", cfg.model)
            self.on_fatal()

    def ready_backend(self, model: str | None = None) -> Backend:
        """The backend, once ready; `model` (a request's optional field) must be the one served."""
        if self.state != "ready":
            raise NotReady(f"the model is {'not ready: ' + self.state if self.state != 'loading' else 'loading'}")
        if model is not None and model != self.backend.name:
            raise UnknownModel(f"model {model!r} is not served here; this server serves {self.backend.name!r}")
        return self.backend

    # ---- requests ----
    def records(self, sequences, unknown_to_x: bool) -> list[tuple[str, str]]:
        """(id, clean sequence) per record, checked against the per-request limits; the first
        problem raises, naming the record and its index in the request."""
        cfg, backend = self.cfg, self.backend
        if len(sequences) > cfg.max_sequences:
            raise TooLarge(f"{len(sequences)} sequences in one request, over the limit of {cfg.max_sequences}; "
                           "split the request")
        seen, total, out = set(), 0, []
        for i, rec in enumerate(sequences):
            if rec.id in seen:
                raise RequestError(f"sequences[{i}]: duplicate record ID {rec.id!r}")
            seen.add(rec.id)
            seq = backend.clean(rec.id, rec.sequence, unknown_to_x)
            total += len(seq)
            if total > cfg.max_residues:
                raise TooLarge(f"record {rec.id!r} (sequences[{i}]) brings the request to {total} residues, "
                               f"over the limit of {cfg.max_residues}; split the request")
            out.append((rec.id, seq))
        return out

    async def run(self, request, items: Sequence[tuple[int, Hashable | None, Any]]) -> list:
        """Queue a request's (cost, key, payload) items and wait for their results, or for the
        client to disconnect (then its pending items are dropped before compute: ClientGone)."""
        cost = sum(c for c, _, _ in items)
        if cost > self.cfg.max_queue_tokens:  # counted as too_large by the app's error handler
            raise TooLarge(f"this request needs {cost} model tokens, more than the queue holds "
                           f"({self.cfg.max_queue_tokens}); split it")
        try:
            futures = self.batcher.submit(items)
        except QueueFull:
            self.metrics.reject("queue_full")
            raise
        gone = asyncio.ensure_future(_disconnected(request.receive))
        results = asyncio.gather(*futures)
        self.in_flight += 1
        try:
            done, _ = await asyncio.wait({gone, results}, return_when=asyncio.FIRST_COMPLETED)
            if results in done:
                return results.result()
            self.metrics.reject("client_gone")
            raise ClientGone()
        finally:
            self.in_flight -= 1
            gone.cancel()
            for f in futures:  # a failed or abandoned request frees its remaining slots
                f.cancel()
            if not results.done():
                results.cancel()
            elif not results.cancelled():
                results.exception()  # retrieved, so asyncio does not log it as never retrieved

    def call(self, fn: Callable, *args, residues: int = 0) -> Callable:
        """A zero-argument job for the batcher (runs alone on the model thread), counted in metrics."""
        def job():
            t0 = time.perf_counter()
            out = fn(*args)
            self.metrics.computed(residues, time.perf_counter() - t0)
            return out
        return job

    # ---- on the model thread ----
    def _run_batch(self, key: Hashable, payloads: list) -> list:
        t0 = time.perf_counter()
        out = self.backend.run_records(key, payloads)
        self.metrics.computed(sum(len(seq) for seq, _ in payloads), time.perf_counter() - t0)
        return out

    def _on_batch(self, stats: Stats) -> None:
        self.metrics.batch(stats.items, stats.cost, stats.seconds)

    def gauges(self) -> dict[str, tuple[str, float]]:
        b = self.batcher
        return {"requests_in_flight": ("Requests queued or computing.", self.in_flight),
                "queue_depth": ("Work items waiting (records, scoring chunks).", b.depth if b else 0),
                "queue_tokens": ("Model tokens waiting.", b.queued_cost if b else 0),
                "queue_capacity_tokens": ("Most model tokens that may wait (--max-queue-tokens).",
                                          self.cfg.max_queue_tokens),
                "running_items": ("Work items in the batch on the model now.", b.running if b else 0),
                "ready": ("1 once the model is loaded and warmed up.", float(self.state == "ready"))}


async def _disconnected(receive) -> None:
    """Returns when the client has gone (the body is already read, so the next message is
    `http.disconnect`, sent by the server when the connection closes)."""
    while (await receive())["type"] != "http.disconnect":
        pass
