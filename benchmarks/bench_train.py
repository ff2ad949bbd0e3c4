"""Training throughput, model FLOP utilisation and peak memory: protlm vs a plain fair-esm loop.

Every variant trains the same ESM-2 configuration from the same initial weights on the same
optimiser steps: real sequences from a FASTA file (random crops of <= --max-length residues,
masked as `protlm train` masks them), grouped by protlm's packed batch plan into steps of
--toks real tokens; --batches distinct steps are cycled so that shapes change as in training.
The variants differ only in how they run a step:

  packed    protlm `train_step` on the packed batch (varlen attention, LM head at masked
            positions only), compiled per layer when --compile is on (auto: on CUDA)
  padded    protlm `train_step` on the same sequences in length-sorted padded micro-batches of
            <= --toks padded tokens each, gradients accumulated (what data.packed=false does)
  fair-esm  a plain forward / masked cross-entropy / backward / clip / AdamW loop around fair-esm
            2.0.0's `ESM2` on those padded micro-batches (fair-esm has no packed layout)

tokens/s counts real tokens (BOS/EOS included, padding not). FLOPs per step count useful work
only, the same for every variant: 6 x non-embedding parameters x tokens + 12 x layers x d x
sum over sequences of L^2 (attention scores and mixing within each sequence, forward + backward;
PaLM appendix B). MFU is given against two peaks: the device's published dense peak (--peak-tflops;
989 TFLOP/s bf16 for an H100 SXM on CUDA, none on CPU) and the measured peak of a large matmul
in the compute dtype on the same device and threads. Peak memory: torch.cuda.max_memory_allocated
per variant (CUDA only).

    python benchmarks/bench_train.py --threads 1                 # CPU: ESM-2 8M shape, 3 variants
    python benchmarks/bench_train.py --preset gpu                # one H100: 650M and 150M, < 6 minutes
    python benchmarks/bench_train.py --device cuda --bf16 --layers 33 --dim 1280 --toks 16384

The data defaults to ../shared/data/sequences/cath_s40.fasta (CATH S40 domains, 14-1,174
residues, mean 161); UniRef50 is longer on average, so attention weighs more there.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from protlm.alphabet import Alphabet
from protlm.data.index import FastaIndex
from protlm.data.masking import IGNORE_INDEX
from protlm.data.batching import budget_batches
from protlm.data.sampler import BatchPlan
from protlm.models import build_model
from protlm.models.layers import init_weights
from protlm.train.batches import make_batch
from protlm.train.config import load_config
from protlm.train.loop import make_optimizer, train_step
from protlm.train.parallelize import Dist, parallelize

DEFAULT_FASTA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sequences" / "cath_s40.fasta"
SHAPES = {"8M": (6, 320, 20), "35M": (12, 480, 20), "150M": (30, 640, 20), "650M": (33, 1280, 20)}
PRESETS = {
    # ESM-2 8M shape on a CPU: every variant, interleaved twice to share the machine's load.
    "cpu": dict(device="cpu", bf16=False, shapes=["8M"], toks=4096, steps=3, warmup=1, batches=2,
                rounds=2, variants=["packed", "padded", "fair-esm"]),
    # One H100: the two configurations, protlm packed + compiled against fair-esm.
    "gpu": dict(device="cuda", bf16=True, shapes=["650M", "150M"], toks=16384, steps=10, warmup=3, batches=4,
                rounds=1, variants=["packed", "fair-esm"], peak_tflops=989.0),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int, reps: int = 10) -> float:
    """FLOP/s of the best of `reps` n x n matmuls: the peak this device reaches in practice."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def step_flops(model, lengths: list[int]) -> float:
    """Useful FLOPs of one training step on sequences of these token lengths (see the docstring)."""
    cfg = model.config
    skip = ("embed_tokens", "embed_positions", "contact_head")
    non_emb = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))
    n_tok, sq = sum(lengths), sum(n * n for n in lengths)
    return 6 * non_emb * n_tok + 12 * cfg.num_layers * cfg.embed_dim * sq


def make_steps(fasta: str, cfg, n: int):
    """`n` optimiser steps: (packed MLMBatch, padded micro-batches, token lengths) each."""
    index, alphabet, d = FastaIndex.open(fasta), Alphabet(), cfg.data
    plan = BatchPlan(np.arange(len(index)), np.asarray(index.lengths), d.toks_per_batch, d.max_length, d.seed,
                     packed=True)
    steps = []
    for rows in plan.epoch_batches(0)[:n]:
        packed = make_batch(index, rows, plan, 0, alphabet, cfg.data.mask_prob, packed=True)
        # The same records, length-sorted into padded micro-batches within the same budget.
        costs = plan.costs
        order = rows[np.argsort(costs[rows], kind="stable")]
        micro = [make_batch(index, m, plan, 0, alphabet, cfg.data.mask_prob, packed=False)
                 for m in budget_batches(costs, cfg.data.toks_per_batch, order=order)]
        steps.append((packed, micro, torch.diff(packed.cu_seqlens).tolist()))
    return steps


def fair_esm_model(cfg, state):
    import esm

    model = esm.ESM2(num_layers=cfg.num_layers, embed_dim=cfg.embed_dim, attention_heads=cfg.attention_heads,
                     alphabet=esm.Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head.weight" == k for k in missing), (missing, unexpected)
    return model


def protlm_runner(base, cfg, device, amp, compile_, packed: bool):
    """A step function for protlm's train_step in one layout, and the model it trains."""
    model = parallelize(copy.deepcopy(base), "none", Dist(), device, False, compile_ if packed else False)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def step(batch):
        packed_batch, micro, _ = batch
        return train_step(model, [packed_batch] if packed else micro, opt, sched, cfg, Dist(), device, amp)

    return step, model


def fair_esm_runner(base, cfg, device, amp):
    """The plain loop: fair-esm forward on padded micro-batches, masked CE, accumulate, clip, step."""
    model = fair_esm_model(base.config, base.state_dict()).to(device)
    model.contact_head.requires_grad_(False)
    o = cfg.optim
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas),
                            eps=o.eps, weight_decay=o.weight_decay)

    def step(batch):
        _, micro, _ = batch
        n_masked = sum(m.num_masked() for m in micro)
        total = 0.0
        for m in micro:
            x, y = m.inputs.to(device), m.targets.to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x)["logits"]
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
            (loss / n_masked).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total / n_masked

    return step, model


def time_variant(step, steps, n_steps: int, warmup: int, device) -> dict:
    """Seconds per step (mean over n_steps after `warmup` untimed steps) and the first loss."""
    t = time.perf_counter()
    first_loss = step(steps[0])
    for k in range(1, warmup):
        step(steps[k % len(steps)])
    _sync(device)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for k in range(n_steps):
        step(steps[k % len(steps)])
    _sync(device)
    return {"s_per_step": (time.perf_counter() - t) / n_steps, "warmup_s": warm_s, "first_loss": first_loss}


def bench_shape(shape: str, args, device, amp, peaks) -> dict:
    layers, dim, heads = SHAPES[shape]
    cfg = load_config(None, [f'data.train_fasta="{args.fasta}"', f"data.toks_per_batch={args.toks}",
                             f"data.max_length={args.max_length}",
                             f"model.num_layers={layers}", f"model.embed_dim={dim}", f"model.attention_heads={heads}"])
    steps = make_steps(args.fasta, cfg, max(args.batches, 1))
    torch.manual_seed(0)
    base = build_model(cfg.model.build_config())
    init_weights(base)
    base.contact_head.requires_grad_(False)
    tokens = [sum(s[2]) for s in steps]
    flops = [step_flops(base, s[2]) for s in steps]
    # Mean over the steps the timed loop visits (it cycles through `steps`).
    visit = [k % len(steps) for k in range(args.steps)]
    mean_tokens, mean_flops = np.mean([tokens[k] for k in visit]), np.mean([flops[k] for k in visit])
    out = {"shape": f"{shape}: {layers} layers, d={dim}, {heads} heads",
           "params_M": sum(p.numel() for p in base.parameters()) / 1e6,
           "steps": [{"sequences": len(s[2]), "tokens": sum(s[2]), "padded_micro_batches": len(s[1]),
                      "padded_tokens": sum(m.inputs.numel() for m in s[1])} for s in steps]}
    runners = {}
    results = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for v in args.variants:
            try:
                if v not in runners:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    runners[v] = (fair_esm_runner(base, cfg, device, amp) if v == "fair-esm" else
                                  protlm_runner(base, cfg, device, amp, args.compile, packed=v == "packed"))
                r = time_variant(runners[v][0], steps, args.steps, args.warmup, device)
                if device.type == "cuda":
                    r["peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
            except torch.cuda.OutOfMemoryError:  # reported, and the other variants still run
                r = {"error": "CUDA out of memory"}
                runners.pop(v, None)
            results[v].append(r)
            if args.rounds == 1:  # one variant's model and optimiser on the device at a time
                runners.pop(v, None)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    for v, rs in list(results.items()):
        rs = [r for r in rs if "error" not in r]
        if not rs:
            out[v] = results.pop(v)[0]
            continue
        best = min(rs, key=lambda r: r["s_per_step"])
        t = best["s_per_step"]
        out[v] = {**best, "first_loss": rs[0]["first_loss"],  # round 1: every variant from the same weights
                  "tokens_per_s": mean_tokens / t,
                  **{f"mfu_vs_{name}": mean_flops / t / peak for name, peak in peaks.items()}}
    first = [out[v]["first_loss"] for v in results]
    out["first_loss_spread"] = max(first) - min(first)  # the variants compute the same step
    for v in results:
        if v != "packed" and "packed" in results:
            out[f"packed_over_{v}"] = out["packed"]["tokens_per_s"] / out[v]["tokens_per_s"]
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--fasta", default=str(DEFAULT_FASTA))
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="ESM-2 shapes (preset's by default)")
    ap.add_argument("--layers", type=int, help="a custom shape: layers (with --dim, --heads)")
    ap.add_argument("--dim", type=int)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--toks", type=int, help="real tokens per step (packed budget; padded micro-batch budget)")
    ap.add_argument("--max-length", type=int, default=1022, help="residues per sequence (random crop)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--batches", type=int, help="distinct steps cycled through")
    ap.add_argument("--rounds", type=int, help="times each variant is timed, interleaved; best kept")
    ap.add_argument("--variants", nargs="+", choices=["packed", "padded", "fair-esm"])
    ap.add_argument("--device")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast")
    ap.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                    help="torch.compile protlm's layers (packed variant); auto: on CUDA")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, help="published dense peak of the device")
    ap.add_argument("--matmul-n", type=int, help="matrix size of the measured peak (CPU 2048, GPU 8192)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.layers:
        SHAPES["custom"] = (args.layers, args.dim, args.heads)
        args.shapes = ["custom"]
    args.compile = {"true": True, "false": False}.get(args.compile, "auto")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.fasta).is_file():
        raise SystemExit(f"no FASTA at {args.fasta}: give --fasta (e.g. a copy of ../shared/data/sequences/cath_s40.fasta)")
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.bf16 else None
    dtype = amp or torch.float32
    t0 = time.perf_counter()
    peaks = {"measured_matmul": matmul_peak_flops(device, dtype, args.matmul_n or (8192 if device.type == "cuda" else 2048))}
    if args.peak_tflops:
        peaks = {"published_peak": args.peak_tflops * 1e12, **peaks}
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "dtype": str(dtype), "compile": args.compile, "fasta": args.fasta,
           "toks_per_step": args.toks, "timed_steps": args.steps, "peaks_tflops": {k: v / 1e12 for k, v in peaks.items()},
           "results": []}
    for shape in args.shapes:
        out["results"].append(bench_shape(shape, args, device, amp, peaks))
        print(json.dumps(out["results"][-1], indent=2), flush=True)
    out["wall_s"] = time.perf_counter() - t0
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
