"""protlm.embed.engine on CPU: padded vs packed vs packed + torch.compile, same run, same weights.

Input: every sequence of ../shared/data/sequences/some_proteins.fasta (15 real proteins, 71 to
935 residues), ESM-2 8M shapes by default (random weights), last-layer mean embeddings, the
engine exactly as `protlm embed` runs it (length-sorted token-budget batches). Runs are
interleaved; residues/s is the best of --repeats after a warm-up pass (which, with compile,
builds the graphs: its time is reported as compile time). Outputs are checked to agree.

    OMP_NUM_THREADS=2 python benchmarks/bench_engine_cpu.py          # ~2-4 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from protlm import build_model
from protlm.data.fasta import load_fasta
from protlm.embed.engine import Engine
from protlm.models.config import esm2_config
from protlm.models.layers import init_weights

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sequences" / "some_proteins.fasta"


def run(engine: Engine, seqs: list[str]) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = engine.pooled(seqs, "mean")
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fasta", default=str(DATA))
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dim", type=int, default=320)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--toks", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    seqs = [r.sequence for r in load_fasta(args.fasta)]
    torch.manual_seed(0)
    model = build_model(esm2_config(args.layers, args.dim, args.heads))
    init_weights(model)
    model.eval()
    engines = {"padded": Engine(model, toks_per_batch=args.toks, packed=False),
               "packed": Engine(model, toks_per_batch=args.toks)}
    if not args.no_compile:
        engines["packed+compile"] = Engine(model, toks_per_batch=args.toks, compile=True)
    n_res = sum(len(s) for s in seqs)
    print(f"{len(seqs)} sequences, {n_res} residues; ESM-2 {args.layers}x{args.dim}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    warm, best, outs = {}, {k: float("inf") for k in engines}, {}
    for name, eng in engines.items():
        warm[name], outs[name] = run(eng, seqs)
    for _ in range(args.repeats):
        for name, eng in engines.items():  # interleaved: load on the machine hits every path alike
            best[name] = min(best[name], run(eng, seqs)[0])
    for name in engines:
        err = (outs[name] - outs["padded"]).abs().max().item()
        extra = f", first pass {warm[name]:.1f}s (compile {engines[name].compile_s:.1f}s, " \
                f"{len(engines[name]._shapes)} token counts)" if engines[name].compile else ""
        print(f"{name:15s} {n_res / best[name]:8.0f} residues/s  x{best['padded'] / best[name]:.2f} vs padded"
              f"  max|diff| {err:.1e}{extra}")


if __name__ == "__main__":
    main()
