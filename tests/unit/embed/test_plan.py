"""protlm.embed.plan (split_by_cost, rank_loads): the split of records among ranks is
deterministic and balanced."""

from __future__ import annotations

import numpy as np
import pytest

from protlm.embed.plan import rank_loads, split_by_cost
from protlm.errors import InputError


def test_snake_order_longest_first_ties_in_input_order():
    costs = [5, 9, 9, 1, 7, 3]
    # longest first: 9 (i=1), 9 (i=2), 7, 5, 3, 1 -> ranks 0, 1, 1, 0, 0, 1
    assert split_by_cost(costs, 2).tolist() == [0, 0, 1, 1, 1, 0]
    assert rank_loads(costs, split_by_cost(costs, 2), 2).tolist() == [17, 17]


@pytest.mark.parametrize("world", [1, 2, 3, 7, 64])
def test_every_item_once_and_loads_within_the_largest_item(world):
    rng = np.random.default_rng(0)
    costs = rng.integers(10, 2000, size=5000)
    owner = split_by_cost(costs, world)
    assert owner.shape == (5000,) and owner.min() >= 0 and owner.max() < world
    loads = rank_loads(costs, owner, world)
    assert loads.sum() == costs.sum()
    assert loads.max() - loads.min() <= costs.max()
    # every rank gets the same length mix: its count of the top 10% longest is within one lap
    top = costs >= np.quantile(costs, 0.9)
    counts = np.bincount(owner[top], minlength=world)
    assert counts.max() - counts.min() <= 1


def test_pure_function_of_costs_and_world():
    costs = list(range(100, 0, -3)) * 5
    a, b = split_by_cost(costs, 4), split_by_cost(list(costs), 4)
    assert a.tolist() == b.tolist()
    assert split_by_cost(costs, 1).tolist() == [0] * len(costs)


def test_fewer_items_than_ranks_and_no_items():
    assert split_by_cost([3, 8], 4).tolist() == [1, 0]
    assert split_by_cost([], 3).tolist() == []
    with pytest.raises(InputError, match="world size"):
        split_by_cost([1], 0)
