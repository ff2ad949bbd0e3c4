"""Global batch indices -> masked token tensors for one rank (crop, encode, mask, pad).

Every random draw is seeded by (seed, epoch, record index), never by a running generator, so a
sequence gets the same crop and mask whatever batch, rank or worker it lands in, and a resumed
run rebuilds exactly the batches of the uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from protlm.alphabet import Alphabet
from protlm.data.index import FastaIndex
from protlm.data.masking import IGNORE_INDEX, mask_tokens
from protlm.data.sampler import BatchPlan, crop_window, iter_positions, shard_rows


def example(index: FastaIndex, rec: int, seed: int, epoch: int, max_length: int,
            alphabet: Alphabet, mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_T, targets_T) of one record: random crop, BOS/EOS, masking."""
    rng = np.random.default_rng([seed, epoch, rec])
    seq = alphabet.clean(index[rec].sequence, record=index[rec].id)
    start, end = crop_window(len(seq), max_length, rng)
    tokens_T = torch.tensor([alphabet.cls_idx, *alphabet.encode(seq[start:end]), alphabet.eos_idx])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    inputs, targets = mask_tokens(tokens_T[None], gen, alphabet, mask_prob=mask_prob)
    return inputs[0], targets[0]


def collate(pairs, alphabet: Alphabet) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to (B, T): inputs with <pad>, targets with IGNORE_INDEX."""
    width = max(len(x) for x, _ in pairs)
    inputs_BT = torch.full((len(pairs), width), alphabet.padding_idx, dtype=torch.long)
    targets_BT = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        inputs_BT[i, : len(x)], targets_BT[i, : len(y)] = x, y
    return inputs_BT, targets_BT


class RankBatches(IterableDataset):
    """This rank's rows of each global batch from a position on: (epoch, batch, inputs, targets)."""

    def __init__(self, fasta: str, plan: BatchPlan, epoch: int, batch: int, rank: int, world: int,
                 mask_prob: float = 0.15):
        self.fasta, self.plan, self.start = fasta, plan, (epoch, batch)
        self.rank, self.world, self.mask_prob = rank, world, mask_prob

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        index, alphabet = FastaIndex.open(self.fasta), Alphabet()
        for k, (epoch, b, batch) in enumerate(iter_positions(self.plan, *self.start)):
            if k % nworkers != wid:  # the loader takes workers round-robin: order is kept
                continue
            rows = shard_rows(batch, self.rank, self.world)
            pairs = [example(index, int(r), self.plan.seed, epoch, self.plan.max_length, alphabet,
                             self.mask_prob) for r in rows]
            yield (epoch, b, *collate(pairs, alphabet))


def rank_loader(fasta: str, plan: BatchPlan, epoch: int, batch: int, rank: int, world: int,
                num_workers: int = 0, mask_prob: float = 0.15):
    ds = RankBatches(fasta, plan, epoch, batch, rank, world, mask_prob)
    return iter(DataLoader(ds, batch_size=None, num_workers=num_workers))


def fixed_batches(fasta: str, plan: BatchPlan, rank: int, world: int, mask_prob: float = 0.15):
    """Validation batches for this rank: fixed order, crops and masks (seed = plan.seed)."""
    index, alphabet = FastaIndex.open(fasta), Alphabet()
    for batch in plan.fixed_batches():
        rows = shard_rows(batch, rank, world)
        if len(rows):
            yield collate([example(index, int(r), plan.seed, 0, plan.max_length, alphabet, mask_prob)
                           for r in rows], alphabet)
