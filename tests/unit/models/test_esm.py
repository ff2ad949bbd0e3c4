"""ESM backbone: shapes, repr_layers, contact paths agree, batch invariance."""

from __future__ import annotations

import pytest
import torch

from protlm import Alphabet, build_model
from protlm.models.config import esm1b_config, esm2_config
from protlm.pretrained.registry import DEBUG_CONFIGS

FAMILIES = ["esm1b_debug", "esm2_debug"]
SEQS = [("a", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"), ("b", "MKV<mask>A"), ("c", "GSHMLEDPVDAFQ")]


@pytest.fixture(params=FAMILIES)
def model(request, perturbed_model):
    return perturbed_model(request.param)


def tokens(seqs=SEQS):
    return Alphabet().get_batch_converter()(seqs)[2]


def test_output_shapes(model):
    t = tokens()
    B, T = t.shape
    n, d, h = model.num_layers, model.embed_dim, model.attention_heads
    with torch.no_grad():
        out = model(t, repr_layers=range(n + 1), need_head_weights=True, return_contacts=True)
    assert out["logits"].shape == (B, T, 33)
    assert sorted(out["representations"]) == list(range(n + 1))
    assert all(r.shape == (B, T, d) for r in out["representations"].values())
    assert out["attentions"].shape == (B, n, h, T, T)
    assert out["contacts"].shape == (B, T - 2, T - 2)
    assert set(model(t)) == {"logits", "representations"}


def test_repr_layers_negative_indices(model):
    t, n = tokens(), model.num_layers
    with torch.no_grad():
        pos = model(t, repr_layers=[0, n])["representations"]
        neg = model(t, repr_layers=[-(n + 1), -1])["representations"]
    assert sorted(neg) == [0, n]
    assert torch.equal(pos[0], neg[0]) and torch.equal(pos[n], neg[n])
    with pytest.raises(ValueError, match="out of range"):
        model(t, repr_layers=[n + 1])
    with pytest.raises(ValueError, match="out of range"):
        model(t, repr_layers=[-(n + 2)])


def test_last_representation_is_after_final_layer_norm(model):
    t, n = tokens(), model.num_layers
    with torch.no_grad():
        out = model(t, repr_layers=[n])
    x = out["representations"][n]
    expected = model.lm_head(x)
    assert torch.allclose(expected, out["logits"], atol=1e-6)


def test_contacts_with_and_without_head_weights_agree(model):
    t = tokens()
    with torch.no_grad():
        layerwise = model(t, return_contacts=True)["contacts"]
        full = model(t, need_head_weights=True, return_contacts=True)
        from_maps = model.contact_head(t, full["attentions"])  # the reference-style head
    assert (layerwise - full["contacts"]).abs().max() <= 1e-6
    assert (layerwise - from_maps).abs().max() <= 1e-6
    assert torch.equal(model.predict_contacts(t), layerwise)


@pytest.mark.filterwarnings("ignore::protlm.models.heads.UncalibratedContactsWarning")
def test_half_precision_maps_in_the_model_dtype_contacts_float32(model):
    """As fair-esm: attention maps come back in the model's dtype (half the memory of fp32);
    contacts are float32 probabilities whichever path computed them."""
    m = model.to(torch.bfloat16)
    with torch.no_grad():
        both = m(tokens(), need_head_weights=True, return_contacts=True)
        reduced = m(tokens(), return_contacts=True)
    assert both["attentions"].dtype == torch.bfloat16 and both["logits"].dtype == torch.bfloat16
    assert both["contacts"].dtype == reduced["contacts"].dtype == torch.float32
    assert torch.allclose(both["contacts"], reduced["contacts"], atol=2e-2)


def test_sdpa_and_explicit_paths_agree(model):
    t = tokens()
    with torch.no_grad():
        fast = model(t, repr_layers=[1])
        slow = model(t, repr_layers=[1], need_head_weights=True)
    assert (fast["logits"] - slow["logits"]).abs().max() <= 1e-5
    assert (fast["representations"][1] - slow["representations"][1]).abs().max() <= 1e-5


def test_attention_maps_zero_on_padding(model):
    t = tokens()
    pad = t.eq(model.padding_idx)
    with torch.no_grad():
        attn = model(t, need_head_weights=True)["attentions"]  # (B, N, H, T, T)
    assert attn[pad[:, None, None, :, None].expand_as(attn)].abs().max() == 0
    assert attn[pad[:, None, None, None, :].expand_as(attn)].abs().max() == 0
    rows = attn.sum(-1)[~pad[:, None, None, :].expand(attn.shape[:-1])]
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


@pytest.mark.parametrize("need_head_weights", [False, True])
def test_batch_invariance(model, need_head_weights):
    """A sequence's outputs do not depend on its padding or batch mates."""
    n = model.num_layers
    batch = tokens()
    with torch.no_grad():
        out_b = model(batch, repr_layers=range(n + 1), need_head_weights=need_head_weights, return_contacts=True)
        for i, (label, seq) in enumerate(SEQS):
            single = tokens([(label, seq)])
            L = single.shape[1]
            out_s = model(single, repr_layers=range(n + 1), need_head_weights=need_head_weights,
                          return_contacts=True)
            assert (out_b["logits"][i, :L] - out_s["logits"][0]).abs().max() <= 1e-5
            for layer in range(n + 1):
                diff = out_b["representations"][layer][i, :L] - out_s["representations"][layer][0]
                assert diff.abs().max() <= 1e-5, (label, layer)
            c_b, c_s = out_b["contacts"][i, : L - 2, : L - 2], out_s["contacts"][0]
            assert (c_b - c_s).abs().max() <= 1e-5


def test_token_dropout_rescales_by_mask_ratio():
    cfg = esm2_config(1, 16, 2)
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    a = m.alphabet
    t = tokens([("a", "MKVA<mask>")])
    x = m.embed(t)
    raw = m.embed_tokens(t)
    observed = 1 / 7  # one <mask> among 7 tokens (BOS + 5 + EOS)
    assert torch.allclose(x[0, 1], raw[0, 1] * (1 - 0.12) / (1 - observed), atol=1e-7)
    assert x[0, 5].abs().max() == 0  # the <mask> embedding is zeroed
    assert a.mask_idx == 32


def test_learned_positions_reject_too_long():
    m = build_model(esm1b_config(num_layers=1, embed_dim=16, ffn_embed_dim=32, attention_heads=2,
                                 max_positions=8)).eval()
    with pytest.raises(ValueError, match="exceeds"):
        m(tokens([("a", "M" * 7)]))
    assert m(tokens([("a", "M" * 6)]))["logits"].shape == (1, 8, 33)


def test_tokens_must_be_2d(model):
    with pytest.raises(ValueError, match="batch, length"):
        model(tokens()[0])


def test_family_classes_check_config():
    from protlm import ESM1b, ESM2

    with pytest.raises(ValueError):
        ESM1b(DEBUG_CONFIGS["esm2_debug"])
    with pytest.raises(ValueError):
        ESM2(DEBUG_CONFIGS["esm1b_debug"])
    assert isinstance(build_model(DEBUG_CONFIGS["esm1b_debug"]), ESM1b)
