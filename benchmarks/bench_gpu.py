"""GPU inference: protlm (padded, packed, packed + compiled) vs fair-esm vs transformers, bf16.

Same random weights of the published shapes (ESM-2 650M: 33 x 1280, 20 heads; ESM-1b: the same
with learned positions), built as in benchmarks/bench_inference.py (fair-esm's own class,
state dict loaded into protlm and into transformers' EsmModel with sdpa attention).

Workloads
  (a) mix      the first 384 records of ../shared/data/sequences/cath_s40.fasta (real lengths,
               cropped at 1022), last-layer mean embeddings, length-sorted token-budget batches
               (4096 real tokens packed; 4096 padded tokens for the padded paths)
  (b) uniform  32 sequences x 371 residues, one batch
  (c) contacts one 1022-residue sequence with contacts: seconds and peak memory over weights

Implementations (bf16): protlm-padded (protlm.embed.engine, packed=False), protlm-packed,
protlm-compiled (packed + torch.compile, token counts bucketed to 256; compile time reported
apart, from the warm-up); fair-esm with bf16 weights (ESM-2) or fp32 weights under bf16
autocast (ESM-1b: its LayerNorms and learned positions are not bf16-safe in fair-esm 2.0.0);
transformers EsmModel, sdpa, bf16 weights.

Reported per run: residues/s (median of --repeats, runs interleaved A,B,C,...), ratio to
fair-esm, % of the bf16 matmul peak measured here (8192^3 matmuls), peak memory over weights.
Model FLOPs: 2 x (non-embedding parameters) per real token + 4 x L x D per token per layer
for attention (QK^T and AV over the sequence's own length).

    python benchmarks/bench_gpu.py                 # H100: both families, < 6 minutes
    python benchmarks/bench_gpu.py --family esm2   # one family
    python benchmarks/bench_gpu.py --smoke         # tiny shapes on CPU, < 1 minute
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build_reference, build_transformers  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sequences" / "cath_s40.fasta"
TOKS = 4096
AA = "ACDEFGHIKLMNPQRSTVWY"


# ---------------------------------------------------------------- inputs and models
def workloads(smoke: bool, fasta: Path = DATA) -> dict[str, list[str]]:
    from protlm.data.fasta import read_fasta
    import itertools
    import random

    n_mix, n_uni, uni_len, c_len = (12, 2, 371, 120) if smoke else (384, 32, 371, 1022)
    mix = [r.sequence[:1022] for r in itertools.islice(read_fasta(fasta), n_mix)]
    rng = random.Random(0)
    uniform = ["".join(rng.choice(AA) for _ in range(uni_len)) for _ in range(n_uni)]
    return {"mix": mix, "uniform": uniform, "contacts": ["".join(rng.choice(AA) for _ in range(c_len))]}


def config(family: str, smoke: bool):
    from protlm.models.config import esm1b_config, esm2_config

    cfg = esm1b_config() if family == "esm1b" else esm2_config(33, 1280, 20)
    if smoke:
        cfg = dataclasses.replace(cfg, num_layers=2, embed_dim=64, ffn_embed_dim=256, attention_heads=4)
    return cfg


def build_all(cfg, device, dtype) -> dict:
    """fair-esm, protlm and transformers models with one set of seeded random weights."""
    from protlm import build_model

    torch.manual_seed(0)
    ref, _ = build_reference(cfg)
    ours = build_model(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    hf = build_transformers(cfg, ours.state_dict()).esm  # EsmModel, sdpa
    # ESM-1b in fair-esm: fp32 weights under bf16 autocast (only when the run is bf16)
    autocast = cfg.position_embedding == "learned" and dtype != torch.float32
    models = {"fair-esm": ref.to(device, torch.float32 if autocast or dtype == torch.float32 else dtype),
              "protlm": ours.to(device, dtype), "transformers": hf.to(device, dtype)}
    return models, autocast


# ---------------------------------------------------------------- what each implementation runs
def engines(model, compile_ok: bool) -> dict:
    from protlm.embed.engine import Engine

    out = {"protlm-padded": Engine(model, toks_per_batch=TOKS, packed=False),
           "protlm-packed": Engine(model, toks_per_batch=TOKS)}
    if compile_ok:
        out["protlm-compiled"] = Engine(model, toks_per_batch=TOKS, compile=True)
    return out


def padded_batches(seqs: list[str]) -> list[list[int]]:
    """fair-esm's extract.py batching: length-sorted, filled to TOKS padded tokens."""
    from protlm.data.batching import budget_batches

    return budget_batches([len(s) + 2 for s in seqs], TOKS)


def reference_mean(name: str, model, dim: int, seqs: list[str], batches, device, autocast: bool) -> torch.Tensor:
    """Mean last-layer embeddings from fair-esm or transformers on padded batches."""
    from protlm import Alphabet

    conv = Alphabet().get_batch_converter()
    out = torch.zeros(len(seqs), dim)
    ctx = torch.autocast(device.type, torch.bfloat16) if autocast and name == "fair-esm" else nullcontext()
    for b in batches:
        toks = conv([("x", seqs[i]) for i in b])[2].to(device)
        with torch.no_grad(), ctx:
            if name == "fair-esm":
                n = len(model.layers)
                x = model(toks, repr_layers=[n])["representations"][n]
            else:
                x = model(input_ids=toks, attention_mask=toks.ne(1)).last_hidden_state
        x = x.float()
        lens = torch.tensor([len(seqs[i]) for i in b], device=device)
        pos = torch.arange(toks.shape[1], device=device)
        m = ((pos >= 1) & (pos <= lens[:, None])).float()
        out[b] = ((x * m[..., None]).sum(1) / lens[:, None]).cpu()
    return out


def contacts_fn(name: str, model, seq: str, device, autocast: bool):
    from protlm import Alphabet

    toks = Alphabet().get_batch_converter()([("x", seq)])[2].to(device)
    ctx = torch.autocast(device.type, torch.bfloat16) if autocast and name == "fair-esm" else nullcontext()

    def run():
        with torch.no_grad(), ctx:
            if name == "protlm":
                return model(toks, return_contacts=True, return_logits=False)["contacts"]
            if name == "fair-esm":
                return model(toks, return_contacts=True)["contacts"]
            # transformers' sdpa attention cannot return maps: its contact path needs eager
            model.set_attn_implementation("eager")
            try:
                return model.predict_contacts(toks, toks.ne(1))
            finally:
                model.set_attn_implementation("sdpa")
    return run


def _vec(x: torch.Tensor) -> torch.Tensor:
    """Engine output (N, layers, D) or a reference's (N, D) -> (N, D) float32."""
    return (x[:, 0] if x.ndim == 3 else x).float()


# ---------------------------------------------------------------- measurement
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype) -> float:
    """Measured dense matmul TFLOP/s in `dtype` (the denominator of '% of peak')."""
    n = 8192 if device.type == "cuda" else 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def model_flops(cfg, seqs: list[str]) -> float:
    D, F, nl = cfg.embed_dim, cfg.ffn_embed_dim, cfg.num_layers
    per_tok = 2 * nl * (4 * D * D + 2 * D * F)
    return sum((len(s) + 2) * per_tok + 4 * (len(s) + 2) ** 2 * D * nl for s in seqs)


def timed(fn, device) -> tuple[float, float]:
    """(seconds, peak bytes allocated over what was allocated before) of one call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else float("nan")
    return dt, peak


def interleaved(fns: dict, repeats: int, device) -> dict[str, tuple[float, float, float]]:
    """Per name: (median s, peak bytes, warm-up s); one warm-up each, then rounds A,B,C."""
    warm = {k: timed(fn, device)[0] for k, fn in fns.items()}
    times, peaks = {k: [] for k in fns}, {k: 0.0 for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            dt, peak = timed(fn, device)
            times[k].append(dt)
            peaks[k] = max(peaks[k], peak)
    return {k: (statistics.median(times[k]), peaks[k], warm[k]) for k in fns}


def bench_family(family: str, args, device, dtype, peak_tflops: float) -> None:
    cfg = config(family, args.smoke)
    models, autocast = build_all(cfg, device, dtype)
    ours = models["protlm"]
    work = workloads(args.smoke, args.fasta)
    engs = engines(ours, not args.no_compile)
    for wname in ("mix", "uniform"):
        seqs = work[wname]
        batches = padded_batches(seqs)
        fns = {k: (lambda e=e: e.pooled(seqs, "mean")) for k, e in engs.items()}
        for ref in ("fair-esm", "transformers"):
            fns[ref] = (lambda r=ref: reference_mean(r, models[r], cfg.embed_dim, seqs, batches, device, autocast))
        res = interleaved(fns, args.repeats, device)
        # agreement with fair-esm (bf16: loose; the fp32 parity tests are in tests/reference)
        ref_out = fns["fair-esm"]()
        diff = {k: (_vec(fns[k]()) - ref_out).abs().max().item() for k in fns if k != "fair-esm"}
        n_res = sum(len(s) for s in seqs)
        flops = model_flops(cfg, seqs)
        print(f"\n{family} {wname}: {len(seqs)} sequences, {n_res} residues "
              f"({len(batches)} padded batches)")
        print(f"  {'implementation':16s} {'residues/s':>11s} {'vs fair-esm':>11s} {'% peak':>7s} "
              f"{'peak MiB':>9s} {'max|diff|':>9s}  notes")
        for k, (s, peak, warm) in res.items():
            note = f"compile {engs[k].compile_s:.1f}s (warm-up {warm:.1f}s)" if k == "protlm-compiled" else ""
            if k == "fair-esm" and autocast:
                note = "fp32 weights, bf16 autocast"
            print(f"  {k:16s} {n_res / s:11.0f} {res['fair-esm'][0] / s:10.2f}x "
                  f"{100 * flops / s / 1e12 / peak_tflops:6.1f}% {peak / 2**20:9.0f} "
                  f"{diff.get(k, 0.0):9.1e}  {note}")
    seq = work["contacts"][0]
    fns = {k: contacts_fn(k, m, seq, device, autocast) for k, m in models.items()}
    res = interleaved(fns, max(1, args.repeats // 2), device)
    print(f"\n{family} contacts: 1 x {len(seq)}")
    for k, (s, peak, _) in res.items():
        print(f"  {k:16s} {s:8.3f} s  peak over weights {peak / 2**20:8.0f} MiB")
    del models, engs
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["esm2", "esm1b", "both"], default="both")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, CPU, fp32: checks the script runs")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--fasta", type=Path, default=DATA,
                    help="the mix's source (a copy of cath_s40.fasta on a machine without ../shared)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.smoke:
        args.repeats = 1
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    peak = matmul_peak(device, dtype)
    print(f"{name}, torch {torch.__version__}, {dtype}; measured matmul peak {peak:.1f} TFLOP/s")
    t0 = time.perf_counter()
    for family in (["esm2", "esm1b"] if args.family == "both" else [args.family]):
        bench_family(family, args, device, dtype, peak)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s (model building and compilation included)")


if __name__ == "__main__":
    main()
