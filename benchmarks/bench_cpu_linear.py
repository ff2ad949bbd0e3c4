"""fp32 Linear on the CPU: PyTorch's default (F.linear -> MKL sgemm) against oneDNN
(protlm.models.cpu_linear.OneDNNLinear, what prepare_model runs), on the ESM-2 shapes.

Prints GFLOP/s (best of --repeats calls) per shape and thread count, and the largest difference
between the two against an fp64 reference. The reason protlm's fp32 is on oneDNN: MKL runs its
AVX2 code on AMD CPUs, oneDNN uses AVX-512 where the CPU has it.

    python benchmarks/bench_cpu_linear.py
    python benchmarks/bench_cpu_linear.py --tokens 4096 --threads 1 2 --out benchmarks/results/cpu_linear.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# (in, out) of each ESM-2 shape's Linears: q/k/v/out (d, d), fc1 (d, 4d), fc2 (4d, d)
SHAPES = {"35M": 480, "150M": 640, "650M": 1280}


def best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    from protlm.models.cpu_linear import available, use_onednn_linear_
    from protlm.runtime.precision import cpu_features, describe_features

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, len(os.sched_getaffinity(0))}))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if not available():
        print("this torch has no oneDNN linear op", file=sys.stderr)
        return 1
    print(describe_features(cpu_features()), f"torch {torch.__version__}")
    rows = []
    torch.manual_seed(0)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape, d in SHAPES.items():
            for d_in, d_out in ((d, d), (d, 4 * d), (4 * d, d)):
                lin = torch.nn.Linear(d_in, d_out)
                fast = copy.deepcopy(lin)
                use_onednn_linear_(fast)
                x = torch.randn(args.tokens, d_in)
                with torch.inference_mode():
                    ref = F.linear(x.double(), lin.weight.double(), lin.bias.double())
                    err = {k: (m(x).double() - ref).abs().max().item() for k, m in (("mkl", lin), ("onednn", fast))}
                    t = {k: best_seconds(lambda m=m: m(x), args.repeats) for k, m in (("mkl", lin), ("onednn", fast))}
                flops = 2 * args.tokens * d_in * d_out
                row = {"threads": threads, "shape": shape, "in": d_in, "out": d_out,
                       **{f"{k}_gflops": flops / v / 1e9 for k, v in t.items()}, **{f"{k}_err": v for k, v in err.items()}}
                rows.append(row)
                print(f"{threads} thr {shape:5s} {d_in:5d} -> {d_out:5d}: F.linear {row['mkl_gflops']:6.0f}  "
                      f"oneDNN {row['onednn_gflops']:6.0f} GFLOP/s ({row['onednn_gflops'] / row['mkl_gflops']:.2f}x); "
                      f"max err vs fp64 {err['mkl']:.1e} / {err['onednn']:.1e}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"cpu": describe_features(cpu_features()), "tokens": args.tokens,
                                        "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
