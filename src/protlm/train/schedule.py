"""Learning-rate multipliers (pure functions of the step) for torch's LambdaLR."""

from __future__ import annotations

import math


def lr_multiplier(step: int, kind: str, warmup_steps: int, total_steps: int) -> float:
    """Factor on the peak learning rate at optimiser step `step` (0-based).

    Linear warmup over `warmup_steps`, then "linear" decay to 0 at `total_steps` (ESM-2) or
    "inverse_sqrt" decay (ESM-1b / fairseq: warmup_steps**0.5 / step**0.5).
    """
    s = step + 1  # the first update already uses a non-zero rate
    if warmup_steps > 0 and s <= warmup_steps:
        return s / warmup_steps
    if kind == "linear":
        span = max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - (s - warmup_steps) / span)
    if kind == "inverse_sqrt":
        return math.sqrt(max(1, warmup_steps) / s)
    raise ValueError(f"unknown schedule kind {kind!r}")
