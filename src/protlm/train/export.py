"""Export a training checkpoint as a compact protlm folder (e.g. the shipped `protlm_small`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from protlm.dtypes import CHOICES
from protlm.pretrained.protlm_format import load_protlm, read_protlm_config, save_protlm


def export_checkpoint(ckpt: str | Path, out: str | Path, dtype: str | torch.dtype = "fp16",
                      extra: dict[str, Any] | None = None) -> Path:
    """Parameters cast to `dtype`; buffers (rotary inv_freq) stay fp32 so positions are exact."""
    model = load_protlm(ckpt)
    meta = read_protlm_config(ckpt)
    keep = {k: v for k, v in meta.items() if k not in ("format", "version", "model", "contact_head_fitted")}
    return save_protlm(model, out, dtype=dtype, extra={**keep, **(extra or {})})


def main(argv=None):
    """python -m protlm.train.export CHECKPOINT OUT_DIR [--dtype fp16|bf16|fp32]"""
    import argparse

    ap = argparse.ArgumentParser(description="Export a training checkpoint as a compact protlm folder.")
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=CHOICES, default="fp16")
    args = ap.parse_args(argv)
    out = export_checkpoint(args.checkpoint, args.out, args.dtype, extra={"exported_from": Path(args.checkpoint).name})
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(f"{out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
