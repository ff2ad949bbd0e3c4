"""Whole-protein vectors from residue rows (pure functions): the one pooling of every command.

The inference engine hands over the residue rows of a batch only (no BOS, EOS or padding),
whatever its layout, with the sequence each row belongs to, so a vector never depends on what
it was batched with: (..., R, D) rows, `seq_R` (R,) long, B sequences. "bos" is not a reduction:
it is the BOS token's row, which the engine takes where the layout puts it.
"""

from __future__ import annotations

import torch

from protlm.errors import InputError

POOLINGS = ("mean", "bos", "max")


def mean_pool(x_XRD: torch.Tensor, seq_R: torch.Tensor, lengths_B: torch.Tensor) -> torch.Tensor:
    """(..., R, D) -> (..., B, D): the mean of each sequence's rows (fair-esm's `mean_representations`)."""
    B = lengths_B.numel()
    sums = x_XRD.new_zeros(*x_XRD.shape[:-2], B, x_XRD.shape[-1]).index_add_(-2, seq_R, x_XRD)
    return sums / lengths_B[:, None].to(x_XRD.dtype)


def max_pool(x_XRD: torch.Tensor, seq_R: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """(..., R, D) -> (..., B, D): the per-feature max of each sequence's rows."""
    out = x_XRD.new_full((*x_XRD.shape[:-2], num_sequences, x_XRD.shape[-1]), float("-inf"))
    index = seq_R.view(*([1] * (x_XRD.ndim - 2)), -1, 1).expand_as(x_XRD)
    return out.scatter_reduce_(-2, index, x_XRD, "amax")


def pool(x_XRD: torch.Tensor, seq_R: torch.Tensor, lengths_B: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """mean_pool or max_pool by name; `lengths_B` (B,) the rows of each sequence."""
    if how == "mean":
        return mean_pool(x_XRD, seq_R, lengths_B)
    if how == "max":
        return max_pool(x_XRD, seq_R, lengths_B.numel())
    raise InputError(f"pooling must be one of {[p for p in POOLINGS if p != 'bos']} over residues, got {how!r}")


def residue_rows(lengths_B: torch.Tensor, starts_B: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(token index (R,), sequence (R,)) of the residues of a flat token axis: sequence b's
    residues are tokens starts_B[b] .. starts_B[b] + lengths_B[b] - 1 of `num_tokens`."""
    B = lengths_B.numel()
    seq_R = torch.repeat_interleave(torch.arange(B, device=lengths_B.device), lengths_B)
    first_R = torch.repeat_interleave(starts_B - torch.cumsum(lengths_B, 0) + lengths_B, lengths_B)
    return first_R + torch.arange(seq_R.numel(), device=lengths_B.device), seq_R


__all__ = ["POOLINGS", "mean_pool", "max_pool", "pool", "residue_rows"]
