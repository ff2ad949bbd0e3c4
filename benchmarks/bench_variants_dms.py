"""A deep mutational scan on a CPU: every single mutant of a 300-residue protein (300 x 19 = 5,700
variants), masked-marginal, `protlm variants score` end to end and the library's scorer alone.

Input: the first record of --fasta (cath_s40.fasta) with at least --length residues, all of them
standard, cut to --length; the mutations CSV lists A1C, A1D, ... (every position, every other
amino acid) and is kept in --workdir. Model: random weights of the ESM-2 --shape (35M by
default; seeded as in bench_cpu_peers, speed does not depend on the values) written as a protlm
folder; --dtype int8 (and fp32 for comparison) on --threads threads.

Timed, in this order:
  cli      `protlm variants score --device cpu --dtype D` in a fresh process, wall time: Python
           start, loading, quantizing (first run: int8 cache empty) or reading the int8 cache
           (second run), scoring, writing the CSV;
  library  protlm.variants.scoring.score_mutants on the prepared model, in this process.
Counted (hooks on the model): model calls (packed forwards), sequences through them and tokens,
against the naive count of one masked forward per variant (5,700 sequences of 302 tokens).
Masked-marginal masks each position once for its 19 mutants: 300 sequences, packed into
forwards of up to --toks-per-batch real tokens (the CPU cap of protlm.embed.engine).
The naive way is also timed on the first --naive-positions positions (each mutant its own
masked sequence, the same engine): its scores must equal the scorer's.

    OMP_NUM_THREADS=2 python benchmarks/bench_variants_dms.py --out benchmarks/results/variants_dms.json
    python benchmarks/bench_variants_dms.py --smoke       # 8M shape, 40 residues: seconds
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_peers import DATA, build_weights, describe, cpu_info  # noqa: E402

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def wild_type(fasta: Path, length: int) -> tuple[str, str]:
    from protlm.data.fasta import read_fasta

    for r in read_fasta(fasta):
        if len(r.sequence) >= length and set(r.sequence) <= set(AMINO):
            return r.id, r.sequence[:length]
    raise SystemExit(f"no record of {fasta} has {length} standard residues")


def all_single_mutants(wt: str) -> list[str]:
    return [f"{w}{i}{m}" for i, w in enumerate(wt, start=1) for m in AMINO if m != w]


class Counter:
    """Model calls, sequences and tokens through a model's forward (cu_seqlens when packed)."""

    def __init__(self, model):
        self.calls = self.sequences = self.tokens = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        tokens, cu = args[0], kwargs.get("cu_seqlens")
        self.calls += 1
        self.tokens += tokens.numel()
        self.sequences += (cu.numel() - 1) if cu is not None else tokens.shape[0]


def run_cli(folder: Path, wt_fasta: Path, csv_path: Path, out: Path, dtype: str, toks: int, env: dict) -> float:
    cmd = [sys.executable, "-c", "from protlm.cli.main import main; main()", "variants", "score",
           "--model", str(folder), "--sequence", str(wt_fasta), "--mutations", str(csv_path),
           "--method", "masked-marginal", "--device", "cpu", "--dtype", dtype, "--toks-per-batch", str(toks),
           "--no-progress", "--output", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="35M", choices=["8M", "35M", "150M", "650M"])
    p.add_argument("--length", type=int, default=300)
    p.add_argument("--fasta", type=Path, default=DATA / "cath_s40.fasta")
    p.add_argument("--dtypes", nargs="+", default=["int8", "fp32"], choices=["fp32", "bf16", "int8"])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--toks-per-batch", type=int, default=4096)
    p.add_argument("--naive-positions", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep the CSV, model folder and outputs here")
    p.add_argument("--smoke", action="store_true", help="8M shape, 40 residues, 2 naive positions")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.length, args.naive_positions = "8M", 40, 2

    from protlm import Alphabet
    from protlm.embed.engine import Engine
    from protlm.pretrained.protlm_format import save_protlm
    from protlm.runtime.precision import prepare_model
    from protlm.variants.scoring import _tokens, score_mutants

    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_variants_dms_"))
    work.mkdir(parents=True, exist_ok=True)
    wt_id, wt = wild_type(args.fasta, args.length)
    mutants = all_single_mutants(wt)
    wt_fasta, csv_path = work / "wt.fasta", work / f"dms_{len(wt)}.csv"
    wt_fasta.write_text(f">{wt_id}\n{wt}\n")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mutant"])
        w.writerows([m] for m in mutants)
    _, base, cfg = build_weights(args.shape, args.seed)
    folder = save_protlm(base, work / f"esm2_{args.shape}_random")
    print(f"CPU: {describe(cpu_info())}; {args.threads} thread(s)")
    print(f"wild type {wt_id}[:{len(wt)}], {len(mutants)} single mutants ({csv_path}); ESM-2 {args.shape} shape "
          f"({cfg.num_layers} x {cfg.embed_dim}), random weights", flush=True)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PROTLM_CACHE": str(work / "cache")}
    a = Alphabet()
    naive_count = {"sequences": len(mutants), "tokens": len(mutants) * (len(wt) + 2)}
    result = {"cpu": cpu_info(), "threads": args.threads, "shape": args.shape, "wild_type": wt_id,
              "length": len(wt), "variants": len(mutants), "naive": naive_count, "dtypes": {}}
    for dtype in args.dtypes:
        row = result["dtypes"][dtype] = {}
        cli_out = work / f"scored_{dtype}.csv"
        row["cli_first_s"] = run_cli(folder, wt_fasta, csv_path, cli_out, dtype, args.toks_per_batch, env)
        row["cli_second_s"] = run_cli(folder, wt_fasta, csv_path, cli_out, dtype, args.toks_per_batch, env)
        with open(cli_out, newline="") as f:
            cli_scores = [float(r["masked-marginal"]) for r in csv.DictReader(f)]

        model = prepare_model(build_weights(args.shape, args.seed)[1], "cpu", dtype, verbose=False)
        count = Counter(model)
        with torch.inference_mode():
            t0 = time.perf_counter()
            scores = score_mutants(model, a, wt, mutants, "masked-marginal", toks_per_batch=args.toks_per_batch)
            row["library_s"] = time.perf_counter() - t0
            row["counted"] = {"model_calls": count.calls, "sequences": count.sequences, "tokens": count.tokens}
            row["max_abs_diff_cli_vs_library"] = max(abs(x - y) for x, y in zip(scores, cli_scores))

            # the naive way on the first positions: one masked sequence per mutant, same engine
            k = args.naive_positions
            sub = [m for m in mutants if int(m[1:-1]) <= k]
            engine = Engine(model, a, toks_per_batch=args.toks_per_batch)
            t0 = time.perf_counter()
            lps = {}
            for idx, out in engine.log_probs([_tokens(a, wt, [int(m[1:-1]) - 1]) for m in sub]):
                lps.update(zip(idx, out))
            naive = [float(lps[j][int(m[1:-1]), a.get_idx(m[-1])] - lps[j][int(m[1:-1]), a.get_idx(m[0])])
                     for j, m in enumerate(sub)]
            naive_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            dedup = score_mutants(model, a, wt, sub, "masked-marginal", toks_per_batch=args.toks_per_batch)
            dedup_s = time.perf_counter() - t0
        row["subset"] = {"positions": k, "variants": len(sub), "naive_s": naive_s, "scorer_s": dedup_s,
                         "max_abs_diff": max(abs(x - y) for x, y in zip(naive, dedup))}
        c = row["counted"]
        cached = " (int8 weights cached)" if dtype == "int8" else ""
        print(f"\n{dtype}: protlm variants score (CLI, fresh process) {row['cli_first_s']:.1f} s first run, "
              f"{row['cli_second_s']:.1f} s second{cached}; library score_mutants "
              f"{row['library_s']:.1f} s = {len(mutants) / row['library_s']:.0f} variants/s")
        print(f"  forwards: {c['sequences']} masked sequences ({c['tokens']} tokens) in {c['model_calls']} packed "
              f"model calls; naive: {naive_count['sequences']} sequences ({naive_count['tokens']} tokens), "
              f"{naive_count['tokens'] / c['tokens']:.1f}x the tokens")
        s = row["subset"]
        print(f"  first {k} positions ({s['variants']} variants): naive {s['naive_s']:.2f} s, scorer "
              f"{s['scorer_s']:.2f} s ({s['naive_s'] / s['scorer_s']:.1f}x), scores equal within {s['max_abs_diff']:.1e}; "
              f"CLI and library scores within {row['max_abs_diff_cli_vs_library']:.1e}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
