"""Masked perplexity: the one protocol of protlm, used by `protlm evaluate`, by `protlm train`'s
validation and by scripts/eval_perplexity.py, so each gives the same figure for the same model
and sequences.

The ESM protocol: 15% of the residues of each sequence are selected, 80% of those become <mask>,
10% a random residue, 10% stay; the perplexity is exp(mean cross-entropy) over the selected
positions. Each record's crop and masks are drawn from a generator seeded by (seed, SHA-256 of
its sequence) alone, so they do not depend on the file's order, on the batches a record lands in
or on which other records are evaluated; the cross-entropies are summed with `math.fsum`
(correctly rounded, so in any order). Two runs, or runs with different batch sizes, give the same
figure whenever the model computes each sequence's logits the same way (packed batches: no
padding, attention within each sequence).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from protlm.alphabet import Alphabet
from protlm.data.batching import budget_batches
from protlm.data.masking import MLMBatch, collate_packed, masked_example, masked_logits
from protlm.io import sequence_hash
from protlm.models.encoder import has_mlm_head
from protlm.runtime.distributed import Dist, all_reduce_sum

DEFAULT_SEED = 1234  # as data.valid_seed of `protlm train`
DEFAULT_MAX_LENGTH = 1022  # residues; longer sequences get a random (seeded) crop, as in ESM


def record_rng(sequence: str, seed: int) -> np.random.Generator:
    """The generator of one record's crop and masks: a function of (seed, sequence) only."""
    return np.random.default_rng([seed, int(sequence_hash(sequence)[:16], 16)])


def subsample(sequences: Sequence[str], n: int | None) -> list[int]:
    """Indices of `n` sequences picked by the smallest sequence hash (a fixed pseudo-random sample,
    independent of file order), in file order; every index when n is None or >= len."""
    if n is None or n >= len(sequences):
        return list(range(len(sequences)))
    ranked = sorted(range(len(sequences)), key=lambda i: (sequence_hash(sequences[i]), i))
    return sorted(ranked[:n])


@dataclass(frozen=True)
class MaskPlan:
    """What is evaluated: clean sequences, seed, crop length, masking rate, token budget."""

    sequences: list[str]
    seed: int = DEFAULT_SEED
    max_length: int = DEFAULT_MAX_LENGTH
    mask_prob: float = 0.15
    toks_per_batch: int = 8192  # real tokens per packed batch (does not change the result)

    def batches(self, alphabet: Alphabet, rank: int = 0, world: int = 1) -> Iterator[tuple[int, MLMBatch]]:
        """(sequences in the global batch, this rank's packed MLMBatch), length-sorted: little
        work is wasted. Every batch has rows for every rank (rows rank::world), so all ranks run
        the same number of forwards, as FSDP needs."""
        costs = np.minimum([len(s) for s in self.sequences], self.max_length) + 2
        order = np.argsort(costs, kind="stable")
        for rows in budget_batches(costs, self.toks_per_batch, packed=True, order=order, min_seqs=world):
            pairs = [masked_example(self.sequences[r], record_rng(self.sequences[r], self.seed),
                                    self.max_length, alphabet, self.mask_prob) for r in rows[rank::world]]
            yield len(rows), collate_packed(pairs)


@torch.no_grad()
def masked_perplexity(model: torch.nn.Module, alphabet: Alphabet, plan: MaskPlan, progress: bool = False,
                      d: Dist = Dist(), autocast_dtype=None) -> dict[str, float] | None:
    """{'perplexity', 'cross_entropy', 'masked_tokens', 'sequences'}; None without an MLM head.

    exp(mean cross-entropy) over every masked position of `plan` (see the module docstring).
    With several ranks (`d`, torchrun) each computes its rows of every batch and the sums are
    all-reduced: every rank returns the figure (equal to one process's up to float64 rounding).
    `model` may be wrapped (DDP, FSDP).
    """
    if not has_mlm_head(getattr(model, "module", model)):
        return None
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses: list[float] = []
    with tqdm(total=len(plan.sequences), desc="perplexity", unit="seq", disable=not progress,
              dynamic_ncols=True) as bar:
        for n, batch in plan.batches(alphabet, d.rank, d.world):
            logits_MV, targets_M = masked_logits(model, batch.to(device), autocast_dtype)
            losses.extend(F.cross_entropy(logits_MV.float(), targets_M, reduction="none").tolist())
            bar.update(n)
    model.train(was_training)
    total = all_reduce_sum(torch.tensor([math.fsum(losses), len(losses)], dtype=torch.float64, device=device), d)
    ce_sum, count = total.tolist()
    if not count:
        return {"perplexity": float("nan"), "cross_entropy": float("nan"), "masked_tokens": 0,
                "sequences": len(plan.sequences)}
    ce = ce_sum / count
    return {"perplexity": math.exp(ce), "cross_entropy": ce, "masked_tokens": int(count),
            "sequences": len(plan.sequences)}
