"""Whole-protein vectors from per-token representations (pure functions) and a batched forward.

Token layout (fair-esm): BOS at position 0, residues at 1..n, EOS at n+1, then padding; ProtT5
has no BOS (`offset=0`: residues at 0..n-1, `</s>` at n). Pooling never looks at BOS, EOS or
padding, so a vector does not depend on what it was batched with.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from protlm.alphabet import Alphabet
from protlm.errors import InputError

POOLINGS = ("mean", "bos", "max")


def residue_mask(lengths_B: torch.Tensor, T: int, offset: int = 1) -> torch.Tensor:
    """(B, T) bool: True at the residue positions offset..offset+n-1 of each row."""
    pos_T = torch.arange(T, device=lengths_B.device) - offset
    return (pos_T >= 0) & (pos_T < lengths_B[:, None])


def mean_pool(x_BTD: torch.Tensor, lengths_B: torch.Tensor, offset: int = 1) -> torch.Tensor:
    """(B, T, D) -> (B, D): mean over residues only (fair-esm's `mean_representations`)."""
    m_BT = residue_mask(lengths_B, x_BTD.shape[1], offset).to(x_BTD.dtype)
    return (x_BTD * m_BT[..., None]).sum(1) / lengths_B[:, None].to(x_BTD.dtype)


def bos_pool(x_BTD: torch.Tensor, lengths_B: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) -> (B, D): the BOS (<cls>) token's vector."""
    return x_BTD[:, 0]


def max_pool(x_BTD: torch.Tensor, lengths_B: torch.Tensor, offset: int = 1) -> torch.Tensor:
    """(B, T, D) -> (B, D): per-feature max over residues (BOS/EOS/padding set to -inf first)."""
    m_BT = residue_mask(lengths_B, x_BTD.shape[1], offset)
    return x_BTD.masked_fill(~m_BT[..., None], float("-inf")).amax(1)


def pool(x_BTD: torch.Tensor, lengths_B: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Dispatch to mean_pool / bos_pool / max_pool by name."""
    fns = {"mean": mean_pool, "bos": bos_pool, "max": max_pool}
    if how not in fns:
        raise InputError(f"pooling must be one of {POOLINGS}, got {how!r}")
    return fns[how](x_BTD, lengths_B)


def resolve_layer(layer: int, num_layers: int) -> int:
    """fair-esm numbering: 0 = embeddings, num_layers = last; negatives count from the end."""
    from protlm.models.esm import resolve_layers

    return resolve_layers([layer], num_layers)[0]


def embed_sequences(model, alphabet: Alphabet, seqs: Sequence[str], layer: int = -1,
                    pooling: str = "mean", toks_per_batch: int = 4096,
                    progress: bool = False) -> np.ndarray:
    """(N, D) float32 pooled vectors, in input order; packed token-budget batches (protlm.engine).

    Sequences over the model's limit are truncated to their first `max_sequence_length`
    residues, as fair-esm's extract.py does (the function heads see whole-protein summaries).
    """
    from tqdm import tqdm

    from protlm.engine import Engine

    if pooling not in POOLINGS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    engine = Engine(model, alphabet, [layer], toks_per_batch=toks_per_batch, long="truncate")
    out = np.zeros((len(seqs), model.config.embed_dim), dtype=np.float32)
    bar = tqdm(total=len(seqs), desc="embed", unit="seq", disable=not progress)
    for batch, recs in engine.run(seqs, {pooling}):
        out[batch] = torch.stack([r[pooling][0] for r in recs]).numpy()
        bar.update(len(batch))
    bar.close()
    return out
