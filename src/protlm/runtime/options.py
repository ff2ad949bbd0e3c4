"""The options every inference command shares, built once per command (protlm.cli.options).

`InferenceOptions` says which model runs where and how: device, precision, token budget per
batch, what happens to sequences over the model's limit, progress bars, characters outside the
alphabet. The same defaults hold for every command (`embed`, `function`, `variants`,
`contacts predict`, `evaluate`, `serve`): CUDA when it is available, fp32, 4096 tokens per
batch, long sequences truncated (each command documents what `long` means for it).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from protlm.dtypes import canonical
from protlm.errors import InputError

LONG_MODES = ("truncate", "window", "error")


@dataclass(frozen=True, kw_only=True)
class InferenceOptions:
    model: str | None = None  # published name or checkpoint path (None: a model given in memory)
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str = "fp32"  # fp32 | bf16 | fp16 | int8 | auto (protlm.runtime.precision)
    toks_per_batch: int = 4096  # tokens per forward (real tokens when packed)
    long: str = "truncate"  # sequences over the model limit: truncate | window | error
    progress: bool = True  # progress bars on stderr
    unknown: str | None = None  # e.g. 'X': replaces characters outside the alphabet (else an error)

    def __post_init__(self):
        if self.long not in LONG_MODES:
            raise InputError(f"--long must be one of {LONG_MODES}, got {self.long!r}")
        if self.toks_per_batch <= 0:
            raise InputError(f"--toks-per-batch must be positive, got {self.toks_per_batch}")
        canonical(self.dtype)  # an unknown name fails here, before anything loads

    def resolved(self, verbose: bool = True) -> "InferenceOptions":
        """The same options with the device chosen and checked and `auto` precision measured (speed
        and agreement with fp32 on the named model itself, protlm.runtime.agreement; it says what
        it picked); int8 on CUDA is refused. Call once, before loading."""
        from protlm.runtime.agreement import measure
        from protlm.runtime.precision import resolve_dtype

        device = check_device(self.device)
        measured = None if self.model is None else functools.partial(measure, self.model)
        return dataclasses.replace(self, device=device, dtype=resolve_dtype(self.dtype, device, verbose, measured))

    def load(self, loader=None, verbose: bool = True):
        """(model prepared for inference on the device in the precision, alphabet); options
        should be `resolved()` first. `loader(name)` -> (model, alphabet), default protlm's."""
        from protlm.pretrained.load import load_model_and_alphabet
        from protlm.runtime.precision import prepare_model

        if self.model is None:
            raise InputError("no model given")
        model, alphabet = (loader or load_model_and_alphabet)(self.model)
        model = prepare_model(model, check_device(self.device), self.dtype, source=self.model, verbose=verbose)
        return model, alphabet


def check_device(device: str | None = None) -> str:
    """The device to use (`None` picks CUDA when present); a clear error when CUDA is asked for
    and absent."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but CUDA is not available here "
                         "(torch.cuda.is_available() is False); use --device cpu")
    return str(device)


__all__ = ["LONG_MODES", "InferenceOptions", "check_device"]
