"""fp32 / bf16 / int8 / auto for inference: what `auto` picks, and where int8 is refused."""

import json

import pytest
import torch

from protlm.errors import InputError
from protlm.models.int8 import is_quantized
from protlm.runtime import precision


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Example Xeon 8480
flags\t\t: fpu sse2 avx avx2 fma avx512_vnni amx_int8 avx512_bf16
processor\t: 1
model name\t: Example Xeon 8480
flags\t\t: fpu sse2 avx avx2 fma avx512_vnni amx_int8 avx512_bf16 avx512f amx_bf16
"""


class FakePath:
    """Stands for pathlib.Path inside precision: /proc/cpuinfo reads as `text` (None: unreadable)."""

    def __init__(self, text):
        self.text = text

    def __call__(self, *args):
        return self

    def read_text(self):
        if self.text is None:
            raise OSError("no /proc here")
        return self.text


def test_cpu_features_are_the_flags_of_the_first_cpu_in_cpuinfo(monkeypatch):
    monkeypatch.setattr(precision, "Path", FakePath(CPUINFO))
    feats = precision.cpu_features()
    assert feats["cpu"] == "Example Xeon 8480"
    have = {f for f in precision.FEATURES if feats[f]}
    # whole flags only (avx512_vnni is not avx512f), and only the first processor's line
    assert have == {"avx2", "fma", "avx512_vnni", "amx_int8", "avx512_bf16"}
    assert feats["torch_capability"] == torch.backends.cpu.get_cpu_capability()


def test_cpu_features_without_cpuinfo_claim_no_flag(monkeypatch):
    monkeypatch.setattr(precision, "Path", FakePath(None))
    feats = precision.cpu_features()
    assert not any(feats[f] for f in precision.FEATURES) and isinstance(feats["cpu"], str)


def test_describe_features_names_what_the_cpu_has_and_lacks():
    feats = {"cpu": "Example CPU", "torch_capability": "AVX2", **{f: f in ("avx2", "fma") for f in precision.FEATURES}}
    assert precision.describe_features(feats) == (
        "Example CPU: AVX2 FMA; no AVX512F AVX512_VNNI AVX_VNNI AVX512_BF16 AMX_BF16 AMX_INT8 (torch kernels: AVX2)")
    feats.update({f: True for f in precision.FEATURES})
    assert precision.describe_features(feats) == (
        "Example CPU: AVX2 FMA AVX512F AVX512_VNNI AVX_VNNI AVX512_BF16 AMX_BF16 AMX_INT8 (torch kernels: AVX2)")
    feats.update({f: False for f in precision.FEATURES})
    assert precision.describe_features(feats).startswith("Example CPU: none of the listed; no AVX2 FMA ")


def test_auto_picks_the_fastest_probe_and_caches_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "probe", lambda: calls.append(1) or {"fp32": 2.0, "bf16": 3.0, "int8": 1.0})
    assert precision.resolve_dtype("auto", "cpu") == "int8"
    assert "--dtype auto: int8" in capsys.readouterr().err
    assert precision.resolve_dtype("auto", "cpu") == "int8" and calls == [1]  # second time: cached
    assert "cached probe" in capsys.readouterr().err


SEQS = [("a", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"), ("b", "GSHMLEDPVDAFQ")]


def assert_close_to_fp32(model, ref):
    """Last-layer representations of `model` agree with the fp32 model `ref`: every residue's
    vector points the same way (cosine > 0.99) and no entry is off by 5% of the largest."""
    tokens = ref.alphabet.get_batch_converter()(SEQS)[2]
    n = ref.num_layers
    with torch.no_grad():
        got = model(tokens, repr_layers=[n])["representations"][n].float()
        want = ref(tokens, repr_layers=[n])["representations"][n]
    residues = tokens.ne(ref.padding_idx)
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)[residues]
    assert cos.min() > 0.99, cos.min()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_each_dtype_auto_can_choose_stays_close_to_fp32(debug_model, dtype):
    """Whichever path the probe finds fastest on this CPU, the model it prepares is the fp32 model
    to within reduced-precision rounding."""
    model = precision.prepare_model(debug_model("esm2_debug"), "cpu", dtype, verbose=False)
    assert is_quantized(model) == (dtype == "int8")
    assert {p.dtype for p in model.parameters() if p.is_floating_point()} == (
        {torch.bfloat16} if dtype == "bf16" else {torch.float32})
    assert_close_to_fp32(model, debug_model("esm2_debug"))


def test_auto_runs_the_probe_writes_it_and_prepares_the_fastest_path(tmp_path, monkeypatch, capsys, debug_model):
    """The real probe (a small shape, to stay fast): it times all three paths, the cache file keeps
    the timings and the CPU's features, `auto` is the fastest timing, and prepare_model('auto')
    gives that path's model, close to fp32."""
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "PROBE_SHAPE", (32, 64, 256))
    choice = precision.resolve_dtype("auto", "cpu")
    [cached] = (tmp_path / "cpu_probe").glob("*.json")
    record = json.loads(cached.read_text())
    seconds = record["seconds"]
    assert set(seconds) == {"fp32", "bf16", "int8"} and all(0 < t < float("inf") for t in seconds.values())
    assert choice == min(seconds, key=seconds.get)
    assert record["features"] == precision.cpu_features()
    err = capsys.readouterr().err
    assert err.startswith(f"--dtype auto: {choice} (") and "; probe, GFLOP/s: fp32 " in err

    model = precision.prepare_model(debug_model("esm2_debug"), "cpu", "auto", verbose=False)
    assert is_quantized(model) == (choice == "int8")
    assert next(model.parameters()).dtype == (torch.bfloat16 if choice == "bf16" else torch.float32)
    assert_close_to_fp32(model, debug_model("esm2_debug"))


def test_probe_is_kept_per_thread_count_and_redone_when_unreadable(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTLM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "probe", lambda: calls.append(1) or {"fp32": 1.0, "bf16": 2.0, "int8": 3.0})
    threads = torch.get_num_threads()
    assert precision.resolve_dtype("auto", "cpu", verbose=False) == "fp32" and len(calls) == 1
    [mine] = (tmp_path / "cpu_probe").glob("*.json")
    try:
        torch.set_num_threads(threads + 1)  # another thread count: timings of its own
        assert precision.resolve_dtype("auto", "cpu", verbose=False) == "fp32" and len(calls) == 2
    finally:
        torch.set_num_threads(threads)
    assert len(list((tmp_path / "cpu_probe").glob("*.json"))) == 2
    assert precision.resolve_dtype("auto", "cpu", verbose=False) == "fp32" and len(calls) == 2  # cached
    mine.write_text("{not json")
    assert precision.resolve_dtype("auto", "cpu", verbose=False) == "fp32" and len(calls) == 3
    assert json.loads(mine.read_text())["seconds"] == {"fp32": 1.0, "bf16": 2.0, "int8": 3.0}  # rewritten


def test_auto_on_cuda_is_bf16_without_a_probe(monkeypatch, capsys):
    monkeypatch.setattr(precision, "probe", lambda: pytest.fail("probed for a CUDA device"))
    assert precision.resolve_dtype("auto", "cuda:0") == "bf16"
    assert "--dtype auto: bf16 (CUDA)" in capsys.readouterr().err


def test_int8_refused_on_cuda_and_keyed_apart():
    with pytest.raises(InputError, match="CPU only"):
        precision.resolve_dtype("int8", "cuda")
    assert precision.keyed("m@1", "fp32") == "m@1" and precision.keyed("m@1", "int8") != "m@1"


def test_prepare_model_int8(debug_model):
    model = precision.prepare_model(debug_model("esm2_debug"), "cpu", "int8")
    assert is_quantized(model) and not model.training
