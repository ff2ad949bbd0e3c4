"""Which sequences go in which batch, on which rank, in which order (pure, deterministic).

- Held-out split by a hash of the record ID: stable across runs, machines and file order.
- Token-budget batches, two kinds. Padded (`packed=False`): sequences are shuffled with a seeded
  generator, then stably sorted by length, so a batch holds similar lengths (little padding) but
  ties are random; the budget bounds rows x longest row. Packed (`packed=True`): the shuffled
  order is kept and the budget bounds the sum of the sequences' tokens, so a batch is a random
  sample of sequences filling a fixed number of tokens. In both the batch order is shuffled
  again, and epoch e always gives the same batches for the same seed.
- Sharding: every rank sees the same list of *global* batches and takes its share of each, so
  the global batch is identical whatever the number of ranks: rows rank::world when padded,
  token-balanced shares when packed. Data-loader worker w of a rank builds batches w, w+W, ...
  and the loader yields them round-robin, i.e. in order.
- Resumable: the position is (epoch, batch index), saved in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protlm.data.batching import budget_batches

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


@dataclass(frozen=True)
class BatchPlan:
    """Global batches of one split: `epoch_batches(e)` is a pure function of (seed, e)."""

    indices: np.ndarray  # record indices of this split
    lengths: np.ndarray  # residue counts of all records (indexed by record index)
    toks_per_batch: int
    max_length: int  # residues kept per sequence (random crop beyond)
    seed: int
    min_seqs: int = 1
    packed: bool = False  # budget on real tokens (packed batches) rather than on rows x longest

    @property
    def costs(self) -> np.ndarray:
        """Tokens of each record in a batch: its (cropped) residues + BOS, EOS."""
        return np.minimum(self.lengths, self.max_length) + 2

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.indices)
        costs = self.costs
        order = perm if self.packed else perm[np.argsort(costs[perm], kind="stable")]
        batches = self._group(costs, order)
        return [batches[j] for j in rng.permutation(len(batches))]

    def _group(self, costs: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(b, dtype=np.int64) for b in budget_batches(
            costs, self.toks_per_batch, packed=self.packed, order=order, min_seqs=self.min_seqs)]

    def shard(self, batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
        """This rank's rows of a global batch: rows rank::world when padded, token-balanced when packed."""
        if self.packed:
            return balanced_rows(batch, self.costs[batch], rank, world_size)
        return shard_rows(batch, rank, world_size)


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


def balanced_rows(batch: np.ndarray, costs: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rows of a packed global batch for `rank`, so that every rank gets about the same tokens.

    Longest first, each to the rank with the fewest tokens so far (lowest rank on ties): the
    shares differ by at most one sequence's tokens, and every rank gets a row when
    len(batch) >= world_size. Rows keep their order in `batch`.
    """
    load = np.zeros(world_size, dtype=np.int64)
    owner = np.empty(len(batch), dtype=np.int64)
    for j in np.argsort(-costs, kind="stable"):
        r = int(np.argmin(load))  # argmin takes the first (lowest rank) of equal loads
        owner[j], load[r] = r, load[r] + costs[j]
    return batch[owner == rank]
