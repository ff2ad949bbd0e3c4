"""Masked perplexity of a model on a FASTA file, reproducible to the last bit.

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
from protlm.data.sampler import pack_batches
from protlm.records import sequence_hash
from protlm.train.batches import MLMBatch, collate_packed, masked_example
from protlm.train.loop import masked_logits

DEFAULT_SEED = 1234  # as data.valid_seed: the validation masks of `protlm train`
DEFAULT_MAX_LENGTH = 1022  # residues; longer sequences get a random (seeded) crop, as in ESM


def has_mlm_head(model: torch.nn.Module) -> bool:
    """True when the model predicts masked tokens (an `lm_head`); encoders such as ProtT5's
    have none, and no masked perplexity."""
    return getattr(model, "lm_head", None) is not None


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

    def batches(self, alphabet: Alphabet) -> Iterator[tuple[int, MLMBatch]]:
        """(sequences in the batch, packed MLMBatch), length-sorted: little work is wasted."""
        costs = np.minimum([len(s) for s in self.sequences], self.max_length) + 2
        order = np.argsort(costs, kind="stable")
        for rows in pack_batches(costs, order, self.toks_per_batch, packed=True):
            pairs = [masked_example(self.sequences[r], record_rng(self.sequences[r], self.seed),
                                    self.max_length, alphabet, self.mask_prob) for r in rows]
            yield len(rows), collate_packed(pairs)


@torch.no_grad()
def masked_perplexity(model: torch.nn.Module, alphabet: Alphabet, plan: MaskPlan,
                      progress: bool = False) -> dict[str, float] | None:
    """{'perplexity', 'cross_entropy', 'masked_tokens', 'sequences'}; None without an MLM head.

    exp(mean cross-entropy) over every masked position of `plan` (see the module docstring).
    """
    if not has_mlm_head(model):
        return None
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses: list[float] = []
    with tqdm(total=len(plan.sequences), desc="perplexity", unit="seq", disable=not progress,
              dynamic_ncols=True) as bar:
        for n, batch in plan.batches(alphabet):
            logits_MV, targets_M = masked_logits(model, batch.to(device), None)
            losses.extend(F.cross_entropy(logits_MV.float(), targets_M, reduction="none").tolist())
            bar.update(n)
    model.train(was_training)
    if not losses:
        return {"perplexity": float("nan"), "cross_entropy": float("nan"), "masked_tokens": 0,
                "sequences": len(plan.sequences)}
    ce = math.fsum(losses) / len(losses)
    return {"perplexity": math.exp(ce), "cross_entropy": ce, "masked_tokens": len(losses),
            "sequences": len(plan.sequences)}
