"""Export a training checkpoint as a compact protlm folder (e.g. the shipped `protlm_small`).

Several checkpoints of one architecture export as the uniform average of their parameters
(stochastic weight averaging over the ends of learning-rate cycles, Izmailov et al. 2018): such
an average can generalise better than its members, but measure it first (for protlm_small it did
not: docs/training.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from protlm.dtypes import STORAGE_CHOICES
from protlm.errors import ConfigError
from protlm.pretrained.protlm_format import load_protlm, read_protlm_config, save_protlm


def average_checkpoints(ckpts: Sequence[str | Path]):
    """The model of `ckpts[0]` with every parameter replaced by its mean over `ckpts` (fp32).

    ConfigError when the checkpoints are not of one architecture; buffers (rotary inv_freq)
    depend on the architecture only, so they are kept as they are."""
    model = load_protlm(ckpts[0])
    params = dict(model.named_parameters())
    for ckpt in ckpts[1:]:
        other = load_protlm(ckpt)
        if other.config != model.config:
            raise ConfigError(f"cannot average {ckpt} with {ckpts[0]}: another architecture "
                              f"({other.config} vs {model.config})")
        with torch.no_grad():
            for name, p in other.named_parameters():
                params[name].add_(p)
    with torch.no_grad():
        for p in params.values():
            p.div_(len(ckpts))
    return model


def export_checkpoint(ckpt: str | Path | Sequence[str | Path], out: str | Path,
                      dtype: str | torch.dtype = "fp16", extra: dict[str, Any] | None = None) -> Path:
    """Parameters cast to `dtype`; buffers (rotary inv_freq) stay fp32 so positions are exact.

    A list of checkpoints exports their average; the metadata (training config, step) is the
    first one's."""
    ckpts = [ckpt] if isinstance(ckpt, (str, Path)) else list(ckpt)
    model = average_checkpoints(ckpts)
    meta = read_protlm_config(ckpts[0])
    keep = {k: v for k, v in meta.items() if k not in ("format", "version", "model", "contact_head_fitted")}
    return save_protlm(model, out, dtype=dtype, extra={**keep, **(extra or {})})


def main(argv=None):
    """python -m protlm.train.export CHECKPOINT [CHECKPOINT ...] OUT_DIR [--dtype fp16|bf16|fp32]"""
    import argparse

    ap = argparse.ArgumentParser(description="Export a training checkpoint (several: their average) "
                                             "as a compact protlm folder.")
    ap.add_argument("checkpoints", nargs="+", metavar="checkpoint")
    ap.add_argument("out")
    ap.add_argument("--dtype", choices=STORAGE_CHOICES, default="fp16")
    args = ap.parse_args(argv)
    ckpts = args.checkpoints
    source = Path(ckpts[0]).name if len(ckpts) == 1 else [str(c) for c in ckpts]  # an average: say of what
    out = export_checkpoint(ckpts, args.out, args.dtype, extra={"exported_from": source})
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(f"{out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    from protlm.cli.main import run_script

    run_script(main)
