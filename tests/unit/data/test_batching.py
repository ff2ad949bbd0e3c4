"""Token-budget batching: every item once, budget respected, shortest first, deterministic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protlm.data.batching import budget_batches, chunked_by_size


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3000), max_size=60), st.integers(1, 5000))
def test_budget_partition(costs, budget):
    batches = budget_batches(costs, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(costs)))
    for b in batches:
        padded = len(b) * max(costs[i] for i in b)
        assert padded <= budget or len(b) == 1  # an oversize item travels alone
    flat = [costs[i] for b in batches for i in b]
    assert flat == sorted(flat)  # length-sorted, so padding stays small
    assert budget_batches(costs, budget) == batches


def test_budget_examples():
    assert budget_batches([5, 3, 5, 10], 10) == [[1, 0], [2], [3]]
    assert budget_batches([50, 2], 10) == [[1], [0]]
    assert budget_batches([], 10) == []
    with pytest.raises(ValueError, match="positive"):
        budget_batches([1], 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3000), max_size=60), st.integers(1, 5000), st.sampled_from([0.0, 0.05, 0.5]))
def test_max_padding_bounds_waste(costs, budget, max_padding):
    batches = budget_batches(costs, budget, max_padding=max_padding)
    assert sorted(i for b in batches for i in b) == list(range(len(costs)))
    for b in batches:
        padded = len(b) * max(costs[i] for i in b)
        assert padded <= (1 + max_padding) * sum(costs[i] for i in b) or len(b) == 1
        assert padded <= budget or len(b) == 1


def test_max_padding_examples():
    # 35% padding in one budget-filled batch; split once the 5% cap is hit
    assert budget_batches([100, 100, 104, 200], 1000) == [[0, 1, 2, 3]]
    assert budget_batches([100, 100, 104, 200], 1000, max_padding=0.05) == [[0, 1, 2], [3]]
    assert budget_batches([7, 7, 7], 100, max_padding=0.0) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="max_padding"):
        budget_batches([1], 10, max_padding=-0.1)


def test_chunked_by_size_streams():
    def items():
        yield from range(10)
        raise AssertionError("read past what was needed")  # pragma: no cover

    it = chunked_by_size(items(), lambda x: 1, 4)
    assert next(it) == [0, 1, 2, 3]
    assert next(it) == [4, 5, 6, 7]
    assert list(chunked_by_size(range(5), lambda x: x, 4)) == [[0, 1, 2, 3], [4]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 3000), max_size=60), st.integers(1, 5000))
def test_packed_budget_counts_real_tokens(costs, budget):
    order = list(reversed(range(len(costs))))
    batches = budget_batches(costs, budget, packed=True, order=order)
    assert [i for b in batches for i in b] == order  # the given order is kept
    for b in batches:
        assert sum(costs[i] for i in b) <= budget or len(b) == 1


def test_min_seqs_gives_every_batch_enough_rows():
    assert budget_batches([10, 10, 10, 10, 10], 10, min_seqs=2) == [[0, 1], [2, 3, 4]]
    assert budget_batches([3, 3], 100, packed=True, min_seqs=4) == [[0, 1]]
