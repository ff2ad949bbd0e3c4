"""Atomic training checkpoints: model (protlm format), optimiser, scheduler, RNG, data position.

Layout under `<output>/checkpoints/`:
    step_000200/config.json + model.safetensors   protlm format: loads with load_model_and_alphabet
    step_000200/trainer.pt                        optimiser, scheduler, RNG, position (tensors only)
    latest                                        name of the newest complete checkpoint
A checkpoint is written into a temporary folder and renamed, and `latest` is replaced after
that, so a kill at any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
    set_model_state_dict, set_optimizer_state_dict,
)

from protlm.io import atomic_path, atomic_write
from protlm.models import build_model
from protlm.pretrained.protlm_format import load_protlm_state, read_protlm_config, save_protlm
from protlm.pretrained.registry import family_of

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def latest(ckpt_root: Path) -> Path | None:
    pointer = ckpt_root / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    return path if (path / "trainer.pt").is_file() else None


def has_checkpoints(ckpt_root: Path) -> bool:
    """Whether a run has written a checkpoint (complete or not) under `ckpt_root`."""
    return (ckpt_root / "latest").exists() or any(ckpt_root.glob("step_*"))


def model_config(path: Path):
    """The model config a checkpoint folder was written with, from its config.json alone."""
    from protlm.pretrained.checkpoint import CheckpointError

    meta = read_protlm_config(path)
    try:
        return family_of(meta.get("family", "esm")).config_cls.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config.json is not a model description ({type(e).__name__}: {e})") from None


def gather_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimiser state; collective under DDP/FSDP: call on all ranks."""
    return get_model_state_dict(model, options=_FULL), get_optimizer_state_dict(model, optimizer, options=_FULL)


def save_checkpoint(ckpt_root: Path, step: int, model_state: dict, optim_state: dict,
                    inner_model: nn.Module, scheduler, position: dict[str, int],
                    extra: dict[str, Any], keep_last: int = 2) -> Path:
    """Write step_<step>/ atomically (rank 0 only) and point `latest` at it."""
    name = f"step_{step:07d}"
    final, tmp = ckpt_root / name, ckpt_root / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    export = build_model(inner_model.config, inner_model.alphabet)
    export.load_state_dict(model_state)
    save_protlm(export, tmp, extra={**extra, "step": step})
    trainer = {
        "optimizer": optim_state,
        "scheduler": scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "position": dict(position),
        "step": step,
    }
    with atomic_path(tmp / "trainer.pt") as t:  # fsynced like the model files
        torch.save(trainer, t)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a folder: atomic_path is for files; `latest` is what readers trust
    atomic_write(ckpt_root / "latest", name + "\n")
    _prune(ckpt_root, keep_last)
    return final


def _prune(ckpt_root: Path, keep_last: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """Restore every rank from a checkpoint folder; returns the trainer dict (step, position)."""
    state = load_protlm_state(path / "model.safetensors")
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, trainer["optimizer"],
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["rng_cpu"])
    if torch.cuda.is_available() and trainer["rng_cuda"]:
        torch.cuda.set_rng_state_all(trainer["rng_cuda"])
    return trainer
