"""Overlapping windows for proteins longer than a model's limit (pure functions).

Per-residue outputs of each window are summed into place and divided by how many windows
cover each residue (pairs of residues, for contact maps).
"""

from __future__ import annotations

import math

import torch


def window_spans(length: int, window: int, overlap: int | None = None) -> list[tuple[int, int]]:
    """[start, end) spans of at most `window` residues covering range(length).

    Neighbouring spans share at least `overlap` residues (default: half a window) and the
    spans are spread evenly, so the first starts at 0 and the last ends at `length`.
    """
    if window <= 0:
        raise ValueError("window must be positive")
    if length <= window:
        return [(0, length)]
    overlap = window // 2 if overlap is None else overlap
    if not 0 <= overlap < window:
        raise ValueError(f"overlap {overlap} must be in [0, window={window})")
    n = math.ceil((length - overlap) / (window - overlap))
    starts = [round(i * (length - window) / (n - 1)) for i in range(n)]
    return [(s, s + window) for s in starts]


def merge_1d(parts: list[torch.Tensor], spans: list[tuple[int, int]], length: int) -> torch.Tensor:
    """Average per-residue outputs (each (span_len, ...)) over overlaps -> (length, ...)."""
    out = parts[0].new_zeros((length, *parts[0].shape[1:]))
    count = parts[0].new_zeros(length)
    for p, (s, e) in zip(parts, spans):
        out[s:e] += p
        count[s:e] += 1
    return out / count.view(-1, *([1] * (out.dim() - 1)))


def merge_2d(parts: list[torch.Tensor], spans: list[tuple[int, int]], length: int) -> torch.Tensor:
    """Average pairwise maps (each (span_len, span_len)) over overlaps -> (length, length).

    Pairs never seen together in one window (far apart in a long protein) get 0.
    """
    out = parts[0].new_zeros((length, length))
    count = parts[0].new_zeros((length, length))
    for p, (s, e) in zip(parts, spans):
        out[s:e, s:e] += p
        count[s:e, s:e] += 1
    return torch.where(count > 0, out / count.clamp(min=1), out)
