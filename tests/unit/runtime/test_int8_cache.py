"""Quantized weights are written once beside the model, reused, and redone when it changes."""

import os

import torch

from protlm.models.int8 import is_quantized
from protlm.runtime import int8_cache
from protlm.runtime.int8_cache import cache_path, quantize_cached
from protlm.pretrained.protlm_format import save_protlm


def test_cache_written_once_reused_and_redone_when_weights_change(tmp_path, debug_model, monkeypatch):
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path / "cache"))
    folder = save_protlm(debug_model("esm2_debug"), tmp_path / "m")
    cached = cache_path(folder)
    assert cached == tmp_path / "m.int8.safetensors"  # beside the folder, not inside it

    first = debug_model("esm2_debug")
    assert quantize_cached(first, folder) is False and cached.is_file()
    written = cached.stat().st_mtime_ns
    calls = []
    real = int8_cache.quantize_
    monkeypatch.setattr(int8_cache, "quantize_", lambda m, stored=None: calls.append(stored is None) or real(m, stored))
    second = debug_model("esm2_debug")
    assert quantize_cached(second, folder) is True and calls == [False]  # read, not quantized
    assert cached.stat().st_mtime_ns == written and is_quantized(second)
    tokens = torch.randint(4, 24, (1, 16))
    with torch.inference_mode():
        torch.testing.assert_close(first(tokens)["logits"], second(tokens)["logits"])

    weights = folder / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "a new model"
    assert quantize_cached(debug_model("esm2_debug"), folder) is False and calls[-1] is True


def test_packaged_model_cached_in_protlm_cache_dir(tmp_path, monkeypatch):
    import protlm

    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path))
    assert cache_path("protlm_small") == tmp_path / "int8" / "protlm_small.safetensors"
    model, _ = protlm.load_model_and_alphabet("protlm_small", dtype="int8")
    assert is_quantized(model) and (tmp_path / "int8" / "protlm_small.safetensors").is_file()


def test_model_without_files_is_quantized_uncached(tmp_path, debug_model, monkeypatch):
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path))
    model = debug_model("esm1b_debug")
    assert quantize_cached(model, None) is False and is_quantized(model)
    assert not any(tmp_path.rglob("*.safetensors"))
