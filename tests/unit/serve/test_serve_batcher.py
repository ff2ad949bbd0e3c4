"""protlm.serve.batcher: items packed by key within the budget, a bounded queue, cancelled
items dropped before compute, a failing item isolated from its batch mates. No model, no HTTP."""

from __future__ import annotations

import asyncio
import threading

import pytest

from protlm.serve.batcher import Batcher, QueueFull


class Recorder:
    """run_batch that records each batch (key, payloads) and returns payload * 10."""

    def __init__(self, gate: threading.Event | None = None, fail_on=None):
        self.batches, self.gate, self.fail_on = [], gate, fail_on

    def __call__(self, key, payloads):
        if self.gate is not None:
            self.gate.wait(5)  # holds the model thread until the test releases it
        self.batches.append((key, list(payloads)))
        if self.fail_on in payloads:
            raise ValueError(f"bad payload {self.fail_on}")
        return [p * 10 for p in payloads]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def _started(batcher):
    batcher.start()
    return batcher


def test_items_with_one_key_share_a_batch_within_the_budget():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = await _started(Batcher(rec, max_batch_cost=10, max_queue_cost=100))
        first = b.submit([(4, "a", 0)])  # taken alone at once; the rest queue behind it
        await asyncio.sleep(0.05)
        futs = b.submit([(4, "a", 1), (4, "b", 2), (4, "a", 3), (4, "a", 4), (3, None, lambda: "call")])
        gate.set()
        out = await asyncio.gather(*first, *futs)
        await b.stop()
        return out

    assert run(main()) == [0, 10, 20, 30, 40, "call"]
    # budget 10: items 1 and 3 (8 tokens) together, 4 alone; b and the call on their own
    assert rec.batches == [("a", [0]), ("a", [1, 3]), ("b", [2]), ("a", [4])]


def test_a_full_queue_refuses_a_request_whole_and_recovers():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = await _started(Batcher(rec, max_batch_cost=10, max_queue_cost=20))
        running = b.submit([(10, "a", 0)])
        await asyncio.sleep(0.05)  # on the model thread now: out of the queue
        queued = b.submit([(10, "a", 1), (10, "a", 2)])
        assert b.queued_cost == 20
        with pytest.raises(QueueFull) as e:
            b.submit([(1, "a", 3)])
        assert 1 <= e.value.retry_after <= 60 and "busy" in str(e.value)
        assert b.depth == 2  # nothing of the refused request was queued
        gate.set()
        await asyncio.gather(*running, *queued)
        again = await asyncio.gather(*b.submit([(5, "a", 4)]))
        await b.stop()
        return again

    assert run(main()) == [40]


def test_cancelled_items_leave_the_queue_before_compute():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = await _started(Batcher(rec, max_batch_cost=100, max_queue_cost=100))
        running = b.submit([(5, "a", 0)])
        await asyncio.sleep(0.05)
        gone = b.submit([(5, "a", 1), (5, "a", 2)])
        kept = b.submit([(5, "a", 3)])
        for f in gone:  # the client disconnected
            f.cancel()
        await asyncio.sleep(0)  # done-callbacks run on the loop's next turn
        assert b.depth == 1 and b.queued_cost == 5  # freed at once, not when the worker gets there
        gate.set()
        out = await asyncio.gather(*running, *kept)
        await b.stop()
        return out

    assert run(main()) == [0, 30]
    assert [p for _, ps in rec.batches for p in ps] == [0, 3]  # 1 and 2 never reached the model


def test_a_failing_item_fails_alone():
    gate = threading.Event()
    rec = Recorder(gate, fail_on=2)

    async def main():
        b = await _started(Batcher(rec, max_batch_cost=100, max_queue_cost=100))
        first = b.submit([(1, "a", 0)])
        await asyncio.sleep(0.05)
        futs = b.submit([(1, "a", 1), (1, "a", 2), (1, "a", 3)])
        gate.set()
        out = await asyncio.gather(*first, *futs, return_exceptions=True)
        await b.stop()
        return out

    out = run(main())
    assert out[:2] == [0, 10] and out[3] == 30
    assert isinstance(out[2], ValueError) and "bad payload 2" in str(out[2])
    # the batch of three failed, then each ran alone
    assert rec.batches[1:] == [("a", [1, 2, 3]), ("a", [1]), ("a", [2]), ("a", [3])]


def test_batch_wait_gathers_a_burst():
    rec = Recorder()

    async def main():
        b = await _started(Batcher(rec, max_batch_cost=100, max_queue_cost=100, wait_s=0.2))
        futs = b.submit([(1, "a", 1)])
        await asyncio.sleep(0.02)
        futs += b.submit([(1, "a", 2)])  # arrives while the worker lingers
        out = await asyncio.gather(*futs)
        await b.stop()
        return out

    assert run(main()) == [10, 20]
    assert rec.batches == [("a", [1, 2])]


def test_requests_take_turns_so_a_small_one_is_not_stuck_behind_a_large_one():
    """A landscape of many chunks queued first, then a one-record request: the small one runs in
    the batch after the one in flight, not after every chunk of the landscape; a third request's
    items with the landscape's key still join the landscape's batches."""
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        b = await _started(Batcher(rec, max_batch_cost=4, max_queue_cost=100))
        big = b.submit([(4, "scan", i) for i in range(6)])  # one chunk per batch
        await asyncio.sleep(0.05)  # chunk 0 is on the model thread
        small = b.submit([(2, "embed", 100)])
        other = b.submit([(4, "scan", 200)])
        gate.set()
        out = await asyncio.gather(*big, *small, *other)
        await b.stop()
        return out

    assert run(main()) == [0, 10, 20, 30, 40, 50, 1000, 2000]
    order = [payloads for _, payloads in rec.batches]
    assert order[:3] == [[0], [1], [100]]  # the landscape's turn, then the small request's
    assert order[3] == [200] and sorted(p for ps in order for p in ps) == [*range(6), 100, 200]
