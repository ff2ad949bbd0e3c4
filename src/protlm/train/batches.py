"""Global batch indices -> masked token batches for one rank (crop, encode, mask, then pad or pack).

Every random draw is seeded by (seed, epoch, record index), never by a running generator, so a
sequence gets the same crop and mask whatever batch, rank, worker or layout it lands in, and a
resumed run rebuilds exactly the batches of the uninterrupted one.

Two layouts of the same examples (`MLMBatch`):
- padded: inputs (B, T) right-padded with <pad>, targets (B, T) with IGNORE_INDEX off the masked
  positions; the model computes every position.
- packed: the sequences concatenated, inputs (N,) with boundaries cu_seqlens (B+1,); targets (M,)
  hold only the masked positions' original tokens, at indices masked_at (M,) of the N tokens, so
  the model applies its LM head there only (see protlm.models.packing).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from protlm.alphabet import Alphabet
from protlm.data.index import FastaIndex
from protlm.data.masking import MLMBatch, collate, collate_packed, masked_example
from protlm.data.sampler import BatchPlan, iter_positions


def example(index: FastaIndex, rec: int, seed: int, epoch: int, max_length: int,
            alphabet: Alphabet, mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_T, targets_T) of one record: random crop, BOS/EOS, masking."""
    rng = np.random.default_rng([seed, epoch, rec])
    seq = alphabet.clean(index[rec].sequence, record=index[rec].id)
    return masked_example(seq, rng, max_length, alphabet, mask_prob)


def make_batch(index: FastaIndex, rows: np.ndarray, plan: BatchPlan, epoch: int, alphabet: Alphabet,
               mask_prob: float, packed: bool) -> MLMBatch:
    """The examples of records `rows` (crops and masks drawn per record) in one layout."""
    pairs = [example(index, int(r), plan.seed, epoch, plan.max_length, alphabet, mask_prob) for r in rows]
    return collate_packed(pairs) if packed else collate(pairs, alphabet)


class RankBatches(IterableDataset):
    """This rank's share of each global batch from a position on: (epoch, batch, MLMBatch).

    The layout follows `plan.packed`.
    """

    def __init__(self, fasta: str, plan: BatchPlan, epoch: int, batch: int, rank: int, world: int,
                 mask_prob: float = 0.15):
        self.fasta, self.plan, self.start = fasta, plan, (epoch, batch)
        self.rank, self.world, self.mask_prob = rank, world, mask_prob

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        index, alphabet, plan = FastaIndex.open(self.fasta), Alphabet(), self.plan
        for k, (epoch, b, batch) in enumerate(iter_positions(plan, *self.start)):
            if k % nworkers != wid:  # the loader takes workers round-robin: order is kept
                continue
            rows = plan.shard(batch, self.rank, self.world)
            yield epoch, b, make_batch(index, rows, plan, epoch, alphabet, self.mask_prob, plan.packed)


def rank_loader(fasta: str, plan: BatchPlan, epoch: int, batch: int, rank: int, world: int,
                num_workers: int = 0, mask_prob: float = 0.15):
    ds = RankBatches(fasta, plan, epoch, batch, rank, world, mask_prob)
    return iter(DataLoader(ds, batch_size=None, num_workers=num_workers))
