"""Held-out perplexity of a model next to the amino-acid frequency baseline, on the same positions.

Both are exp(mean cross-entropy) over exactly the masked positions of the held-out split (split
by record-ID hash; crops and masks of the shared protocol, protlm.evaluate.perplexity, seeded by
data.valid_seed and each sequence's hash), or of every record of another FASTA. The baseline
predicts every masked residue from the residue frequencies of the training split, ignoring
context: a model that has learnt anything about proteins must beat it.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from protlm.alphabet import Alphabet
from protlm.data.index import FastaIndex
from protlm.data.masking import IGNORE_INDEX
from protlm.evaluate.perplexity import MaskPlan
from protlm.runtime.distributed import Dist
from protlm.train.config import TrainConfig
from protlm.train.loop import evaluate, held_out_plan, make_plans


def residue_log_probs(index: FastaIndex, records: np.ndarray, alphabet: Alphabet) -> torch.Tensor:
    """(V,) log-frequencies of residue tokens over `records` (add-one smoothed on residues)."""
    counts = Counter()
    for r in records:
        counts.update(index[int(r)].sequence)
    freq = torch.zeros(len(alphabet), dtype=torch.float64)
    for tok in alphabet.standard_toks:
        freq[alphabet.get_idx(tok)] = counts.get(tok, 0) + 1
    return (freq / freq.sum()).clamp_min(1e-300).log()


def eval_plan(cfg: TrainConfig, fasta: str | None = None) -> MaskPlan:
    """The evaluation positions: the config's held-out split, or every record of another FASTA
    (e.g. other protein families), with the config's [data] crop, masking rate and seed."""
    if fasta is None:
        return make_plans(cfg, FastaIndex.open(cfg.data.train_fasta))[1]
    index = FastaIndex.open(fasta)
    return held_out_plan(cfg, index, range(len(index)))


def frequency_baseline(cfg: TrainConfig, fasta: str | None = None) -> dict[str, float]:
    """Perplexity of the training-split residue frequencies on the evaluation masked positions
    (the held-out split, or every record of `fasta`)."""
    index, alphabet = FastaIndex.open(cfg.data.train_fasta), Alphabet()
    train_plan, _ = make_plans(cfg, index)
    logp_V = residue_log_probs(index, train_plan.indices, alphabet)
    total, n = 0.0, 0
    for _, batch in eval_plan(cfg, fasta).batches(alphabet):
        t = batch.targets[batch.targets != IGNORE_INDEX]  # (M,) packed: the masked positions
        total -= float(logp_V[t].sum())
        n += t.numel()
    return {"baseline_ce": total / n, "baseline_ppl": math.exp(total / n), "valid_tokens": n}


def model_perplexity(model: torch.nn.Module, cfg: TrainConfig, fasta: str | None = None) -> dict[str, float]:
    """Masked perplexity of `model` on the held-out split (or every record of `fasta`)."""
    return evaluate(model, eval_plan(cfg, fasta), Dist())
