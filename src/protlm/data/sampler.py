"""Which sequences go in which batch, on which rank, in which order (pure, deterministic).

- Held-out split by a hash of the record ID: stable across runs, machines and file order.
- Token-budget batches bucketed by length: sequences are shuffled with a seeded generator, then
  stably sorted by length, so a batch holds similar lengths (little padding) but ties are random;
  the batch order is shuffled again. Epoch e always gives the same batches for the same seed.
- Sharding: every rank sees the same list of *global* batches and takes rows rank::world of each,
  so the global batch is identical whatever the number of ranks. Data-loader worker w of a rank
  builds batches w, w+W, ... and the loader yields them round-robin, i.e. in order.
- Resumable: the position is (epoch, batch index), saved in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Hash values are signed 64-bit; map to [0, 1) through the unsigned value.
_TWO64 = float(2**64)


def heldout_mask(id_hashes: np.ndarray, valid_fraction: float) -> np.ndarray:
    """Bool (N,): True for records in the held-out split (fraction ~`valid_fraction`)."""
    u = id_hashes.astype(np.int64).view(np.uint64).astype(np.float64) / _TWO64
    return u < valid_fraction


def crop_window(length: int, max_length: int, rng: np.random.Generator) -> tuple[int, int]:
    """(start, end) of a random window of at most `max_length` residues, as in the ESM paper."""
    if length <= max_length:
        return 0, length
    start = int(rng.integers(0, length - max_length + 1))
    return start, start + max_length


def pack_batches(costs: np.ndarray, order: np.ndarray, toks_per_batch: int, min_seqs: int = 1) -> list[np.ndarray]:
    """Greedy packing of `order` (sorted by cost) so len(batch) * max cost <= toks_per_batch.

    A batch always gets at least `min_seqs` sequences (so every rank has rows) even if that
    exceeds the budget.
    """
    batches, current, width = [], [], 0
    for i in order:
        c = int(costs[i])
        if len(current) >= min_seqs and (len(current) + 1) * max(width, c) > toks_per_batch:
            batches.append(np.asarray(current, dtype=np.int64))
            current, width = [], 0
        current.append(int(i))
        width = max(width, c)
    if current and len(current) < min_seqs and batches:
        # a short leftover joins the previous batch rather than leave some rank without rows
        batches[-1] = np.concatenate([batches[-1], np.asarray(current, dtype=np.int64)])
    elif current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


@dataclass(frozen=True)
class BatchPlan:
    """Global batches of one split: `epoch_batches(e)` is a pure function of (seed, e)."""

    indices: np.ndarray  # record indices of this split
    lengths: np.ndarray  # residue counts of all records (indexed by record index)
    toks_per_batch: int
    max_length: int  # residues kept per sequence (random crop beyond)
    seed: int
    min_seqs: int = 1

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.indices)
        costs = np.minimum(self.lengths, self.max_length) + 2  # + BOS, EOS
        order = perm[np.argsort(costs[perm], kind="stable")]
        batches = pack_batches(costs, order, self.toks_per_batch, self.min_seqs)
        return [batches[j] for j in rng.permutation(len(batches))]

    def fixed_batches(self) -> list[np.ndarray]:
        """Unshuffled length-sorted batches (validation: same every time)."""
        costs = np.minimum(self.lengths, self.max_length) + 2
        order = self.indices[np.argsort(costs[self.indices], kind="stable")]
        return pack_batches(costs, order, self.toks_per_batch, self.min_seqs)


def iter_positions(plan: BatchPlan, epoch: int, batch: int):
    """Yield (epoch, batch index, global batch) from a position onwards, forever."""
    while True:
        batches = plan.epoch_batches(epoch)
        for b in range(batch, len(batches)):
            yield epoch, b, batches[b]
        epoch, batch = epoch + 1, 0


def shard_rows(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rows of a global batch that `rank` computes (disjoint, covering, any world size)."""
    return batch[rank::world_size]
