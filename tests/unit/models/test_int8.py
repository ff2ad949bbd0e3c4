"""INT8 inference: Linear weights per output channel, outputs close to fp32, training refused."""

import copy

import pytest
import torch
from torch import nn

from protlm.dtypes import cast_state, parse_dtype
from protlm.errors import ConfigError
from protlm.models.int8 import QMAX, Int8MultiheadAttention, Int8Linear, is_quantized, linear_names, quantize_, quantize_weight


def test_quantize_weight_per_output_channel():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [100.0, 1.0, -50.0]])
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and q.abs().amax(1).tolist() == [QMAX, 0, QMAX]
    # each row keeps its own scale: the large row does not flatten the small one
    torch.testing.assert_close(q.float() * scale[:, None], w, atol=scale.max().item() / 2 * (1 + 1e-6), rtol=0)  # ties at half a step
    assert (q.float() * scale[:, None] - w)[0].abs().max() <= 1.0 / QMAX / 2 + 1e-7


def test_int8_linear_matches_fp32_linear():
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    x = torch.randn(3, 7, 64)
    y = Int8Linear.from_linear(lin)(x)
    ref = lin(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(y.flatten(), ref.flatten(), 0) > 0.999


def test_int8_linear_is_per_token_and_batch_invariant():
    """A row's result does not depend on the other rows of the call (the kernel's one input
    scale would make it): a quiet row beside a loud one keeps its accuracy. The integer products
    are the same whatever the batch; the fp32 rescaling around them is not bit for bit, since
    oneDNN picks other kernels for other row counts on some CPUs (1.8e-7 seen with AMX), so
    the rows agree to fp32 rounding. A shared input scale would be off by ~1 here (loud/255)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    q = Int8Linear.from_linear(lin)
    quiet, loud = torch.randn(1, 64), 1000 * torch.randn(1, 64)
    with torch.no_grad():
        alone = q(quiet)
        same = dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(q(torch.cat([quiet, loud]))[:1], alone, **same)
        torch.testing.assert_close(q(torch.cat([loud, quiet, quiet]))[1:], alone.expand(2, -1), **same)
        err = (alone - lin(quiet)).abs().max() / lin(quiet).abs().max()
        const = torch.full((2, 64), 0.5)  # a constant row: no spread to scale, goes through W 1
        torch.testing.assert_close(q(const), lin(const), atol=0.02, rtol=0)
    assert err < 0.03, err


def test_int8_state_dict_round_trip():
    torch.manual_seed(0)
    a = Int8Linear.from_linear(nn.Linear(16, 8))
    b = Int8Linear.from_linear(nn.Linear(16, 8))
    x = torch.randn(4, 16)
    b(x)  # packed with b's own weights; loading a's must repack
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x))


def test_int8_attention_fuses_qkv_into_the_three_separate_projections():
    """One kernel call over the stacked int8 weights gives the three projections (per-channel
    scales: stacking changes nothing), and it follows weights loaded later. Equal to fp32 rounding,
    not bit for bit: on two threads oneDNN splits the wider output differently (1 ulp seen)."""
    from protlm.models.layers import MultiheadAttention

    torch.manual_seed(0)
    attn = MultiheadAttention(64, 4, rotary=True)
    for p in "qkv":
        setattr(attn, f"{p}_proj", Int8Linear.from_linear(getattr(attn, f"{p}_proj")))
    fused = Int8MultiheadAttention.from_attention(attn)
    parts = [attn.q_proj, attn.k_proj, attn.v_proj]
    assert [fused.q_proj, fused.k_proj, fused.v_proj] == parts and fused.rot_emb is attn.rot_emb
    assert (fused.num_heads, fused.head_dim, fused.scaling) == (4, 16, attn.scaling)
    assert list(fused.state_dict()) == list(attn.state_dict())  # the same state, the same names
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        for got, part in zip(fused.project_qkv(x), parts):
            torch.testing.assert_close(got, part(x), rtol=1e-6, atol=1e-7)
        parts[1].load_state_dict(Int8Linear.from_linear(nn.Linear(64, 64)).state_dict())
        torch.testing.assert_close(fused.project_qkv(x)[1], parts[1](x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["esm1b_debug", "esm2_debug"])
def test_quantized_model_close_to_fp32(debug_model, name):
    model = debug_model(name)
    q = copy.deepcopy(model)
    state = quantize_(q)
    assert is_quantized(q) and not is_quantized(model)
    names = linear_names(model)
    assert len(state) == 2 * len(names) and "lm_head.dense" in names
    assert isinstance(q.contact_head.regression, nn.Linear)  # stays fp32
    assert all(type(layer.self_attn) is Int8MultiheadAttention for layer in q.layers)
    assert {q.layers[0].self_attn.q_proj.weight_int8.dtype, q.layers[0].final_layer_norm.weight.dtype} == {
        torch.int8, torch.float32}
    tokens = torch.randint(4, 24, (2, 30))
    tokens[:, 0] = model.alphabet.cls_idx
    with torch.inference_mode():
        ref = model(tokens, repr_layers=[-1])["representations"]
        out = q(tokens, repr_layers=[-1])["representations"]
    (layer,) = ref
    cos = torch.nn.functional.cosine_similarity(out[layer].mean(1), ref[layer].mean(1), dim=-1)
    assert cos.min() > 0.999, cos
    with torch.inference_mode():  # each sequence as in a batch of its own: the same numbers to fp32 rounding
        for i in range(2):
            torch.testing.assert_close(q(tokens[i:i + 1], repr_layers=[-1])["representations"][layer],
                                       out[layer][i:i + 1], rtol=1e-5, atol=1e-5)


def test_quantize_from_stored_state_equals_fresh(debug_model):
    a, b = debug_model("esm2_debug"), debug_model("esm2_debug")
    state = quantize_(a)
    quantize_(b, state)
    tokens = torch.randint(4, 24, (1, 12))
    with torch.inference_mode():
        torch.testing.assert_close(a(tokens)["logits"], b(tokens)["logits"])
    wrong = {k: v[:, :-1] if k.endswith("weight_int8") else v for k, v in state.items()}
    with pytest.raises(ValueError, match="does not match"):
        quantize_(debug_model("esm2_debug"), wrong)


def test_int8_is_refused_for_storing_and_training(debug_model):
    model = debug_model("esm2_debug")
    for name in ("int8", "auto"):
        with pytest.raises(ConfigError, match="inference only"):
            parse_dtype(name)
        with pytest.raises(ConfigError, match="inference only"):
            cast_state(model, model.state_dict(), name)
    from protlm.train.parallelize import Dist, parallelize

    quantize_(model)
    with pytest.raises(ConfigError, match="cannot be trained"):
        parallelize(model, "none", Dist(), torch.device("cpu"))
