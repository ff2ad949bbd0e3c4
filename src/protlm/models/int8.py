"""INT8 inference on CPU: Linear weights int8 per output channel, activations quantized per call.

What is quantized: every `nn.Linear` of the transformer layers (q, k, v, out projections, fc1,
fc2) and the LM head's dense layer, which hold all but ~0.1% of the FLOPs. What stays fp32:
embeddings, LayerNorm, softmax/attention, GELU, residual adds, the tied LM projection (33
outputs) and the contact regression (its inputs are attention maps, its output one logit).

Kernels: PyTorch's quantized CPU ops (`torch.ops.quantized.linear_prepack` /
`linear_dynamic`, FBGEMM or oneDNN under `torch.backends.quantized.engine`). Those kernels
quantize the whole input with one scale (its min and max), which would make a sequence's
result depend on the other sequences (and padding) of its batch. So each token's row is first
mapped affinely onto exactly [-1, 1] (x = c + s * xn), the kernel quantizes xn (every batch then
has min -1 and max 1: the same scale), and the output is mapped back: y = s * (W xn) + c * (W 1)
+ b. That is per-token asymmetric quantization, batch-invariant, for two elementwise passes. torchao
0.18's int8 path was measured 50x slower than fp32 on an AVX2 CPU (docs/performance.md), so
the ops shipped inside torch are used; nothing beyond torch is needed.

The stored form is plain tensors (safetensors can hold it): `<name>.weight_int8` (O, I) int8
and `<name>.weight_scale` (O,) fp32, w ~= weight_int8 * weight_scale[:, None]; the bias stays
fp32 with the rest of the model's parameters.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# Weights use 7 bits ([-63, 63], zero point 0) so activations can use all 8: FBGEMM (engines
# 'fbgemm', 'x86') sums pairs of uint8 x int8 products in saturating int16 on CPUs without
# VNNI, and 2 * 255 * 63 < 2**15. Measured on protlm_small (TEM-1 mean embeddings): 8-bit
# activations with 7-bit weights err 1.5% where 7-bit activations with 8-bit weights err 2.5%.
QMAX = 63


def quantize_weight(w_OI: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 (O, I), fp32 scale (O,)): each output channel scaled so its largest |w| maps to QMAX."""
    w = w_OI.detach().float()
    scale_O = (w.abs().amax(1) / QMAX).clamp_min(torch.finfo(torch.float32).tiny)  # all-zero rows
    q_OI = torch.round(w / scale_O[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q_OI, scale_O


class Int8Linear(nn.Module):
    """y = x W^T + b with W int8 per output channel and x quantized per token on each call.

    Inference only (no autograd through the int8 weights); x is (..., I) fp32, y (..., O) fp32.
    """

    def __init__(self, weight_int8_OI: torch.Tensor, weight_scale_O: torch.Tensor,
                 bias_O: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_int8_OI.shape
        self.register_buffer("weight_int8", weight_int8_OI.to(torch.int8).contiguous())
        self.register_buffer("weight_scale", weight_scale_O.float().contiguous())
        self.bias = None if bias_O is None else nn.Parameter(bias_O.detach().float(), requires_grad=False)
        self._packed = None  # the kernel's layout, built on first use from the buffers

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(*quantize_weight(linear.weight), linear.bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 (O, I) weight the int8 one stands for."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def _pack(self):
        zero_O = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensor types are deprecated upstream (see docs/performance.md)
            warnings.simplefilter("ignore", UserWarning)
            w = torch._make_per_channel_quantized_tensor(self.weight_int8, self.weight_scale.double(), zero_O, 0)
        return torch.ops.quantized.linear_prepack(w, None)  # the bias is added after rescaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed, self._row_sums_O = self._pack(), self.dequantized_weight().sum(1)
        x_TI = x.reshape(-1, self.in_features).float()
        hi_T1, hi_at = x_TI.max(1, keepdim=True)
        lo_T1, lo_at = x_TI.min(1, keepdim=True)
        centre_T1, half_T1 = (hi_T1 + lo_T1) / 2, ((hi_T1 - lo_T1) / 2).clamp_min(torch.finfo(torch.float32).tiny)
        unit_TI = ((x_TI - centre_T1) / half_T1).scatter_(1, hi_at, 1.0).scatter_(1, lo_at, -1.0)  # exact ends
        y_TO = torch.ops.quantized.linear_dynamic(unit_TI, self._packed, False).mul_(half_T1)  # 8-bit: QMAX
        y_TO.addr_(centre_T1.squeeze(1), self._row_sums_O)
        if self.bias is not None:
            y_TO.add_(self.bias)
        return y_TO.reshape(*x.shape[:-1], self.out_features)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._packed = None  # new buffers: pack again

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


def linear_names(model: nn.Module) -> list[str]:
    """Names of the Linear layers `quantize_` replaces: the transformer layers and the LM head's
    dense layer (the contact regression stays fp32)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and (name.startswith("layers.") or name == "lm_head.dense")]


def quantize_(model: nn.Module, stored: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Replace the Linear layers named by `linear_names` with `Int8Linear`, in place.

    `stored`: int8 weights and scales from an earlier call (see `int8_state`), used instead of
    quantizing again; a missing or misshapen entry raises KeyError/ValueError. Returns the
    int8 state for caching. The model must be on the CPU, in fp32.
    """
    state = {}
    for name in linear_names(model):
        parent_name, _, attr = name.rpartition(".")
        parent, linear = model.get_submodule(parent_name), model.get_submodule(name)
        if stored is None:
            q, scale = quantize_weight(linear.weight)
        else:
            q, scale = stored[f"{name}.weight_int8"], stored[f"{name}.weight_scale"]
            if q.shape != linear.weight.shape or scale.shape != linear.weight.shape[:1]:
                raise ValueError(f"{name}: stored int8 weight {tuple(q.shape)} does not match "
                                 f"the model's {tuple(linear.weight.shape)}")
        setattr(parent, attr, Int8Linear(q, scale, linear.bias))
        state[f"{name}.weight_int8"], state[f"{name}.weight_scale"] = q, scale
    return state


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
