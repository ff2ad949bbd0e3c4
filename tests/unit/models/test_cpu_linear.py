"""oneDNN fp32/bf16 Linear on the CPU: the same layer to fp32 rounding, fused GELU, exact fallbacks."""

import copy

import pytest
import torch
from torch import nn

from protlm.models import cpu_linear
from protlm.models.cpu_linear import OneDNNLinear, use_onednn_linear_
from protlm.models.layers import gelu
from protlm.runtime.precision import prepare_model


def test_the_op_exists_in_the_pinned_torch():
    # Not a skip: the CPU wheel protlm pins has oneDNN; if a torch drops the private op, this says so.
    assert cpu_linear.available()


def _linear(seed=0, d_in=48, d_out=80):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


@pytest.mark.parametrize("shape", [(7, 48), (2, 5, 48), (0, 48)])
def test_same_layer_to_fp32_rounding(shape):
    lin = _linear()
    fast = copy.deepcopy(lin)
    assert use_onednn_linear_(fast) == 1 and type(fast) is OneDNNLinear
    x = torch.randn(*shape)
    with torch.inference_mode():
        got, want = fast(x), lin(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-6)
    assert fast.state_dict().keys() == lin.state_dict().keys()  # checkpoints see an nn.Linear


def test_autograd_falls_back_to_the_exact_layer():
    lin = _linear()
    fast = copy.deepcopy(lin)
    use_onednn_linear_(fast)
    fast.post_op = "gelu"
    x = torch.randn(4, 48, requires_grad=True)
    y = fast(x)
    assert torch.equal(y, gelu(lin(x)))  # the same ops, bit for bit
    y.sum().backward()
    assert fast.weight.grad is not None and x.grad is not None


def test_gelu_is_fused_into_fc1_where_the_ffn_is_plain(perturbed_model):
    model = perturbed_model("esm2_debug")
    fast = copy.deepcopy(model)
    use_onednn_linear_(fast)
    layer = fast.layers[0]
    assert layer.fc1.post_op == "gelu" and layer.act is cpu_linear.identity
    assert layer.fc2.post_op == "none" and layer.self_attn.q_proj.post_op == "none"
    tokens = torch.tensor([[0, 5, 6, 7, 8, 9, 10, 2]])
    with torch.inference_mode():
        got, want = fast(tokens, repr_layers=[len(fast.layers)]), model(tokens, repr_layers=[len(fast.layers)])
    torch.testing.assert_close(got["logits"], want["logits"], atol=1e-5, rtol=0)


def test_gated_t5_ffn_is_not_fused(debug_model):
    model = debug_model("prot_t5_debug")
    use_onednn_linear_(model)
    for m in model.modules():
        if getattr(m, "fc1_linear", None) is not None:
            assert m.fc1.post_op == "none" and m.act is not cpu_linear.identity


def test_bf16_runs_on_onednn_close_to_nn_linear():
    lin = _linear().to(torch.bfloat16)
    fast = copy.deepcopy(lin)
    use_onednn_linear_(fast)
    x = torch.randn(9, 48).bfloat16()
    with torch.inference_mode():
        torch.testing.assert_close(fast(x).float(), lin(x).float(), atol=2e-2, rtol=2e-2)


def test_prepare_model_converts_on_cpu_unless_told_not_to(debug_model, monkeypatch):
    model = prepare_model(debug_model("esm2_debug"), "cpu", "fp32", verbose=False)
    assert any(type(m) is OneDNNLinear for m in model.modules())
    assert not any(type(m) is nn.Linear for m in model.modules())
    monkeypatch.setenv(cpu_linear.ENV, "aten")
    model = prepare_model(debug_model("esm2_debug"), "cpu", "fp32", verbose=False)
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())


def test_int8_layers_are_left_alone(debug_model, tmp_path, monkeypatch):
    from protlm.models.int8 import Int8Linear

    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path))
    model = prepare_model(debug_model("esm2_debug"), "cpu", "int8", verbose=False)
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    assert not any(isinstance(m, Int8Linear) and isinstance(m, OneDNNLinear) for m in model.modules())


def test_a_dtype_onednn_cannot_run_here_falls_back(monkeypatch):
    """bf16 needs AVX-512 in oneDNN (capped at AVX2 it refuses the primitive): then nn.Linear's path."""
    monkeypatch.setattr(cpu_linear, "supported", lambda dtype: dtype == torch.float32)
    lin = _linear().to(torch.bfloat16)
    fast = copy.deepcopy(lin)
    use_onednn_linear_(fast)
    fast.post_op = "gelu"
    x = torch.randn(5, 48).bfloat16()
    with torch.inference_mode():
        assert torch.equal(fast(x), gelu(lin(x)))


def test_supported_runs_the_op_once_per_dtype():
    assert cpu_linear.supported(torch.float32)
    assert cpu_linear.supported(torch.bfloat16) in (True, False)  # AVX-512 or not: either way no error
    assert cpu_linear.supported.cache_info().currsize >= 2
