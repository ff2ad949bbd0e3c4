"""Dynamic batching: the requests of many clients packed into the model's token-budget batches.

One asyncio-side queue of pending work (each item a record of a request, or a whole scoring
call, with its future) and one worker task. Requests take turns: the worker takes the oldest
item of the request whose turn it is, and every other pending item with the same key (of any
request) that fits `max_batch_cost` tokens, runs them in the one model thread (the event loop
never waits on the model), and resolves their futures. So a one-record request that arrives
behind a 5,000-variant landscape runs in the next batch, not after the landscape. The queue is
bounded in tokens: a request that would overflow it is refused whole (`QueueFull`, the server's
503 + Retry-After), so memory never grows with the load. A request whose client went away
cancels its futures: its pending items leave the queue at once, before any compute.

Nothing here knows about models; `run_batch(key, payloads) -> results` does the work.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from protlm.errors import ProtlmError

SCAN_LIMIT = 4096  # pending items looked through for batch mates (bounds the worker's host time)


class QueueFull(ProtlmError):
    """The queue cannot take a request now; `retry_after` seconds is a fair guess of when."""

    def __init__(self, retry_after: int, queued: int, capacity: int):
        super().__init__(f"the server is busy: {queued} of {capacity} queued tokens in use; "
                         f"retry in about {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)  # identity hashing: items are dict keys
class Work:
    """One unit of work: records with the same `key` run in one batch; key None runs alone
    (its payload is then a zero-argument callable)."""

    cost: int
    key: Hashable | None
    payload: Any
    future: asyncio.Future = field(repr=False)
    request: int = 0  # the submit() call it came with: requests take turns


@dataclass
class Stats:
    """What the worker reports after each batch (metrics)."""

    items: int
    cost: int
    seconds: float


class Batcher:
    """Pending work, one worker task, one model thread. Start with `start()` inside the loop."""

    def __init__(self, run_batch: Callable[[Hashable, list], Sequence], max_batch_cost: int,
                 max_queue_cost: int, wait_s: float = 0.0, on_batch: Callable[[Stats], None] | None = None):
        self.run_batch, self.max_batch_cost, self.max_queue_cost = run_batch, max_batch_cost, max_queue_cost
        self.wait_s, self.on_batch = wait_s, on_batch
        self._pending: dict[Work, None] = {}  # insertion-ordered: oldest first, O(1) removal
        # each request's pending items, oldest first; the dict's order is the order of turns
        self._by_request: dict[int, dict[Work, None]] = {}
        self._requests = 0
        self.queued_cost = 0
        self.running = 0  # items in the batch on the model thread now
        self._rate = 0.0  # tokens per second of recent batches (EWMA), for Retry-After
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="protlm-model")
        self._task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()

    # ---- the request side ----
    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, items: Sequence[tuple[int, Hashable | None, Any]]) -> list[asyncio.Future]:
        """Queue (cost, key, payload) items, all or none; QueueFull when they do not fit."""
        total = sum(c for c, _, _ in items)
        if self.queued_cost + total > self.max_queue_cost:
            raise QueueFull(self.retry_after(total), self.queued_cost, self.max_queue_cost)
        loop = asyncio.get_running_loop()
        self._requests += 1
        futures = []
        for cost, key, payload in items:
            work = Work(cost, key, payload, loop.create_future(), self._requests)
            self._pending[work] = None
            self._by_request.setdefault(work.request, {})[work] = None
            work.future.add_done_callback(lambda _, w=work: self._drop(w))
            futures.append(work.future)
        self.queued_cost += total
        self._wake.set()
        return futures

    def _drop(self, work: Work) -> None:
        """A future done while still pending (its request was cancelled): out of the queue."""
        if work in self._pending:
            self._remove(work)
            self.queued_cost -= work.cost

    def _remove(self, work: Work) -> None:
        del self._pending[work]
        mine = self._by_request[work.request]
        del mine[work]
        if not mine:
            del self._by_request[work.request]

    def retry_after(self, extra: int = 0) -> int:
        """Seconds until the queue has likely drained enough for `extra` more tokens (1..60)."""
        if self._rate <= 0:
            return 5
        return int(min(60, max(1, math.ceil((self.queued_cost + extra - self.max_queue_cost / 2) / self._rate))))

    # ---- the worker ----
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._task = self.loop.create_task(self._work(), name="protlm-batcher")

    async def call(self, fn: Callable, *args):
        """Run `fn(*args)` on the model thread now, outside the queue (loading, warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def stop(self) -> None:
        """Cancel what is still pending and stop the worker (the server drained its requests)."""
        for work in list(self._pending):
            work.future.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.wait_s and self._head_cost() < self.max_batch_cost:
                await asyncio.sleep(self.wait_s)  # let a burst of small requests gather
            batch = self._take()
            if batch:
                await self._run(batch)

    def _head(self) -> Work:
        """The oldest item of the request whose turn it is."""
        return next(iter(next(iter(self._by_request.values()))))

    def _head_cost(self) -> int:
        first = self._head()
        if first.key is None:
            return self.max_batch_cost
        return sum(w.cost for w in self._pending if w.key == first.key)

    def _take(self) -> list[Work]:
        """The head item and, if it batches, every pending mate that fits the budget (oldest
        first, any request); the head's request then goes to the back of the turns."""
        first = self._head()
        batch, cost = [first], first.cost
        if first.key is not None:
            for n, work in enumerate(self._pending):
                if n >= SCAN_LIMIT or cost >= self.max_batch_cost:
                    break
                if work is not first and work.key == first.key and cost + work.cost <= self.max_batch_cost:
                    batch.append(work)
                    cost += work.cost
        for work in batch:
            self._remove(work)
        if first.request in self._by_request:  # to the back of the turns
            self._by_request[first.request] = self._by_request.pop(first.request)
        self.queued_cost -= cost
        return batch

    async def _run(self, batch: list[Work]) -> None:
        loop = asyncio.get_running_loop()
        key = batch[0].key
        t0 = time.perf_counter()
        self.running = len(batch)
        try:
            if key is None:
                results = [await loop.run_in_executor(self._pool, batch[0].payload)]
            else:
                results = await loop.run_in_executor(self._pool, self.run_batch, key, [w.payload for w in batch])
        except Exception as e:  # noqa: BLE001 - handed to the request that owns the item
            if len(batch) > 1:  # one bad item must not fail its batch mates: run each alone
                for work in batch:
                    await self._run([work])
                return
            results = [e]
        finally:
            self.running = 0
        seconds = time.perf_counter() - t0
        cost = sum(w.cost for w in batch)
        if seconds > 0:
            self._rate = cost / seconds if self._rate == 0 else 0.8 * self._rate + 0.2 * cost / seconds
        for work, result in zip(batch, results):
            if work.future.done():  # cancelled while it ran
                continue
            if isinstance(result, Exception):
                work.future.set_exception(result)
            else:
                work.future.set_result(result)
        if self.on_batch is not None:
            self.on_batch(Stats(len(batch), cost, seconds))
