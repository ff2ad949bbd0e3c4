"""Parallelism applied outside the model: DDP / FSDP2, activation checkpointing, compile.

The model code never knows it is distributed; `protlm train` runs the same on one device and
under `torchrun` (the ranks and devices: protlm.runtime.distributed).
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from protlm.errors import ConfigError
from protlm.models.int8 import is_quantized
from protlm.runtime.compile import compile_layers
from protlm.runtime.distributed import Dist
from protlm.train.config import checkpointing_plan, compile_enabled


def _saved_ops() -> set:
    """The ops whose outputs selective checkpointing keeps: matmuls and attention kernels (the
    costly work); everything else in a layer (LayerNorm, GELU, rotary, residual adds, casts) is
    cheap elementwise work, recomputed in backward instead of held."""
    names = ["aten.mm.default", "aten.addmm.default", "aten.bmm.default",
             "aten._scaled_dot_product_flash_attention.default",
             "aten._scaled_dot_product_efficient_attention.default",
             "aten._scaled_dot_product_cudnn_attention.default",
             "aten._scaled_dot_product_flash_attention_for_cpu.default",
             "torch_attn._varlen_attn.default",  # torch.nn.attention.varlen.varlen_attn
             "flash_attn._flash_attn_varlen_forward.default"]  # flash-attn >= 2.6 registers its ops
    ops = set()
    for name in names:
        namespace, op, overload = name.split(".")
        try:
            ops.add(getattr(getattr(getattr(torch.ops, namespace), op), overload))
        except (AttributeError, RuntimeError):  # not in this build (flash_attn absent, no varlen)
            continue
    return ops


def _selective_context():
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    saved = _saved_ops()

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_activation_checkpointing(model: nn.Module, every: int = 1, selective: bool = False) -> None:
    """Recompute transformer layers in backward; parameter names stay unchanged.

    every=k: the k-th, 2k-th, ... layers are recomputed whole (k=1: all of them); the others keep
    their activations, trading memory for less recomputation. selective: every layer, keeping
    the outputs of matmuls and attention and recomputing only the elementwise work between them.
    Dropout masks are redrawn from the saved RNG state, so gradients equal the plain ones.
    """
    if every < 1:
        return
    for i, layer in enumerate(model.layers):
        if (i + 1) % every:
            continue
        inner = layer.forward
        extra = {"context_fn": _selective_context} if selective else {}

        @functools.wraps(inner)
        def wrapped(*args, _inner=inner, _extra=extra, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **_extra, **kwargs)

        layer.forward = wrapped


def parallelize(model: nn.Module, mode: str, d: Dist, device: torch.device,
                activation_checkpointing: bool | int | str = False, compile: bool | str = False) -> nn.Module:
    """Wrap `model` for training on `d.world` ranks. mode: auto | none | ddp | fsdp.

    activation_checkpointing and compile take the values of parallel.activation_checkpointing
    and parallel.compile (see protlm.train.config); compile "auto" means on CUDA only.
    A model quantized for int8 inference is refused (ConfigError): its weights have no gradients.
    """
    if is_quantized(model):
        raise ConfigError("this model is quantized to int8 (inference only) and cannot be trained; "
                          "train the fp32 model and quantize it for inference (--dtype int8)")
    model.to(device)
    every, selective = checkpointing_plan(activation_checkpointing)
    apply_activation_checkpointing(model, every, selective)
    if compile_enabled(compile, device.type):
        compile_layers(model)  # after checkpointing, before FSDP, as torchtitan orders them
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
