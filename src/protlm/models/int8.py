"""INT8 inference on CPU: Linear weights int8 per output channel, activations quantized per call.

What is quantized: every `nn.Linear` of the transformer layers (q, k, v, out projections, fc1,
fc2) and the LM head's dense layer, which hold all but ~0.1% of the FLOPs. What stays fp32:
embeddings, LayerNorm, softmax/attention, GELU, residual adds, the tied LM projection (33
outputs) and the contact regression (its inputs are attention maps, its output one logit).

Kernels: PyTorch's quantized CPU ops (`torch.ops.quantized.linear_prepack` /
`linear_dynamic`, weights packed for oneDNN). Those kernels quantize the whole input with one
scale (its min and max), which would make a sequence's result depend on the other sequences
(and padding) of its batch. So each token's row is first mapped affinely onto [-1, 1]
(x = c + s * xn), the kernel quantizes xn (every call then has min -1 and max 1: the same
scale), and the output is mapped back: y = s * (W xn) + c * (W 1) + b. That is per-token
asymmetric quantization, batch-invariant (`PerTokenInt8`). q, k and v share one call
(`Int8MultiheadAttention`, swapped in for each attention), and GELU uses PyTorch's fused kernel
(`quantize_`). torchao
0.18's int8 path was measured 50x slower than fp32 on an AVX2 CPU (docs/performance.md), so
the ops shipped inside torch are used; nothing beyond torch is needed.

The stored form is plain tensors (safetensors can hold it): `<name>.weight_int8` (O, I) int8
and `<name>.weight_scale` (O,) fp32, w ~= weight_int8 * weight_scale[:, None]; the bias stays
fp32 with the rest of the model's parameters.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from protlm.models.layers import MultiheadAttention, gelu

# Weights use 7 bits ([-63, 63], zero point 0) so activations can use all 8: FBGEMM and oneDNN
# sum pairs of uint8 x int8 products in saturating int16 on CPUs without VNNI, and
# 2 * 255 * 63 < 2**15. Measured on protlm_small (TEM-1 mean embeddings): 8-bit activations
# with 7-bit weights err 1.5% where 7-bit activations with 8-bit weights err 2.5%.
QMAX = 63


# The packed weights carry their engine, whatever the global setting later. oneDNN's dynamic
# linear measured 8-20% faster than FBGEMM's ('x86', the default) on a 2-core AVX2 EPYC for the
# ESM shapes; results differ from FBGEMM's by fp32 rounding only (the integer products are exact).
PACK_ENGINE = "onednn" if "onednn" in torch.backends.quantized.supported_engines else None


@contextlib.contextmanager
def _engine(name: str | None):
    before = torch.backends.quantized.engine
    if name is not None:
        torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def quantize_weight(w_OI: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 (O, I), fp32 scale (O,)): each output channel scaled so its largest |w| maps to QMAX."""
    w = w_OI.detach().float()
    scale_O = (w.abs().amax(1) / QMAX).clamp_min(torch.finfo(torch.float32).tiny)  # all-zero rows
    q_OI = torch.round(w / scale_O[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q_OI, scale_O


class PerTokenInt8:
    """The kernel behind Int8Linear: y = x W^T + b, W int8 per output channel (packed once), x
    quantized per token on each call. A plain object, not a module: it holds no state of its own
    that a state dict should see (`Int8Linear` and `Int8MultiheadAttention` build it from their buffers).

    Each token's row is mapped onto [-1, 1] (x = c + h * u, one pass, clamped) and one more row
    holding exactly -1 and +1 is appended, so the kernel's own per-call range is always [-1, 1]:
    its input scale is the same whatever the batch holds. Back: y = h * (W u) + c * (W 1) + b, as
    one scaling pass and one rank-2 update.
    """

    def __init__(self, weight_int8_OI: torch.Tensor, weight_scale_O: torch.Tensor, bias_O: torch.Tensor | None):
        self.out_features, self.in_features = weight_int8_OI.shape
        zero_O = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings(), _engine(PACK_ENGINE):  # quantized tensor types are deprecated upstream
            warnings.simplefilter("ignore", UserWarning)
            w = torch._make_per_channel_quantized_tensor(weight_int8_OI, weight_scale_O.double(), zero_O, 0)
            self.packed = torch.ops.quantized.linear_prepack(w, None)  # the bias is added after rescaling
        row_sums_O = (weight_int8_OI.float() * weight_scale_O[:, None]).sum(1)
        bias_O = torch.zeros_like(row_sums_O) if bias_O is None else bias_O.detach().float()
        self.sums_bias_2O = torch.stack([row_sums_O, bias_O])  # y += [c, 1] @ [W 1; b]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x_TI = x.reshape(-1, self.in_features).float()
        T = x_TI.shape[0]
        lo_T1, hi_T1 = x_TI.amin(1, keepdim=True), x_TI.amax(1, keepdim=True)  # 5x faster than aminmax here
        half_T1 = ((hi_T1 - lo_T1) / 2).clamp_min_(torch.finfo(torch.float32).tiny)
        centre_T1 = (hi_T1 + lo_T1) / 2
        unit_UI = x_TI.new_empty(T + 1, self.in_features)
        unit_UI[T].zero_()[:2] = torch.tensor([-1.0, 1.0])  # the fixed range row
        torch.addcmul(-centre_T1 / half_T1, x_TI, 1 / half_T1, out=unit_UI[:T]).clamp_(-1.0, 1.0)
        y_TO = torch.ops.quantized.linear_dynamic(unit_UI, self.packed, False)[:T].mul_(half_T1)  # 8-bit
        y_TO.addmm_(torch.cat([centre_T1, torch.ones_like(centre_T1)], 1), self.sums_bias_2O)
        return y_TO.reshape(*x.shape[:-1], self.out_features)


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
        self._kernel = None  # built on first use from the buffers
        self.version = 0  # bumped when new buffers are loaded (fuse_qkv rebuilds then)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(*quantize_weight(linear.weight), linear.bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 (O, I) weight the int8 one stands for."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is None:
            self._kernel = PerTokenInt8(self.weight_int8, self.weight_scale, self.bias)
        return self._kernel(x)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel, self.version = None, self.version + 1  # new buffers: pack again

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


class Int8MultiheadAttention(MultiheadAttention):
    """The attention module of an int8 model: q, k and v from one int8 kernel call (one
    quantization pass over x instead of three, one wider GEMM). Per-output-channel scales make
    the fused weights exactly the three quantized ones stacked, so results equal three separate
    calls (to fp32 rounding: on several threads oneDNN may split the wider GEMM differently).

    `quantize_` swaps it in for each MultiheadAttention whose projections are Int8Linear; the
    q/k/v modules stay (their buffers are the state), the fused kernel is built from them on
    first use and again after any of them loads new buffers."""

    @classmethod
    def from_attention(cls, attn: MultiheadAttention) -> "Int8MultiheadAttention":
        """The same attention (same submodules, options and training flag) with a fused int8 q/k/v."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name, value in vars(attn).items():  # plain options: dims, scaling, dropout
            if not name.startswith("_") and name != "training":
                setattr(new, name, value)
        for name, module in attn.named_children():
            setattr(new, name, module)
        new.train(attn.training)
        new._fused, new._versions = None, None
        return new

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = (self.q_proj, self.k_proj, self.v_proj)
        versions = tuple(m.version for m in parts)
        if self._fused is None or versions != self._versions:
            bias = None if self.q_proj.bias is None else torch.cat([m.bias for m in parts])
            self._fused = PerTokenInt8(torch.cat([m.weight_int8 for m in parts]),
                                       torch.cat([m.weight_scale for m in parts]), bias)
            self._versions = versions
        return self._fused(x).split([m.out_features for m in parts], dim=-1)


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
    for name, module in list(model.named_modules()):
        if type(module) is MultiheadAttention and all(
                isinstance(getattr(module, f"{p}_proj"), Int8Linear) for p in "qkv"):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, Int8MultiheadAttention.from_attention(module))
        if getattr(module, "act", None) is gelu:
            # The same erf GELU in one fused pass (the written-out form that matches fair-esm to
            # the last bit makes five): 4x faster, within 5e-7, far below int8's own error.
            module.act = F.gelu
    return state


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())
