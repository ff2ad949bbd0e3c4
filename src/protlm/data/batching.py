"""Length-sorted, token-budget batching for inference (pure functions).

Sorting by length before packing keeps padding small: a batch of similar lengths costs
about the sum of its lengths, so a fixed token budget gives a roughly fixed memory use.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from protlm.errors import InputError

T = TypeVar("T")


def token_budget_batches(costs: Sequence[int], toks_per_batch: int,
                         max_padding: float | None = None) -> list[list[int]]:
    """Group item indices, shortest first, so each batch's padded size fits the budget.

    `costs[i]` is item i's padded token count (residues + BOS/EOS, or the sum over its windows).
    A batch's padded size is len(batch) * max(cost in batch); an item larger than the whole
    budget gets a batch of its own rather than being dropped. With `max_padding` (a fraction),
    a batch is also closed before its padded size exceeds (1 + max_padding) x the sum of its
    costs: padded positions cost as much compute as real ones, while a smaller batch costs
    little (on 2 CPU cores, one sequence per batch ran a 16-sequence mix 1.3x faster than
    budget-filled batches with 35% padding). Ties keep input order, so batches are deterministic.
    """
    if toks_per_batch <= 0:
        raise InputError(f"toks_per_batch must be positive, got {toks_per_batch}")
    if max_padding is not None and max_padding < 0:
        raise InputError(f"max_padding must be >= 0, got {max_padding}")

    def closes(n: int, total: int, cost: int) -> bool:
        # costs are ascending, so `cost` is the max of the batch with it added
        padded = (n + 1) * cost
        return padded > toks_per_batch or (
            max_padding is not None and padded > (1 + max_padding) * (total + cost))

    return _shortest_first(costs, closes)


def packed_batches(costs: Sequence[int], toks_per_batch: int) -> list[list[int]]:
    """Group item indices, shortest first, so each packed batch's real token count fits the budget.

    A packed batch holds no padding, so its cost is the plain sum of its items' token counts
    (residues + BOS/EOS per piece). Sorting still helps: similar lengths give per-sequence
    attention kernels even work. An item over the whole budget gets a batch of its own.
    """
    if toks_per_batch <= 0:
        raise InputError(f"toks_per_batch must be positive, got {toks_per_batch}")
    return _shortest_first(costs, lambda n, total, cost: total + cost > toks_per_batch)


def _shortest_first(costs: Sequence[int], closes: Callable[[int, int, int], bool]) -> list[list[int]]:
    """Greedy grouping in ascending cost (ties in input order): the current batch is closed when
    `closes(items in it, sum of their costs, next cost)`; an item never waits for a second one."""
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in sorted(range(len(costs)), key=lambda i: costs[i]):
        if current and closes(len(current), total, costs[i]):
            batches.append(current)
            current, total = [], 0
        current.append(i)
        total += costs[i]
    if current:
        batches.append(current)
    return batches


def chunked_by_size(items: Iterable[T], size: Callable[[T], int], max_size: int) -> Iterator[list[T]]:
    """Stream `items` in consecutive chunks whose summed size is about `max_size`.

    Bounds memory for huge inputs: only one chunk is held (and sorted into batches) at a time.
    A chunk is closed once it reaches `max_size`, so it may exceed it by one item.
    """
    chunk: list[T] = []
    total = 0
    for item in items:
        chunk.append(item)
        total += size(item)
        if total >= max_size:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk
