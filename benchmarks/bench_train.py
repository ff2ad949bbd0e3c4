"""Training throughput (tokens/s) and model FLOP utilisation: protlm vs a plain loop around fair-esm.

Both sides train the same ESM-2 configuration from the same initial weights on the same masked
batch (built by protlm's data pipeline from the given FASTA), with the same AdamW settings:
protlm through `protlm.train.loop.train_step` (the function `protlm train` runs), fair-esm
through a plain forward / masked cross-entropy / backward / clip / step loop.

FLOPs per step = 6 x non-embedding parameters x tokens + 12 x layers x d x T x tokens (attention
scores and mixing, forward + backward; PaLM appendix B convention), counting real (non-padding)
tokens. MFU on CPU is relative to the measured fp32 matmul peak of this machine (a large
torch.mm with the same threads), since CPUs have no single published peak; on GPU use --peak-tflops.

    python benchmarks/bench_train.py --fasta runs/data/pretrain.fasta              # 8M config, CPU
    python benchmarks/bench_train.py --fasta runs/data/pretrain.fasta --layers 12 --dim 480
    python benchmarks/bench_train.py --device cuda --bf16 --layers 33 --dim 1280 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from protlm.data.index import FastaIndex
from protlm.data.masking import IGNORE_INDEX
from protlm.train.batches import rank_loader
from protlm.train.config import load_config
from protlm.train.loop import make_optimizer, make_plans, train_step
from protlm.train.parallelize import Dist


def matmul_peak_flops(device, dtype, n: int = 2048, reps: int = 5) -> float:
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


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def flops_per_step(model, tokens_BT, padding_idx: int) -> float:
    cfg = model.config
    n_tok = int((tokens_BT != padding_idx).sum())
    non_emb = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "contact" not in n)
    T = tokens_BT.shape[1]
    return 6 * non_emb * n_tok + 12 * cfg.num_layers * cfg.embed_dim * T * n_tok


def fair_esm_model(cfg, state):
    import esm

    model = esm.ESM2(num_layers=cfg.num_layers, embed_dim=cfg.embed_dim, attention_heads=cfg.attention_heads,
                     alphabet=esm.Alphabet.from_architecture("ESM-1b"), token_dropout=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head.weight" == k for k in missing), (missing, unexpected)
    return model


def time_steps(step_fn, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step_fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step_fn()
    _sync(device)
    return (time.perf_counter() - t) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fasta", default="runs/data/pretrain.fasta")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dim", type=int, default=320)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--toks", type=int, default=4096, help="padded tokens per batch")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak; default: measured matmul")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(None, [f'data.train_fasta="{args.fasta}"', f"data.toks_per_batch={args.toks}",
                             "data.max_length=510", f"model.num_layers={args.layers}",
                             f"model.embed_dim={args.dim}", f"model.attention_heads={args.heads}"])
    train_plan, _ = make_plans(cfg, FastaIndex.open(args.fasta))
    _, _, inputs_BT, targets_BT = next(rank_loader(args.fasta, train_plan, 0, 0, 0, 1))
    amp = torch.bfloat16 if args.bf16 else None

    from protlm.models import build_model
    from protlm.models.layers import init_weights

    torch.manual_seed(0)
    model = build_model(cfg.model.build_config())
    init_weights(model)
    model.contact_head.requires_grad_(False)
    ref = fair_esm_model(model.config, model.state_dict()).to(device)
    ref.contact_head.requires_grad_(False)
    model.to(device)
    flops = flops_per_step(model, inputs_BT, model.padding_idx)
    n_tok = int((inputs_BT != model.padding_idx).sum())

    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batch = [(inputs_BT, targets_BT)]

    def protlm_step():
        train_step(model, batch, opt, sched, cfg, Dist(), device, amp)

    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01)
    x, y = inputs_BT.to(device), targets_BT.to(device)

    def plain_step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = ref(x)["logits"]
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    peak = args.peak_tflops * 1e12 or matmul_peak_flops(device, torch.bfloat16 if args.bf16 else torch.float32)
    out = {"device": str(device), "threads": torch.get_num_threads(), "config": f"{args.layers}L d{args.dim}",
           "batch_shape": list(inputs_BT.shape), "real_tokens": n_tok, "peak_tflops": peak / 1e12,
           "peak_source": "given" if args.peak_tflops else "measured matmul"}
    # Interleave the two to share whatever load the machine has.
    times = {"protlm": [], "fair-esm plain loop": []}
    for _ in range(2):
        times["protlm"].append(time_steps(protlm_step, args.steps, args.warmup, device))
        times["fair-esm plain loop"].append(time_steps(plain_step, args.steps, args.warmup, device))
    for name, ts in times.items():
        t = min(ts)
        out[name] = {"s_per_step": t, "tokens_per_s": n_tok / t, "mfu": flops / t / peak}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
