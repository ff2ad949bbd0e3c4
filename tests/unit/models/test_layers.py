"""clamp_fp16: how a T5 layer in fp16 keeps its residual stream finite."""

from __future__ import annotations

import pytest
import torch

from protlm.models.layers import TransformerLayer, clamp_fp16
from protlm.models.layout import Padded

HALF_MAX = torch.finfo(torch.float16).max  # 65504
LIMIT_AFTER_INF = torch.tensor(HALF_MAX - 1000, dtype=torch.float16)  # 64504 rounds to 64512 in fp16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_other_dtypes_pass_through_untouched(dtype):
    x = torch.tensor([1.0, 1e30, float("inf"), -float("inf")]).to(dtype)
    assert clamp_fp16(x) is x


def test_finite_half_values_are_kept_even_at_the_largest_finite_value():
    x = torch.tensor([[0.0, -2.5, 1e-4], [HALF_MAX, -HALF_MAX, 65000.0]], dtype=torch.float16)
    y = clamp_fp16(x)
    assert y.dtype == torch.float16 and torch.equal(y, x)


def test_an_inf_clamps_the_whole_tensor_to_1000_below_the_largest_finite_value():
    """As transformers' T5 does: once an inf appeared, every value is clamped to
    +-(max - 1000), infs and large finite values alike; the rest are unchanged."""
    x = torch.tensor([[1.0, -2.5, 65000.0, -HALF_MAX], [float("inf"), -float("inf"), 60000.0, 3.0]],
                     dtype=torch.float16)
    y = clamp_fp16(x)
    assert y.dtype == torch.float16 and y.shape == x.shape and torch.isfinite(y).all()
    want = torch.tensor([[1.0, -2.5, LIMIT_AFTER_INF, -LIMIT_AFTER_INF],
                         [LIMIT_AFTER_INF, -LIMIT_AFTER_INF, 60000.0, 3.0]], dtype=torch.float16)
    assert torch.equal(y, want)


def overflowing_t5_layer(clamp_half: bool) -> TransformerLayer:
    """A T5-style layer (RMSNorm, no biases, ReLU FFN) in fp16 whose FFN output overflows: every
    one of its 16 units gives 4 for an all-ones input and fc2 sums them with weight 1e4."""
    torch.manual_seed(0)
    layer = TransformerLayer(8, 16, 2, rotary=False, norm="rms", bias=False, activation="relu",
                             scale_queries=False, clamp_half=clamp_half).eval()
    with torch.no_grad():
        layer.fc1.weight.fill_(0.5)
        layer.fc2.weight.fill_(1e4)
    return layer.half()


def test_a_t5_layer_with_clamp_half_stays_finite_where_fp16_overflows():
    x = torch.ones(1, 5, 8, dtype=torch.float16)
    layout = Padded.of(torch.full((1, 5), 4), padding_idx=1)
    with torch.no_grad():
        unclamped, _ = overflowing_t5_layer(False)(x, layout)
        clamped, _ = overflowing_t5_layer(True)(x, layout)
    assert torch.isinf(unclamped).all()
    assert torch.equal(clamped, torch.full_like(clamped, LIMIT_AFTER_INF.item()))
