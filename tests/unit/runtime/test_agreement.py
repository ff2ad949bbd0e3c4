"""`--dtype auto` on a named model: each precision timed and compared with fp32 on the model
itself; the fastest with cosine >= 0.999 is taken, and the measurement is made once."""

import pytest
import torch

from protlm.pretrained.load import load_model_and_alphabet
from protlm.pretrained.protlm_format import save_protlm
from protlm.runtime import agreement, precision
from protlm.runtime.options import InferenceOptions


def fake(seconds, cosines):
    return lambda: {k: {"seconds": seconds[k], "cosine": cosines.get(k, 1.0)} for k in seconds}


def test_auto_takes_the_fastest_precision_that_keeps_the_rule(monkeypatch, capsys):
    monkeypatch.setattr(precision, "probe", lambda: pytest.fail("a named model is measured, not probed"))
    t = {"fp32": 2.0, "bf16": 1.2, "int8": 1.0}
    assert precision.resolve_dtype("auto", "cpu", measured=fake(t, {"int8": 0.9985, "bf16": 0.9995})) == "bf16"
    err = capsys.readouterr().err
    assert err.startswith("--dtype auto: bf16 (") and "measured on the model: fp32 2000 ms" in err
    assert "int8 1000 ms, cosine 0.998500 < 0.999" in err
    assert precision.resolve_dtype("auto", "cpu", verbose=False, measured=fake(t, {})) == "int8"
    assert precision.resolve_dtype("auto", "cpu", verbose=False,
                                   measured=fake(t, {"int8": 0.5, "bf16": 0.5})) == "fp32"
    slow = {"fp32": 1.0, "bf16": 7.0, "int8": 1.5}  # a CPU without bf16 or fast int8 kernels
    assert precision.resolve_dtype("auto", "cpu", verbose=False, measured=fake(slow, {})) == "fp32"


def test_a_named_model_is_measured_once(tmp_path, debug_model, monkeypatch):
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path / "cache"))
    folder = save_protlm(debug_model("esm2_debug"), tmp_path / "m")
    loads = []

    def counting_loader(name):
        loads.append(name)
        return load_model_and_alphabet(name)

    first = agreement.measure(str(folder), loader=counting_loader)
    assert set(first) == {"fp32", "bf16", "int8"} and len(loads) == 3  # one model in memory at a time
    assert first["fp32"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert all(0.99 < m["cosine"] <= 1.0 + 1e-6 and m["seconds"] > 0 for m in first.values())
    assert agreement.measure(str(folder), loader=counting_loader) == first and len(loads) == 3  # cached
    # what InferenceOptions.resolved() runs for `--dtype auto`: the cached measurement, then the choice
    opts = InferenceOptions(model=str(folder), device="cpu", dtype="auto").resolved(verbose=False)
    ok = [k for k, m in first.items() if m["cosine"] >= precision.MIN_COSINE or k == "fp32"]
    assert opts.dtype == min(ok, key=lambda k: first[k]["seconds"])


def test_the_measurement_compares_real_embeddings(debug_model):
    model = debug_model("esm2_debug")
    ref, seconds = agreement.timed_mean_embeddings(model, repeats=1)
    assert ref.shape == (len(agreement.PROTEINS), model.embed_dim) and seconds > 0
    # packed as one forward, each protein's mean is what its own forward gives
    tokens = model.alphabet.get_batch_converter()([agreement.PROTEINS[2]])[2]
    with torch.no_grad():
        alone = model(tokens, repr_layers=[-1])["representations"]
    torch.testing.assert_close(ref[2], next(iter(alone.values()))[0].mean(0), atol=1e-5, rtol=0)
    other, _ = agreement.timed_mean_embeddings(debug_model("esm2_debug", seed=1), repeats=1)
    assert torch.nn.functional.cosine_similarity(other, ref, dim=1).min() < precision.MIN_COSINE


@pytest.mark.parametrize("name", ["esm1b_debug", "prot_t5_debug", "carp_debug"])
def test_every_family_can_be_measured(debug_model, name):
    """ProtT5 (padded only) runs one forward per protein; the means are each protein's own."""
    model = debug_model(name)
    means, seconds = agreement.timed_mean_embeddings(model, repeats=1)
    assert means.shape[0] == len(agreement.PROTEINS) and seconds > 0 and torch.isfinite(means).all()
    tokens = model.alphabet.get_batch_converter()([agreement.PROTEINS[0]])[2]
    with torch.no_grad():
        alone = next(iter(model(tokens, repr_layers=[-1])["representations"].values()))[0].mean(0)
    torch.testing.assert_close(means[0], alone.float(), atol=1e-5, rtol=0)
