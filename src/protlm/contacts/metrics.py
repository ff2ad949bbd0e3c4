"""Contact precision as in the ESM papers (pure numpy functions).

Follows fair-esm's `compute_precisions` (examples/contact_prediction.ipynb): pairs of the upper
triangle with min_sep <= j - i < max_sep and both residues observed are ranked by score; the
precision at k is the fraction of true contacts among the top k, with k = floor(L * fraction)
over the full sequence length L. When fewer than k valid pairs exist the missing ones count as
wrong (fair-esm pads with zeros), so precisions stay comparable across proteins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# name -> (min separation, max separation or None); |i-j| in [min, max)
RANGES = {"short": (6, 12), "medium": (12, 24), "long": (24, None)}
FRACTIONS = {"P@L": 1.0, "P@L/2": 0.5, "P@L/5": 0.2}


def precision_at(scores_LL: np.ndarray, contacts_LL: np.ndarray, k: int,
                 min_sep: int = 6, max_sep: int | None = None) -> float:
    """Fraction of true contacts among the k highest-scoring valid pairs.

    `contacts_LL`: 1 contact, 0 none, negative = unobserved (never ranked).
    """
    L = scores_LL.shape[0]
    if scores_LL.shape != (L, L) or contacts_LL.shape != (L, L):
        raise ValueError(f"maps must both be (L, L): got {scores_LL.shape} and {contacts_LL.shape}")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    i, j = np.triu_indices(L, min_sep)
    keep = np.ones(i.shape, bool) if max_sep is None else (j - i) < max_sep
    i, j = i[keep], j[keep]
    truth = contacts_LL[i, j]
    valid = truth >= 0
    s, t = scores_LL[i, j][valid], truth[valid]
    top = np.argsort(-s, kind="stable")[:k]
    return float(t[top].sum()) / k


def contact_precisions(scores_LL: np.ndarray, contacts_LL: np.ndarray) -> dict[str, float]:
    """{'long P@L': ..., 'long P@L/5': ..., ...} for every range in RANGES and fraction in FRACTIONS."""
    L = scores_LL.shape[0]
    out = {}
    for rname, (lo, hi) in RANGES.items():
        for fname, frac in FRACTIONS.items():
            k = max(1, math.floor(L * frac))
            out[f"{rname} {fname}"] = precision_at(scores_LL, contacts_LL, k, lo, hi)
    return out


@dataclass(frozen=True)
class PrecisionTable:
    """Per-protein precisions plus their unweighted mean (each protein counts once)."""

    rows: dict[str, dict[str, float]]

    @property
    def columns(self) -> list[str]:
        return [f"{r} {f}" for r in RANGES for f in FRACTIONS]

    def mean(self) -> dict[str, float]:
        return {c: float(np.mean([row[c] for row in self.rows.values()])) for c in self.columns}

    def to_markdown(self) -> str:
        head = "| protein | L | " + " | ".join(self.columns) + " |"
        sep = "|---|---|" + "---|" * len(self.columns)
        lines = [head, sep]
        for name, row in self.rows.items():
            lines.append(f"| {name} | {int(row.get('L', 0))} | " + " | ".join(f"{row[c]:.3f}" for c in self.columns) + " |")
        m = self.mean()
        lines.append(f"| **mean ({len(self.rows)})** | | " + " | ".join(f"{m[c]:.3f}" for c in self.columns) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        lines = ["protein,L," + ",".join(self.columns)]
        for name, row in self.rows.items():
            lines.append(f"{name},{int(row.get('L', 0))}," + ",".join(f"{row[c]:.6f}" for c in self.columns))
        m = self.mean()
        lines.append("mean,," + ",".join(f"{m[c]:.6f}" for c in self.columns))
        return "\n".join(lines) + "\n"
