"""fp32 and bf16 Linear layers on the CPU through oneDNN rather than PyTorch's default BLAS call.

Why: PyTorch's CPU fp32 `addmm` calls MKL's sgemm, which on AMD CPUs runs MKL's AVX2 code even
where the CPU has AVX-512. On a 2-core AVX-512 EPYC it measured 104-119 GFLOP/s per core for the
ESM-2 shapes, where oneDNN's kernels (`torch.ops.mkldnn._linear_pointwise`, the op
torch.compile's CPU backend emits) reached 239-267 (benchmarks/bench_cpu_linear.py); with the
GELU fused, ESM-2 35M fp32 embeddings ran 2x faster end to end (docs/performance.md). Results
differ from the default path by fp32 rounding only (~1e-6).

`use_onednn_linear_(model)` re-classes each plain `nn.Linear` in place: parameters, state dict
and hooks stay as they were, and the layer falls back to `F.linear` wherever oneDNN's op does
not apply (autograd, another dtype or device), so training through a converted model is
unchanged. The erf GELU after an FFN's fc1 is fused into fc1 as oneDNN's post-op, as
torch.ao's fuse_modules does (the layer's `act` becomes the identity): written out as the
reference writes it, that GELU was five memory-bound passes, a quarter of the time once the
GEMMs ran on oneDNN. `PROTLM_CPU_LINEAR=aten` turns it all off (`prepare_model` reads it).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from protlm.models.layers import gelu

ENV = "PROTLM_CPU_LINEAR"


@functools.cache
def supported(dtype: torch.dtype) -> bool:
    """oneDNN is built in, this torch has the op (a private one: checked, never assumed), and it
    runs `dtype` on this CPU: bf16 needs AVX-512 (or AMX) and fails where oneDNN is capped below
    it (ONEDNN_MAX_CPU_ISA=AVX2), so one tiny call decides."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(2, 8, dtype=dtype)
        torch.ops.mkldnn._linear_pointwise(x, torch.ones(4, 8, dtype=dtype), None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return True


def available() -> bool:
    return supported(torch.float32)


def enabled() -> bool:
    """Whether prepare_model converts fp32 CPU models: the op exists and PROTLM_CPU_LINEAR is not 'aten'."""
    return available() and os.environ.get(ENV, "onednn").lower() != "aten"


class OneDNNLinear(nn.Linear):
    """nn.Linear whose fp32 CPU inference runs on oneDNN; everything else is nn.Linear's.
    With `post_op = "gelu"` it is Linear then erf GELU on every path."""

    post_op = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (x.device.type == "cpu" and x.dtype == w.dtype and x.dtype in (torch.float32, torch.bfloat16)
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)) and supported(x.dtype)):
            # algorithm "none" is GELU's erf form (not the tanh approximation)
            return torch.ops.mkldnn._linear_pointwise(x, w, self.bias, self.post_op, [], "none")
        y = F.linear(x, w, self.bias)
        return gelu(y) if self.post_op == "gelu" else y


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def use_onednn_linear_(model: nn.Module) -> int:
    """Re-class every plain nn.Linear of `model` as OneDNNLinear, and fuse `act(fc1(x))` where
    act is the erf GELU and the FFN is not gated; returns how many Linears. Subclasses of
    nn.Linear (quantized or otherwise specialised layers) are left alone."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
    for m in model.modules():
        fc1 = getattr(m, "fc1", None)
        if getattr(m, "act", None) is gelu and type(fc1) is OneDNNLinear and getattr(m, "fc1_linear", None) is None:
            fc1.post_op, m.act = "gelu", identity
    return n
