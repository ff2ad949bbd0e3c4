"""CARP: alphabet, published sizes and files, registry entries, padding, packing, engine, dtypes."""

from __future__ import annotations

import pytest
import torch

import _carp_ref as R
from protlm import Alphabet
from protlm.alphabet import InvalidSequenceError
from protlm.embed.engine import Engine
from protlm.errors import InputError
from protlm.models.carp import CARP, CARPConfig, carp_config
from protlm.pretrained import registry
from protlm.pretrained.checkpoint import CheckpointError
from protlm.pretrained.load import load_model_and_alphabet

SEQS = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "KALTARQQEVFDLIRD", "MKV", "ACDEFGHIKLMNPQRSTVWYBZXJOU"]


def debug_model(seed: int = 0, **overrides) -> CARP:
    torch.manual_seed(seed)
    model = CARP(CARPConfig(**{"d_model": 32, "n_layers": 3, "r": 4, "slim": True, **overrides})).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    return model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_alphabet_is_sequence_models_protein_alphabet():
    from sequence_models.constants import MASK, PAD, PROTEIN_ALPHABET

    a = Alphabet.carp()
    assert "".join(a.all_toks) == PROTEIN_ALPHABET and len(a) == 30
    assert a.padding_idx == PROTEIN_ALPHABET.index(PAD) and a.mask_idx == PROTEIN_ALPHABET.index(MASK)
    assert (a.prepend_bos, a.append_eos, a.num_specials, a.residue_offset, a.cls_idx) == (False, False, 0, 0, None)
    labels, strs, tokens = a.get_batch_converter()([("a", "MKV"), ("b", "MK")])
    assert tokens.tolist() == [[a.get_idx(c) for c in "MKV"], [a.get_idx("M"), a.get_idx("K"), a.padding_idx]]
    with pytest.raises(InvalidSequenceError, match="'b'.*'-' at position 2"):
        a.get_batch_converter()([("b", "M-K")])  # '-' is padding, never a residue


def test_published_sizes_count_their_parameters():
    """The registry's hyperparameters give the published parameter counts (built on 'meta')."""
    want = {"carp_600k": 0.6e6, "carp_38M": 38e6, "carp_76M": 76e6, "carp_640M": 640e6}
    for name, n in want.items():
        with torch.device("meta"):
            model = CARP(registry.get(name).config)
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - n) / n < 0.03, (name, count)
    assert registry.get("carp_640M").config == carp_config("carp_640M")
    assert registry.get("carp_640M").config.d_h == 1280 and registry.get("carp_38M").config.d_h == 512


def test_registry_entries_download_from_zenodo_like_sequence_models():
    from sequence_models.pretrained import CARP_URL

    for name in ("carp_600k", "carp_38M", "carp_76M", "carp_640M"):
        e = registry.get(name)
        assert e.family.name == "carp" and e.url == f"{CARP_URL}{name}.pt?download=1"
        assert e.regression_url is None and e.hf_repo is None


def test_published_name_loads_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """Where sequence-models' torch.hub download leaves the file, offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("PROTLM_OFFLINE", "1")
    from protlm.pretrained.download import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="zenodo.org/record/6564798/files/carp_600k.pt"):
        load_model_and_alphabet("carp_600k")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    net, meta = R.reference_bytenet(**R.SHAPES["carp_600k"])
    R.write_published(net, meta, tmp_path / "hub" / "checkpoints" / "carp_600k.pt")
    model, alphabet = load_model_and_alphabet("carp_600k")
    assert model.num_layers == 16 and alphabet == Alphabet.carp()
    R.write_published(*R.reference_bytenet(d_model=64, n_layers=2), tmp_path / "hub" / "checkpoints" / "carp_38M.pt")
    with pytest.raises(CheckpointError, match="does not hold 'carp_38M'"):
        load_model_and_alphabet("carp_38M")


def test_published_file_errors(tmp_path):
    net, meta = R.reference_bytenet(d_model=32, n_layers=2)
    state = net.state_dict()
    del state["last_norm.bias"]
    torch.save({**meta, "model": "carp_600k", "model_state_dict": state}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="missing keys.*lm_head.norm.bias"):
        load_model_and_alphabet(tmp_path / "a.pt")
    torch.save({**meta, "n_layers": 3, "model": "carp_600k", "model_state_dict": net.state_dict()}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="missing keys.*layers.2"):
        load_model_and_alphabet(tmp_path / "b.pt")
    torch.save({**meta, "model": "carp_600k", "model_state_dict": net.state_dict(), "x": torch.nn.ReLU()},
               tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_model_and_alphabet(tmp_path / "c.pt")  # weights_only: a pickled object is never run


def test_convert_to_protlm_folder_round_trip(tmp_path):
    from protlm.pretrained.writers import convert_checkpoint

    net, meta = R.reference_bytenet(d_model=32, n_layers=3, r=4)
    src = R.write_published(net, meta, tmp_path / "c.pt")
    out = convert_checkpoint(src, tmp_path / "folder")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    a, _ = load_model_and_alphabet(src)
    b, alphabet = load_model_and_alphabet(out)
    tokens = alphabet.get_batch_converter()([("x", SEQS[0])])[2]
    assert torch.equal(a(tokens)["logits"], b(tokens)["logits"])
    with pytest.raises(InputError, match="no Hugging Face layout"):
        convert_checkpoint(src, tmp_path / "hf", to="hf")


def test_padded_batch_equals_each_sequence_alone():
    model = debug_model()
    convert = model.alphabet.get_batch_converter()
    tokens = convert([(str(i), s) for i, s in enumerate(SEQS)])[2]
    with torch.no_grad():
        batch = model(tokens, repr_layers=range(4))
        for b, s in enumerate(SEQS):
            one = model(convert([("x", s)])[2], repr_layers=range(4))
            for k in range(4):
                assert rel(batch["representations"][k][b, : len(s)], one["representations"][k][0]) <= 1e-5
            assert rel(batch["logits"][b, : len(s)], one["logits"][0]) <= 1e-5


def test_packed_input_equals_padded():
    model = debug_model()
    a = model.alphabet
    enc = [torch.tensor(a.encode(s)) for s in SEQS]
    cu = torch.tensor([0, *torch.cumsum(torch.tensor([len(e) for e in enc]), 0).tolist()], dtype=torch.int32)
    at = torch.tensor([0, 5, 40, 70])
    with torch.no_grad():
        packed = model(torch.cat(enc), cu_seqlens=cu, repr_layers=[-1], logits_at=at)
        padded = model(a.get_batch_converter()([("x", s) for s in SEQS])[2], repr_layers=[-1])
    keep = padded["representations"][3][a.get_batch_converter()([("x", s) for s in SEQS])[2].ne(a.padding_idx)]
    assert rel(packed["representations"][3], keep) <= 1e-5
    flat = padded["logits"][a.get_batch_converter()([("x", s) for s in SEQS])[2].ne(a.padding_idx)]
    assert rel(packed["logits"], flat[at]) <= 1e-5


def test_engine_pools_residues_only_and_refuses_attention_outputs():
    model = debug_model()
    engine = Engine(model, repr_layers=[0, -1], toks_per_batch=64)
    assert not engine.packed  # convolutions would mix packed neighbours
    out = {i: rec for batch, recs in engine.run(SEQS, {"mean", "per_tok"}) for i, rec in zip(batch, recs)}
    assert sorted(out) == [0, 1, 2, 3]
    for i, rec in out.items():
        s = SEQS[i]
        with torch.no_grad():
            ref = model(model.alphabet.get_batch_converter()([("x", s)])[2], repr_layers=[3])["representations"][3][0]
        assert rec["per_tok"].shape == (2, len(s), 32)  # no BOS/EOS rows
        assert rel(rec["per_tok"][1], ref) <= 1e-5 and rel(rec["mean"][1], ref.mean(0)) <= 1e-5
    with pytest.raises(InputError, match="no attention maps"):
        list(engine.run(SEQS, {"contacts"}))
    with pytest.raises(InputError, match="no BOS"):
        list(engine.run(SEQS, {"bos"}))


def test_long_sequences_window_truncate_or_stop():
    model = debug_model(max_residues=20)
    seq = SEQS[0]  # 33 residues
    for long, n in (("window", len(seq)), ("truncate", 20)):
        [(_, [rec])] = Engine(model, long=long).run([seq], {"per_tok"})
        assert rec["per_tok"].shape[1] == n
    with pytest.raises(InputError, match="over the limit of 20"):
        list(Engine(model, long="error").run([seq], {"mean"}))
    assert carp_config().max_sequence_length > 1022  # no ESM-style 1022 limit


def test_int8_quantizes_pointwise_layers_and_bf16_runs():
    from protlm.runtime.precision import prepare_model
    from protlm.models.int8 import Int8Linear

    tokens = Alphabet.carp().get_batch_converter()([("x", s) for s in SEQS])[2]
    keep = tokens.ne(Alphabet.carp().padding_idx)
    with torch.no_grad():
        ref = debug_model()(tokens, repr_layers=[-1])["representations"][3][keep]
        for dtype, tol in (("int8", 0.05), ("bf16", 0.05)):
            model = prepare_model(debug_model(), "cpu", dtype, verbose=False)
            got = model(tokens, repr_layers=[-1])["representations"][3][keep].float()
            assert rel(got, ref) <= tol, dtype
    assert isinstance(model.layers[0].ff1, torch.nn.Linear)
    q = prepare_model(debug_model(), "cpu", "int8", verbose=False)
    assert isinstance(q.layers[0].ff1, Int8Linear) and isinstance(q.layers[0].ff2, Int8Linear)
    assert isinstance(q.layers[0].conv, torch.nn.Conv1d)  # the dilated conv stays fp32


def test_masked_marginal_is_the_log_ratio_at_the_masked_position():
    from protlm.variants.scoring import score_mutants

    model, wt = debug_model(), SEQS[0]
    [mm] = score_mutants(model, model.alphabet, wt, ["K2A"], "masked-marginal")
    [wm] = score_mutants(model, model.alphabet, wt, ["K2A"], "wt-marginal")
    a = model.alphabet
    masked = a.get_batch_converter()([("x", wt)])[2]
    plain = masked.clone()
    masked[0, 1] = a.mask_idx  # no BOS: residue 2 sits at index 1
    with torch.no_grad():
        lp_m = torch.log_softmax(model(masked)["logits"][0, 1], -1)
        lp_w = torch.log_softmax(model(plain)["logits"][0, 1], -1)
    assert mm == pytest.approx(float(lp_m[a.get_idx("A")] - lp_m[a.get_idx("K")]), abs=1e-5)
    assert wm == pytest.approx(float(lp_w[a.get_idx("A")] - lp_w[a.get_idx("K")]), abs=1e-5)


def test_masked_perplexity_runs_on_unbatched_examples():
    from protlm.evaluate.perplexity import MaskPlan, masked_perplexity

    model = debug_model()
    seqs = [s * 3 for s in SEQS]
    small = masked_perplexity(model, model.alphabet, MaskPlan(seqs, toks_per_batch=40))
    large = masked_perplexity(model, model.alphabet, MaskPlan(seqs, toks_per_batch=4096))
    assert small["masked_tokens"] == large["masked_tokens"] > 0
    assert small["perplexity"] == pytest.approx(large["perplexity"], rel=1e-5)
