"""Held-out perplexity of a model next to the amino-acid frequency baseline, on the same positions.

Both are exp(mean cross-entropy) over exactly the masked positions of the held-out split (split
by record-ID hash, crops and masks fixed by data.valid_seed). The baseline predicts every masked
residue from the residue frequencies of the training split, ignoring context: a model that has
learnt anything about proteins must beat it.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from protlm.alphabet import Alphabet
from protlm.data.index import FastaIndex
from protlm.data.masking import IGNORE_INDEX
from protlm.train.batches import fixed_batches
from protlm.train.config import TrainConfig
from protlm.train.loop import evaluate, make_plans
from protlm.data.sampler import BatchPlan
from protlm.train.parallelize import Dist


def residue_log_probs(index: FastaIndex, records: np.ndarray, alphabet: Alphabet) -> torch.Tensor:
    """(V,) log-frequencies of residue tokens over `records` (add-one smoothed on residues)."""
    counts = Counter()
    for r in records:
        counts.update(index[int(r)].sequence)
    freq = torch.zeros(len(alphabet), dtype=torch.float64)
    for tok in alphabet.standard_toks:
        freq[alphabet.get_idx(tok)] = counts.get(tok, 0) + 1
    return (freq / freq.sum()).clamp_min(1e-300).log()


def eval_plan(cfg: TrainConfig, fasta: str | None = None) -> tuple[str, BatchPlan]:
    """(FASTA, plan) of the evaluation positions: the config's held-out split, or every record
    of another FASTA (e.g. other protein families), with crops and masks fixed by data.valid_seed."""
    if fasta is None:
        return cfg.data.train_fasta, make_plans(cfg, FastaIndex.open(cfg.data.train_fasta))[1]
    index, d = FastaIndex.open(fasta), cfg.data
    plan = BatchPlan(np.arange(len(index)), np.asarray(index.lengths), d.toks_per_batch, d.max_length,
                     d.valid_seed, d.min_seqs, d.packed)
    return fasta, plan


def frequency_baseline(cfg: TrainConfig, fasta: str | None = None) -> dict[str, float]:
    """Perplexity of the training-split residue frequencies on the evaluation masked positions
    (the held-out split, or every record of `fasta`)."""
    index, alphabet = FastaIndex.open(cfg.data.train_fasta), Alphabet()
    train_plan, _ = make_plans(cfg, index)
    logp_V = residue_log_probs(index, train_plan.indices, alphabet)
    total, n = 0.0, 0
    for batch in fixed_batches(*eval_plan(cfg, fasta), 0, 1, cfg.data.mask_prob):
        t = batch.targets[batch.targets != IGNORE_INDEX]  # (B, T) padded or (M,) packed
        total -= float(logp_V[t].sum())
        n += t.numel()
    return {"baseline_ce": total / n, "baseline_ppl": math.exp(total / n), "valid_tokens": n}


def model_perplexity(model: torch.nn.Module, cfg: TrainConfig, fasta: str | None = None) -> dict[str, float]:
    """Masked perplexity of `model` on the held-out split (or every record of `fasta`)."""
    device = next(model.parameters()).device
    return evaluate(model, *eval_plan(cfg, fasta), Dist(), device, None, cfg.data.mask_prob)
