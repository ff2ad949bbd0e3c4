"""Inference precision: fp32 / bf16 / fp16 casts, int8 quantization, and `auto`.

`prepare_model(model, device, dtype, source)` is what every inference command calls after
loading. `auto` picks, on a CPU, the fastest of fp32, bf16 and int8 that keeps mean embeddings
within cosine 0.999 of fp32, measured on the named model itself (protlm.runtime.agreement,
remembered per weights and CPU). With no model named, a short probe decides on speed alone (one
Linear of the ESM-1b FFN shape, 256 tokens, about a second; cached per CPU, torch version and
thread count in protlm's cache folder). On CUDA it picks bf16. It says what it chose and why.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from protlm.dtypes import canonical, cast_parameters_
from protlm.errors import InputError

FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
PROBE_VERSION = 3  # 2: int8 with fused per-token passes on oneDNN; 3: fp32 on oneDNN
PROBE_SHAPE = (256, 1280, 5120)  # tokens, in, out: ESM-1b / ESM-2 650M fc1
MIN_COSINE = 0.999  # auto's accuracy rule: mean embeddings against fp32 (protlm.runtime.agreement)


def cpu_features() -> dict[str, object]:
    """CPU model name, the instruction-set flags that matter for bf16/int8, and torch's view."""
    flags, name = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:  # not Linux: flags unknown, the measured probe still decides
        pass
    return {"cpu": name, **{f: f in flags for f in FEATURES},
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def describe_features(feats: dict[str, object]) -> str:
    """'AMD EPYC ...: AVX2 FMA; no AVX512_VNNI ... (torch: AVX2)'."""
    have = [f.upper() for f in FEATURES if feats[f]]
    lack = [f.upper() for f in FEATURES if not feats[f]]
    return (f"{feats['cpu']}: {' '.join(have) or 'none of the listed'}"
            f"{'; no ' + ' '.join(lack) if lack else ''} (torch kernels: {feats['torch_capability']})")


def probe(repeats: int = 3) -> dict[str, float]:
    """Seconds per call (best of `repeats`) of one Linear in fp32, bf16 and int8 on this CPU."""
    from protlm.models import cpu_linear
    from protlm.models.int8 import Int8Linear

    T, d_in, d_out = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(d_in, d_out)
    if cpu_linear.enabled():  # fp32 as prepare_model will run it
        cpu_linear.use_onednn_linear_(lin)
    x = torch.randn(T, d_in, generator=gen)
    bf16 = torch.nn.Linear(d_in, d_out).to(torch.bfloat16)
    bf16.load_state_dict(lin.state_dict())
    paths = {"fp32": (lin, x), "bf16": (bf16, x.bfloat16()), "int8": (Int8Linear.from_linear(lin), x)}
    out = {}
    with torch.inference_mode():
        for name, (f, inp) in paths.items():
            f(inp)  # warm-up (packs the int8 weight)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                f(inp)
                best = min(best, time.perf_counter() - t0)
            out[name] = best
    return out


def _probe_file() -> Path:
    from protlm.runtime.int8_cache import cache_root

    feats = cpu_features()
    from protlm.models.int8 import PACK_ENGINE

    # PROBE_VERSION: bumped when a path's kernels change, so an old cached timing is not reused
    key = json.dumps([feats, torch.__version__, torch.get_num_threads(), torch.backends.quantized.engine,
                      PACK_ENGINE, PROBE_VERSION])
    return cache_root() / "cpu_probe" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def auto_dtype(device: str = "cpu", verbose: bool = True, measured=None) -> str:
    """The dtype `auto` stands for on `device` (see the module docstring); prints why to stderr.

    `measured()` -> {dtype: {"seconds", "cosine"}} measured on the model at hand
    (protlm.runtime.agreement.measure): the fastest precision with cosine >= MIN_COSINE against
    fp32 is chosen. None (no model named): the one-Linear probe decides."""
    if str(device).startswith("cuda"):
        choice, why = "bf16", "CUDA"
    elif measured is not None:
        m = measured()
        ok = [k for k, v in m.items() if k == "fp32" or v["cosine"] >= MIN_COSINE]
        choice = min(ok, key=lambda k: m[k]["seconds"])
        why = f"{describe_features(cpu_features())}; measured on the model: " + ", ".join(
            f"{k} {v['seconds'] * 1e3:.0f} ms, cosine {v['cosine']:.6f}{'' if k in ok else ' < ' + str(MIN_COSINE)}"
            for k, v in m.items())
    else:
        times, source = _probed()
        choice = min(times, key=times.get)
        rates = ", ".join(f"{k} {2 * PROBE_SHAPE[0] * PROBE_SHAPE[1] * PROBE_SHAPE[2] / v / 1e9:.0f}"
                          for k, v in times.items())
        why = f"{describe_features(cpu_features())}; {source}, GFLOP/s: {rates}"
    if verbose:
        print(f"--dtype auto: {choice} ({why})", file=sys.stderr, flush=True)
    return choice


def _probed() -> tuple[dict[str, float], str]:
    """The probe's seconds per precision, from the cache when this CPU was probed before."""
    path = _probe_file()
    try:
        return json.loads(path.read_text())["seconds"], f"cached probe {path}"
    except (OSError, ValueError, KeyError):
        times = probe()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"features": cpu_features(), "seconds": times}, indent=1))
    except OSError:
        pass
    return times, "probe"


def resolve_dtype(dtype: str, device: str, verbose: bool = True, measured=None) -> str:
    """A concrete dtype name: `auto` resolved (with `measured`, see auto_dtype), int8 refused on
    CUDA, aliases canonical."""
    short = canonical(dtype)
    if short == "auto":
        short = auto_dtype(device, verbose, measured)
    if short == "int8" and not str(device).startswith("cpu"):
        raise InputError(f"--dtype int8 runs on the CPU only (PyTorch's quantized CPU kernels), not "
                         f"on {device}; use --dtype bf16 on a GPU")
    return short


def keyed(identity: str, dtype: str) -> str:
    """A cache or resume key for outputs computed in `dtype`: fp32 keeps the plain identity,
    so caches written before dtypes were keyed stay valid."""
    return identity if dtype == "fp32" else f"{identity}|dtype={dtype}"


def prepare_model(model, device: str, dtype: str = "fp32", source=None, verbose: bool = True):
    """Move, cast or quantize `model` for inference (outputs stay float32); eval mode.

    int8: quantized in place (protlm.models.int8), the int8 weights read from / written to the
    cache for `source` (the model's name or path; None: not cached). On the CPU the fp32 Linear
    layers left then run on oneDNN (protlm.models.cpu_linear). Returns the model.
    """
    from protlm.models import cpu_linear
    from protlm.runtime.int8_cache import quantize_cached

    short = resolve_dtype(dtype, device, verbose)
    model = model.to(device).eval()
    if short == "int8":
        quantize_cached(model, source, verbose)
    else:
        model = cast_parameters_(model, short)
    if str(device).startswith("cpu") and cpu_linear.enabled():
        cpu_linear.use_onednn_linear_(model)
    return model
