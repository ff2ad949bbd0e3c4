"""fp32 / bf16 / int8 / auto for inference: what `auto` picks, and where int8 is refused."""

import pytest

from protlm.runtime import precision
from protlm.errors import InputError
from protlm.models.int8 import is_quantized


def test_cpu_features_reported():
    feats = precision.cpu_features()
    assert set(precision.FEATURES) <= set(feats) and "cpu" in feats
    assert "torch kernels" in precision.describe_features(feats)


def test_auto_picks_the_fastest_probe_and_caches_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "probe", lambda: calls.append(1) or {"fp32": 2.0, "bf16": 3.0, "int8": 1.0})
    assert precision.resolve_dtype("auto", "cpu") == "int8"
    assert "--dtype auto: int8" in capsys.readouterr().err
    assert precision.resolve_dtype("auto", "cpu") == "int8" and calls == [1]  # second time: cached
    assert "cached probe" in capsys.readouterr().err


def test_probe_measures_three_paths():
    times = precision.probe(repeats=1)
    assert set(times) == {"fp32", "bf16", "int8"} and all(t > 0 for t in times.values())


def test_int8_refused_on_cuda_and_keyed_apart():
    with pytest.raises(InputError, match="CPU only"):
        precision.resolve_dtype("int8", "cuda")
    assert precision.keyed("m@1", "fp32") == "m@1" and precision.keyed("m@1", "int8") != "m@1"


def test_prepare_model_int8(debug_model):
    model = precision.prepare_model(debug_model("esm2_debug"), "cpu", "int8")
    assert is_quantized(model) and not model.training
