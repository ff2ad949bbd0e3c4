"""One dtype vocabulary and one cast, for every command and file writer.

Names: fp32, bf16, fp16 (the long spellings float32, bfloat16, float16 are accepted too), and
for inference only int8 (Linear weights int8 per output channel, activations quantized per call,
everything else fp32: protlm.models.int8) and auto (the fastest of fp32/bf16/int8 measured on
this CPU: protlm.cpu_probe). int8 and auto cannot be stored or trained: `parse_dtype` and
`cast_state` refuse them with a ConfigError.
Casting touches floating-point parameters only: buffers (ESM-2's rotary `inv_freq`) stay fp32,
since rotary positions computed in half precision are wrong past a few hundred residues.
"""

from __future__ import annotations

import torch
from torch import nn

from protlm.errors import ConfigError, InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INFERENCE_ONLY = ("int8", "auto")  # not a dtype of stored weights: see the module docstring
ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
CHOICES = [*DTYPES, *INFERENCE_ONLY, *ALIASES]  # for CLI option lists
STORAGE_CHOICES = [*DTYPES, *ALIASES]  # dtypes weights can be stored in (protlm convert)


def canonical(name: str | torch.dtype) -> str:
    """'float16' -> 'fp16'; a torch.dtype -> its short name."""
    if isinstance(name, torch.dtype):
        for short, dt in DTYPES.items():
            if dt == name:
                return short
        raise InputError(f"unsupported dtype {name}; choose from {list(DTYPES)}")
    short = ALIASES.get(name, name)
    if short not in DTYPES and short not in INFERENCE_ONLY:
        raise InputError(f"unknown dtype {name!r}; choose from {CHOICES}")
    return short


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name; ConfigError for int8/auto, which are not a weight dtype."""
    short = canonical(name)
    if short in INFERENCE_ONLY:
        raise ConfigError(f"dtype {short!r} is for inference only (embed, function, variants, contacts "
                          f"predict); weights are stored and trained in one of {list(DTYPES)}")
    return DTYPES[short]


def cast_parameters_(model: nn.Module, dtype: str | torch.dtype) -> nn.Module:
    """Cast floating-point parameters in place; buffers keep their (fp32) dtype."""
    dt = parse_dtype(dtype)
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dt)
    return model


def cast_state(model: nn.Module, state: dict[str, torch.Tensor], dtype: str | torch.dtype | None
               ) -> dict[str, torch.Tensor]:
    """A state dict for writing: parameters cast to `dtype` (None: as they are), buffers untouched."""
    if dtype is None:
        return state
    dt, buffers = parse_dtype(dtype), {n for n, _ in model.named_buffers()}
    return {k: v if k in buffers or not v.is_floating_point() else v.to(dt) for k, v in state.items()}
