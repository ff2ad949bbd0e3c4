"""`--dtype auto` keeps a faster precision only when the model's own embeddings stay within
cosine 0.999 of fp32; the measurement is made once per weights and precision."""

import pytest
import torch

from protlm.pretrained.load import load_model_and_alphabet
from protlm.pretrained.protlm_format import save_protlm
from protlm.runtime import agreement, precision
from protlm.runtime.options import InferenceOptions


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """int8 fastest, then bf16, then fp32 (a fixed probe; the real one is tested in test_precision)."""
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "probe", lambda: {"fp32": 2.0, "bf16": 1.5, "int8": 1.0})


def test_auto_passes_over_a_precision_below_the_rule(probe, capsys):
    cos = {"int8": 0.998, "bf16": 0.9995}
    assert precision.resolve_dtype("auto", "cpu", check=cos.get) == "bf16"
    err = capsys.readouterr().err
    assert "int8 mean-embedding cosine 0.998000 against fp32 < 0.999: not taken" in err
    assert "bf16 mean-embedding cosine 0.999500" in err
    assert precision.resolve_dtype("auto", "cpu", verbose=False, check=lambda dt: 0.5) == "fp32"
    assert precision.resolve_dtype("auto", "cpu", verbose=False, check=lambda dt: 1.0) == "int8"


def test_a_named_model_is_checked_once_per_weights(probe, tmp_path, debug_model, monkeypatch):
    folder = save_protlm(debug_model("esm2_debug"), tmp_path / "m")
    loads = []

    def counting_loader(name):
        loads.append(name)
        return load_model_and_alphabet(name)

    first = agreement.cosine_to_fp32(str(folder), "int8", loader=counting_loader)
    assert 0.99 < first <= 1.0 + 1e-6 and len(loads) == 1
    assert agreement.cosine_to_fp32(str(folder), "int8", loader=counting_loader) == first and len(loads) == 1
    assert list((tmp_path / "cache" / "auto").glob("*.json"))
    # what InferenceOptions.resolved() runs for `--dtype auto`: the cached check, then the choice
    opts = InferenceOptions(model=str(folder), device="cpu", dtype="auto").resolved(verbose=False)
    assert opts.dtype == ("int8" if first >= precision.MIN_COSINE else "bf16")


def test_the_check_compares_real_embeddings(debug_model):
    model = debug_model("esm2_debug")
    ref = agreement.mean_embeddings(model)
    assert ref.shape == (len(agreement.PROTEINS), model.embed_dim) and torch.isfinite(ref).all()
    noisy = debug_model("esm2_debug", seed=1)  # other weights: other embeddings
    cos = torch.nn.functional.cosine_similarity(agreement.mean_embeddings(noisy), ref, dim=1)
    assert cos.min() < precision.MIN_COSINE
