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

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from protlm.alphabet import Alphabet
from protlm.data.index import FastaIndex
from protlm.data.masking import IGNORE_INDEX, mask_tokens
from protlm.data.sampler import BatchPlan, crop_window, iter_positions
from protlm.models.layout import cu_seqlens_from_lengths


class MLMBatch(NamedTuple):
    """One micro-batch, padded (cu_seqlens None) or packed; see the module docstring."""

    inputs: torch.Tensor  # (B, T) padded | (N,) packed
    targets: torch.Tensor  # (B, T) with IGNORE_INDEX | (M,) masked positions only
    cu_seqlens: torch.Tensor | None = None  # (B+1,) int32, packed only
    masked_at: torch.Tensor | None = None  # (M,) long indices into inputs, packed only

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def num_tokens(self, padding_idx: int) -> int:
        """Real (non-padding) tokens, BOS/EOS included."""
        return self.inputs.numel() if self.packed else int(self.inputs.ne(padding_idx).sum())

    def num_masked(self) -> int:
        return int(self.targets.ne(IGNORE_INDEX).sum())

    def to(self, device, non_blocking: bool = False) -> "MLMBatch":
        return MLMBatch(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in self))


def example(index: FastaIndex, rec: int, seed: int, epoch: int, max_length: int,
            alphabet: Alphabet, mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_T, targets_T) of one record: random crop, BOS/EOS, masking."""
    rng = np.random.default_rng([seed, epoch, rec])
    seq = alphabet.clean(index[rec].sequence, record=index[rec].id)
    return masked_example(seq, rng, max_length, alphabet, mask_prob)


def masked_example(seq: str, rng: np.random.Generator, max_length: int, alphabet: Alphabet,
                   mask_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_T, targets_T) of a clean sequence: crop and masks drawn from `rng` alone."""
    start, end = crop_window(len(seq), max_length, rng)
    bos = [alphabet.cls_idx] if alphabet.prepend_bos else []  # CARP: neither BOS nor EOS
    eos = [alphabet.eos_idx] if alphabet.append_eos else []
    tokens_T = torch.tensor([*bos, *alphabet.encode(seq[start:end]), *eos])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    inputs, targets = mask_tokens(tokens_T[None], gen, alphabet, mask_prob=mask_prob)
    return inputs[0], targets[0]


def collate(pairs, alphabet: Alphabet) -> MLMBatch:
    """Pad to (B, T): inputs with <pad>, targets with IGNORE_INDEX."""
    width = max(len(x) for x, _ in pairs)
    inputs_BT = torch.full((len(pairs), width), alphabet.padding_idx, dtype=torch.long)
    targets_BT = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        inputs_BT[i, : len(x)], targets_BT[i, : len(y)] = x, y
    return MLMBatch(inputs_BT, targets_BT)


def collate_packed(pairs) -> MLMBatch:
    """Concatenate to (N,) with boundaries; keep the masked positions' targets only."""
    inputs_N = torch.cat([x for x, _ in pairs])
    targets_N = torch.cat([y for _, y in pairs])
    masked_at = targets_N.ne(IGNORE_INDEX).nonzero().squeeze(1)  # (M,), found here, not on the GPU
    cu_seqlens = cu_seqlens_from_lengths(torch.tensor([len(x) for x, _ in pairs]))
    return MLMBatch(inputs_N, targets_N[masked_at], cu_seqlens, masked_at)


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


def fixed_batches(fasta: str, plan: BatchPlan, rank: int, world: int, mask_prob: float = 0.15):
    """Validation batches (MLMBatch) for this rank: fixed order, crops and masks (seed = plan.seed)."""
    index, alphabet = FastaIndex.open(fasta), Alphabet()
    for batch in plan.fixed_batches():
        rows = plan.shard(batch, rank, world)
        if len(rows):
            yield make_batch(index, rows, plan, 0, alphabet, mask_prob, plan.packed)
