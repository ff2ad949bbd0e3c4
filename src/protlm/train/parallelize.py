"""Parallelism applied outside the model: process group, DDP / FSDP2, activation checkpointing.

The model code never knows it is distributed; `protlm train` runs the same on one device and
under `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(kind: str, d: Dist) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device(kind)


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer layer in backward; parameter names stay unchanged."""
    for layer in model.layers:
        inner = layer.forward

        @functools.wraps(inner)
        def wrapped(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        layer.forward = wrapped


def parallelize(model: nn.Module, mode: str, d: Dist, device: torch.device,
                activation_checkpointing: bool = False) -> nn.Module:
    """Wrap `model` for training on `d.world` ranks. mode: auto | none | ddp | fsdp."""
    model.to(device)
    if activation_checkpointing:
        apply_activation_checkpointing(model)
    if mode == "auto":
        mode = "ddp" if d.world > 1 else "none"
    if mode == "none" or d.world == 1 and mode == "ddp":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard each layer, then the root (embeddings, tied LM head, final LN).
        for layer in model.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}")


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)
