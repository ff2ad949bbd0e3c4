"""Pure functions that turn attention maps into contact features."""

from __future__ import annotations

import torch


def symmetrize(x: torch.Tensor) -> torch.Tensor:
    """x + x^T over the last two dimensions."""
    return x + x.transpose(-1, -2)


def apc(x: torch.Tensor) -> torch.Tensor:
    """Average product correction (Dunn et al. 2008) over the last two dimensions.

    Removes the background coupling a_i * a_j / a expected from row and column sums alone.
    """
    a1 = x.sum(-1, keepdim=True)
    a2 = x.sum(-2, keepdim=True)
    a12 = x.sum((-1, -2), keepdim=True)
    return x - a1 * a2 / a12
