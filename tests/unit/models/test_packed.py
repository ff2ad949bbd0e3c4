"""ESM.forward on a packed batch (cu_seqlens): the same numbers as the padded forward, for both
families (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from protlm import Alphabet, build_model
from protlm.data.fasta import load_fasta
from protlm.data.masking import IGNORE_INDEX, mask_tokens
from protlm.models.config import esm1b_config
from protlm.models.layout import pack, repad
from protlm.train.batches import MLMBatch
from protlm.train.loop import masked_ce_sum

TOL = 1e-5
FAMILIES = ["esm1b_debug", "esm2_debug"]
PAD = Alphabet().padding_idx


@pytest.fixture(params=FAMILIES)
def model(request, perturbed_model):
    return perturbed_model(request.param)


@pytest.fixture(scope="module")
def mixed(shared_data):
    """Real sequences (71 to 935 residues) with a 1-residue and an empty one, <mask> in two."""
    recs = load_fasta(shared_data / "sequences" / "some_proteins.fasta")
    seqs = [r.sequence for r in sorted(recs, key=lambda r: len(r.sequence))]
    picked = [seqs[0], "M", seqs[-1], "", seqs[len(seqs) // 2], "MKV<mask>A"]
    picked[0] = picked[0][:10] + "<mask>" + picked[0][11:]
    return [(str(i), s) for i, s in enumerate(picked)]


def padded(seqs):
    return Alphabet().get_batch_converter()(seqs)[2]


def max_diff_packed_vs_padded(model, tokens_BT, layers):
    tokens_N, cu = pack(tokens_BT, PAD)
    with torch.no_grad():
        ref = model(tokens_BT, repr_layers=layers)
        out = model(tokens_N, repr_layers=layers, cu_seqlens=cu)
    keep = tokens_BT.ne(PAD)
    d = {"logits": (ref["logits"][keep] - out["logits"]).abs().max().item()}
    for i in layers:
        assert out["representations"][i].shape == (len(tokens_N), model.embed_dim)
        d[f"repr{i}"] = (ref["representations"][i][keep] - out["representations"][i]).abs().max().item()
    return d, out


def test_packed_equals_padded(model, mixed):
    t = padded(mixed)
    assert t.eq(PAD).any() and t.eq(model.mask_idx).any()
    layers = list(range(model.num_layers + 1))
    d, out = max_diff_packed_vs_padded(model, t, layers)
    assert max(d.values()) <= TOL, d
    assert out["attention_backend"] == "sdpa_loop"


def test_repad_gives_the_padded_layout(model, mixed):
    t = padded(mixed)
    tokens_N, cu = pack(t, PAD)
    with torch.no_grad():
        ref = model(t, repr_layers=[1])["representations"][1]
        x_BTD = repad(model(tokens_N, repr_layers=[1], cu_seqlens=cu)["representations"][1], cu)
    keep = t.ne(PAD)
    assert x_BTD.shape == ref.shape and x_BTD[~keep].abs().max() == 0
    assert (x_BTD - ref)[keep].abs().max() <= TOL


def test_negative_repr_layers(model, mixed):
    tokens_N, cu = pack(padded(mixed[:2]), PAD)
    n = model.num_layers
    with torch.no_grad():
        reps = model(tokens_N, repr_layers=[-1, 0], return_logits=False, cu_seqlens=cu)
    assert sorted(reps["representations"]) == [0, n] and "logits" not in reps


def test_batch_invariance(model, mixed):
    """A sequence's packed output does not depend on what it is packed with."""
    n = model.num_layers
    tokens_N, cu = pack(padded(mixed), PAD)
    with torch.no_grad():
        together = model(tokens_N, repr_layers=range(n + 1), cu_seqlens=cu)
        for b, seq in enumerate(mixed):
            s, e = cu[b].item(), cu[b + 1].item()
            alone_N, alone_cu = pack(padded([seq]), PAD)
            alone = model(alone_N, repr_layers=range(n + 1), cu_seqlens=alone_cu)
            assert torch.equal(alone_N, tokens_N[s:e])
            # Not bitwise: matmuls round differently for 3 rows than for 1,400.
            assert (alone["logits"] - together["logits"][s:e]).abs().max() <= TOL
            for i in range(n + 1):
                diff = alone["representations"][i] - together["representations"][i][s:e]
                assert diff.abs().max() <= TOL, (b, i)


def test_token_dropout_rescale_is_per_sequence(model):
    """Different <mask> ratios per sequence: layer 0 matches the padded embedding exactly."""
    seqs = [("a", "MKV<mask>AGSH"), ("b", "<mask><mask>LEDPVDAF"), ("c", "GSHMLEDPVDAFQ"), ("d", "<mask>")]
    t = padded(seqs)
    tokens_N, cu = pack(t, PAD)
    keep = t.ne(PAD)
    with torch.no_grad():
        x_ND = model(tokens_N, repr_layers=[0], return_logits=False, cu_seqlens=cu)["representations"][0]
        assert torch.equal(x_ND, model.embed(t)[keep])
    d, _ = max_diff_packed_vs_padded(model, t, [0, 1, model.num_layers])
    assert max(d.values()) <= TOL, d


def test_logits_at_selected_positions(model, mixed):
    tokens_N, cu = pack(padded(mixed), PAD)
    at_bool = tokens_N.eq(model.mask_idx) | (torch.arange(len(tokens_N)) % 7 == 0)
    at_idx = at_bool.nonzero().squeeze(1)
    with torch.no_grad():
        full = model(tokens_N, cu_seqlens=cu)["logits"]
        by_idx = model(tokens_N, logits_at=at_idx, cu_seqlens=cu)["logits"]
        by_bool = model(tokens_N, logits_at=at_bool, cu_seqlens=cu)["logits"]
    assert by_idx.shape == (len(at_idx), 33)
    assert (by_idx - full[at_idx]).abs().max() <= 1e-6
    assert torch.equal(by_idx, by_bool)


def test_mlm_loss_and_gradients_packed_equal_padded(model, mixed):
    """Training side: CE at masked positions only, LM head applied only there."""
    inputs_BT, targets_BT = mask_tokens(padded(mixed), torch.Generator().manual_seed(0))
    model.zero_grad()
    count = (targets_BT != IGNORE_INDEX).sum().item()
    padded_sum = masked_ce_sum(model, MLMBatch(inputs_BT, targets_BT), None)
    (padded_sum / count).backward()  # the mean, as train_step uses
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    keep = inputs_BT.ne(PAD)
    inputs_N, cu = pack(inputs_BT, PAD)
    targets_N = targets_BT[keep]
    at = (targets_N != IGNORE_INDEX).nonzero().squeeze(1)
    model.zero_grad()
    logits_MV = model(inputs_N, logits_at=at, cu_seqlens=cu)["logits"]
    packed_sum = F.cross_entropy(logits_MV.float(), targets_N[at], reduction="sum")
    (packed_sum / count).backward()

    assert len(at) == count > 50
    assert abs(packed_sum.item() - padded_sum.item()) / count <= TOL  # mean masked CE
    packed_grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert packed_grads.keys() == grads.keys()
    for k, g in grads.items():
        assert (packed_grads[k] - g).abs().max() <= TOL, k


def test_call_with_cu_seqlens_runs_through_call(model, mixed):
    """model(tokens_N, cu_seqlens=...) runs the packed path through __call__, so hooks fire
    (DDP, FSDP and compile wrap __call__); keyword order does not matter."""
    tokens_N, cu = pack(padded(mixed), PAD)
    at = torch.arange(0, len(tokens_N), 5)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(1))
    with torch.no_grad():
        direct = model(tokens_N, repr_layers=[1], logits_at=at, cu_seqlens=cu)
        called = model(tokens_N, repr_layers=[1], cu_seqlens=cu, logits_at=at)
    handle.remove()
    assert calls == [1, 1]
    assert torch.equal(direct["logits"], called["logits"])
    assert torch.equal(direct["representations"][1], called["representations"][1])
    with pytest.raises(ValueError, match="contacts need padded"):
        model(tokens_N, cu_seqlens=cu, return_contacts=True)


def test_train_mode_with_attention_dropout_runs():
    cfg = esm1b_config(num_layers=1, embed_dim=16, ffn_embed_dim=32, attention_heads=2,
                       dropout=0.1, attention_dropout=0.1)
    m = build_model(cfg).train()
    tokens_N, cu = pack(padded([("a", "MKTAYIAKQ"), ("b", "GSH")]), PAD)
    out = m(tokens_N, cu_seqlens=cu)
    out["logits"].sum().backward()
    assert out["attention_backend"] == "sdpa_loop" and torch.isfinite(m.embed_tokens.weight.grad).all()


def test_packed_input_checks(model):
    t = padded([("a", "MKTAYIAKQ"), ("b", "GSH")])
    tokens_N, cu = pack(t, PAD)
    with pytest.raises(ValueError, match="1-D"):
        model(t, cu_seqlens=cu)
    with pytest.raises(ValueError, match="no padding"):
        model(t.flatten(), cu_seqlens=torch.tensor([0, t.shape[1], t.numel()], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens"):
        model(tokens_N, cu_seqlens=cu[:-1])
    with pytest.raises(ValueError, match="cannot run here"):
        model(tokens_N, attention_backend="varlen_attn", cu_seqlens=cu)
    x = torch.zeros(len(tokens_N), model.embed_dim)
    from protlm.models.layout import Packed

    with pytest.raises(ValueError, match="attention maps"):
        model.layers[0](x, Packed.from_cu_seqlens(cu, len(tokens_N)), need_weights=True)


def test_learned_positions_reject_too_long_packed():
    m = build_model(esm1b_config(num_layers=1, embed_dim=16, ffn_embed_dim=32, attention_heads=2,
                                 max_positions=8)).eval()
    short_N, short_cu = pack(padded([("a", "M" * 6), ("b", "M")]), PAD)
    assert m(short_N, cu_seqlens=short_cu)["logits"].shape == (11, 33)
    long_N, long_cu = pack(padded([("a", "M" * 7), ("b", "M")]), PAD)
    with pytest.raises(ValueError, match="exceeds"):
        m(long_N, cu_seqlens=long_cu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_backends(model, mixed):
    """bf16 picks a varlen kernel and agrees with the per-sequence loop; fp32 falls back to it."""
    m = model.cuda()
    tokens_N, cu = pack(padded(mixed), PAD)
    tokens_N, cu = tokens_N.cuda(), cu.cuda()
    with torch.no_grad():
        ref = m(tokens_N, repr_layers=[1], cu_seqlens=cu)
        assert ref["attention_backend"] == "sdpa_loop"  # fp32: varlen kernels take fp16/bf16 only
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast = m(tokens_N, repr_layers=[1], cu_seqlens=cu)
            loop = m(tokens_N, repr_layers=[1], attention_backend="sdpa_loop", cu_seqlens=cu)
    assert fast["attention_backend"] in ("flash_attn", "varlen_attn")
    scale = ref["representations"][1].abs().max()
    for out in (fast, loop):
        assert (out["representations"][1].float() - ref["representations"][1]).abs().max() <= 0.05 * scale
    assert (fast["representations"][1] - loop["representations"][1]).float().abs().max() <= 0.02 * scale
