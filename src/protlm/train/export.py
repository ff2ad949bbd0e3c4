"""Export a training checkpoint as a compact protlm folder (e.g. the shipped `protlm_small`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from protlm.pretrained.protlm_format import load_protlm, read_protlm_config, save_protlm


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: torch.dtype = torch.float16,
                      extra: dict[str, Any] | None = None) -> Path:
    """Parameters cast to `dtype`; buffers (rotary inv_freq) stay fp32 so positions are exact."""
    model = load_protlm(ckpt)
    for p in model.parameters():
        p.data = p.data.to(dtype)
    meta = read_protlm_config(ckpt)
    keep = {k: v for k, v in meta.items() if k not in ("format", "version", "model")}
    return save_protlm(model, out, dtype=None, extra={**keep, **(extra or {})})
