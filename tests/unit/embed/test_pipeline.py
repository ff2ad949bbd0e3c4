"""embed.extract: parity with fair-esm's extract.py procedure, batch invariance, long sequences."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from protlm.errors import ProtlmError

from protlm import build_model
from protlm.data.fasta import load_fasta, write_fasta
from protlm.embed.pipeline import EmbedConfig, extract
from protlm.embed.plan import EmbedError, check_lengths, scan_fasta
from protlm.errors import InputError
from protlm.runtime.options import InferenceOptions
from protlm.runtime.precision import prepare_model
from protlm.models.layers import init_weights
from protlm.pretrained.registry import DEBUG_CONFIGS
from protlm.data.windows import merge_1d, merge_2d, window_spans

ALL = ("mean", "per_tok", "bos", "contacts")


def realistic(cfg, seed=0):
    torch.manual_seed(seed)
    m = build_model(cfg)
    init_weights(m)  # N(0, 0.02) weights: realistic magnitudes, so 1e-5 means something
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.fixture
def few(shared_data):
    return shared_data / "sequences" / "few_proteins.fasta"


@pytest.fixture
def some(shared_data):
    return shared_data / "sequences" / "some_proteins.fasta"


def fair_esm_twin(model):
    """fair-esm's ESM2 holding the same weights (state-dict keys are fair-esm's)."""
    import esm

    c = model.config
    ref = esm.model.esm2.ESM2(num_layers=c.num_layers, embed_dim=c.embed_dim,
                              attention_heads=c.attention_heads,
                              alphabet=esm.Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval(), esm.Alphabet.from_architecture("ESM-1b")


def test_matches_fair_esm_extract_procedure(some):
    """Per record: what fair-esm's scripts/extract.py computes, one sequence at a time."""
    model = realistic(DEBUG_CONFIGS["esm2_debug"])
    ref, ref_alphabet = fair_esm_twin(model)
    convert = ref_alphabet.get_batch_converter(truncation_seq_length=1022)
    cfg = EmbedConfig(repr_layers=(0, -1), include=ALL)
    got = {r.id: r for r in extract(model, model.alphabet, some, cfg, InferenceOptions(toks_per_batch=2048))}
    records = load_fasta(some)
    assert set(got) == {r.id for r in records}
    worst = 0.0
    for rec in records:
        _, _, toks = convert([(rec.description, rec.sequence)])
        with torch.no_grad():
            out = ref(toks, repr_layers=[0, 2], return_contacts=True)
        L = min(1022, len(rec.sequence))
        r = got[rec.id]
        assert r.length == len(rec.sequence) and r.description == rec.description
        for k in (0, 2):
            t = out["representations"][k][0]
            for a, b in ((r.per_tok[k], t[1 : L + 1]), (r.mean[k], t[1 : L + 1].mean(0)), (r.bos[k], t[0])):
                assert a.shape == b.shape and a.dtype == torch.float32
                worst = max(worst, (a - b).abs().max().item())
        assert r.contacts.shape == (L, L)
        worst = max(worst, (r.contacts - out["contacts"][0, :L, :L]).abs().max().item())
    print(f"max abs diff vs fair-esm: {worst:.2e}")
    assert worst <= 1e-5


@pytest.mark.parametrize("family", ["esm1b_debug", "esm2_debug"])
def test_batch_invariance(some, family):
    """A record's outputs do not depend on its batch mates (one per batch vs large batches)."""
    model = realistic(DEBUG_CONFIGS[family])
    cfg = EmbedConfig(repr_layers=(0, 1, 2), include=ALL)
    alone = {r.id: r for r in extract(model, model.alphabet, some, cfg, InferenceOptions(toks_per_batch=1))}
    packed = {r.id: r for r in extract(model, model.alphabet, some, cfg, InferenceOptions(toks_per_batch=1 << 16))}
    worst = 0.0
    for rid, a in alone.items():
        b = packed[rid]
        for k in (0, 1, 2):
            for name in ("mean", "per_tok", "bos"):
                worst = max(worst, (getattr(a, name)[k] - getattr(b, name)[k]).abs().max().item())
        worst = max(worst, (a.contacts - b.contacts).abs().max().item())
    print(f"batch invariance max abs diff: {worst:.2e}")
    assert worst <= 1e-5


def short_model():
    """ESM-1b debug model limited to 32 residues, so windows kick in on real proteins."""
    return realistic(dataclasses.replace(DEBUG_CONFIGS["esm1b_debug"], max_positions=34))


def single(model, seq, layers=(2,)):
    toks = model.alphabet.get_batch_converter()([("x", seq)])[2]
    with torch.no_grad():
        out = model(toks, repr_layers=layers, return_contacts=True)
    return out["representations"][layers[0]][0, 1:-1], out["contacts"][0]


def test_truncate_keeps_first_residues(few):
    model = short_model()
    cfg = EmbedConfig(include=ALL)
    for r in extract(model, model.alphabet, few, cfg, InferenceOptions(long="truncate")):
        seq = next(x.sequence for x in load_fasta(few) if x.id == r.id)
        per_tok, contacts = single(model, seq[:32])
        assert r.length == len(seq) > 32
        assert r.per_tok[2].shape == (32, 64) and r.contacts.shape == (32, 32)
        assert torch.allclose(r.per_tok[2], per_tok, atol=1e-5)
        assert torch.allclose(r.mean[2], per_tok.mean(0), atol=1e-5)
        assert torch.allclose(r.contacts, contacts, atol=1e-5)


def test_window_averages_overlaps(few):
    model = short_model()
    cfg = EmbedConfig(include=ALL)
    opts = InferenceOptions(long="window", toks_per_batch=100)  # forces window sub-batches
    for r in extract(model, model.alphabet, few, cfg, opts):
        seq = next(x.sequence for x in load_fasta(few) if x.id == r.id)
        spans = window_spans(len(seq), 32)
        assert len(spans) > 1
        parts = [single(model, seq[s:e]) for s, e in spans]
        per_tok = merge_1d([p for p, _ in parts], spans, len(seq))
        contacts = merge_2d([c for _, c in parts], spans, len(seq))
        assert r.per_tok[2].shape == (len(seq), 64) and r.contacts.shape == (len(seq), len(seq))
        assert torch.allclose(r.per_tok[2], per_tok, atol=1e-5)
        assert torch.allclose(r.mean[2], per_tok.mean(0), atol=1e-5)  # over the whole sequence
        assert torch.allclose(r.contacts, contacts, atol=1e-5)


def test_long_error_names_record(few):
    summary = scan_fasta(few)
    check_lengths(summary, 1022, "error")
    with pytest.raises(EmbedError, match=r"UniRef50_A0A090SUK6.*99 residues.*limit of 90"):
        check_lengths(summary, 90, "error")


def test_scan_fasta_keeps_ids_and_lengths_only(few, tmp_path):
    summary = scan_fasta(few)
    assert summary.ids == ["UniRef50_UPI0003108055", "UniRef50_A0A223SCH7", "UniRef50_A0A090SUK6"]
    assert list(summary.lengths) == [80, 71, 99] and summary.total_residues == 250
    slash = tmp_path / "slash.fasta"  # any ID: HDF5 stores IDs as data, .pt names are encoded
    write_fasta([("ok", "MKV"), ("sp/P1", "MKV")], slash)
    assert scan_fasta(slash).ids == ["ok", "sp/P1"]


def test_resolve_layers():
    from protlm.errors import InputError
    from protlm.models.esm import resolve_layers

    assert resolve_layers([-1, 0, 2, 2], 2) == [0, 2]
    with pytest.raises(InputError, match="repr layer 3 out of range"):
        resolve_layers([3], 2)
    with pytest.raises(InputError, match="repr layer -4"):
        resolve_layers([-4], 2)


def test_config_rejects_bad_values():
    with pytest.raises(EmbedError, match="--include"):
        EmbedConfig(include=("logits",))
    with pytest.raises(InputError, match="--long"):
        InferenceOptions(long="crop")
    with pytest.raises(InputError, match="--toks-per-batch"):
        InferenceOptions(toks_per_batch=0)


def test_reduced_precision_outputs_float32(few):
    model = prepare_model(realistic(DEBUG_CONFIGS["esm2_debug"]), "cpu", "bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    ref = {r.id: r for r in extract(realistic(DEBUG_CONFIGS["esm2_debug"]), model.alphabet, few)}
    for r in extract(model, model.alphabet, few, EmbedConfig(include=ALL)):
        assert r.mean[2].dtype == r.per_tok[2].dtype == r.contacts.dtype == torch.float32
        assert (r.mean[2] - ref[r.id].mean[2]).abs().max() < 0.1  # bf16 is close, not exact


def test_cuda_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        InferenceOptions(device="cuda").resolved()
    with pytest.raises(ProtlmError, match="unknown dtype 'fp8'"):
        InferenceOptions(dtype="fp8")


@pytest.mark.parametrize("family", ["esm1b_debug", "esm2_debug"])
@pytest.mark.parametrize("long", ["truncate", "window"])
def test_packed_embed_equals_the_padded_path(some, family, long):
    """Without contacts embed runs packed; with them, padded: mean/per_tok/bos agree to 1e-5."""
    model = realistic(dataclasses.replace(DEBUG_CONFIGS[family], max_positions=302))  # 300 residues
    cfg = EmbedConfig(repr_layers=(0, -1), include=("mean", "per_tok", "bos"))
    opts = InferenceOptions(long=long, toks_per_batch=1500)
    packed = {r.id: r for r in extract(model, model.alphabet, some, cfg, opts)}
    padded = {r.id: r for r in extract(model, model.alphabet, some, dataclasses.replace(cfg, include=ALL), opts)}
    assert packed.keys() == padded.keys() and any(r.length > 300 for r in packed.values())
    for rid, a in packed.items():
        assert a.contacts is None and a.truncated_from == padded[rid].truncated_from
        for name in ("mean", "per_tok", "bos"):
            for k in (0, 2):
                torch.testing.assert_close(getattr(a, name)[k], getattr(padded[rid], name)[k], atol=1e-5, rtol=0)


def test_compiled_embed_equals_eager(some):
    model = realistic(DEBUG_CONFIGS["esm2_debug"])
    cfg, opts = EmbedConfig(include=("mean",)), InferenceOptions(toks_per_batch=2048)
    eager = {r.id: r.mean[2] for r in extract(model, model.alphabet, some, cfg, opts)}
    compiled = {r.id: r.mean[2] for r in extract(model, model.alphabet, some,
                                                 dataclasses.replace(cfg, compile=True), opts)}
    for rid in eager:
        torch.testing.assert_close(compiled[rid], eager[rid], atol=1e-4, rtol=0)
