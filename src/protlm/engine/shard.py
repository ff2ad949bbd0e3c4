"""Which rank embeds which record: a pure, deterministic split balanced by tokens.

Under torchrun every rank must agree on the split without talking, and a rerun with another
number of ranks must split what is left the same way whoever computes it, so the split is a
function of (costs, world) only: no clocks, no randomness, no hashing of Python objects.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from protlm.errors import InputError


def split_by_cost(costs: Sequence[int], world: int) -> np.ndarray:
    """The rank (0..world-1) of each item, so that every rank's summed cost is about equal.

    Items are dealt longest first in a snake order (ranks 0..W-1, then W-1..0, ...), ties in
    input order. Each rank thus gets an equal share of every length band: its summed cost is
    within the largest item's cost of any other rank's, and so is its share of the quadratic
    attention work, which a plain greedy fill by residues would leave lopsided. Vectorised,
    so 60M records split in seconds.
    """
    if world < 1:
        raise InputError(f"world size must be >= 1, got {world}")
    costs_N = np.asarray(costs, dtype=np.int64)
    order_N = np.argsort(-costs_N, kind="stable")  # longest first, ties in input order
    pos_N = np.arange(len(costs_N))
    lap, seat = pos_N // world, pos_N % world
    owner_N = np.empty(len(costs_N), dtype=np.int32)
    owner_N[order_N] = np.where(lap % 2 == 0, seat, world - 1 - seat)
    return owner_N


def rank_loads(costs: Sequence[int], owner: np.ndarray, world: int) -> np.ndarray:
    """(world,) summed cost per rank for a split from `split_by_cost`."""
    return np.bincount(owner, weights=np.asarray(costs, dtype=np.float64), minlength=world).astype(np.int64)
