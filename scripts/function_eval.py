"""Beta-lactamase fitness regression: protlm embeddings vs one-hot and composition baselines.

Same head (standardise + RidgeCV by default) and the same folds for every representation.
Two splits: random 5-fold, and 5-fold grouped by mutated position (no position is in both the
training and the test split, so a head cannot just memorise per-position effects).

    python scripts/function_eval.py --model protlm_small --subsample 2000 --out /tmp/function.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from protlm.function import cv as cvs, heads
from protlm.function.pipeline import cached_embeddings
from protlm.runtime.options import InferenceOptions
from protlm.function.data import as_targets, load_fasta_labels

AAS = "ACDEFGHIKLMNPQRSTVWY"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "function" / "P62593_beta_lactamase_fitness.fasta"


def one_hot(seqs: list[str]) -> np.ndarray:
    """(N, L*20) indicator features; all sequences have the same length (single substitutions)."""
    idx = {a: i for i, a in enumerate(AAS)}
    x = np.zeros((len(seqs), len(seqs[0]) * 20), dtype=np.float32)
    for n, s in enumerate(seqs):
        x[n, [i * 20 + idx[c] for i, c in enumerate(s)]] = 1.0
    return x


def composition(seqs: list[str]) -> np.ndarray:
    """(N, 20) amino-acid frequencies."""
    return np.array([[s.count(a) / len(s) for a in AAS] for s in seqs], dtype=np.float32)


def mutated_position(description: str) -> str:
    """'12|beta-lactamase_H24C|0.3' -> '24' (the group of a homology-free, position-aware split)."""
    return re.search(r"_[A-Z](\d+)[A-Z]", description.split("|")[1]).group(1)


def evaluate_all(reps: dict[str, np.ndarray], y: np.ndarray, splits: dict, head: str) -> list[dict]:
    rows = []
    for split, folds in splits.items():
        for name, x in reps.items():
            t0 = time.perf_counter()
            fit = lambda xs, ys: heads.fit_head(xs, ys, head, "regression")  # noqa: E731
            cv = cvs.cross_validate(x, y, "regression", fit, folds)
            rows.append({"split": split, "features": name, "dim": int(x.shape[1]), "head": head,
                         "mean": cv["mean"], "std": cv["std"], "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{split:>16} {name:>28} " + "  ".join(
                f"{k} {cv['mean'][k]:.3f}±{cv['std'][k]:.3f}" for k in cv["mean"]), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="protlm_small")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--head", default="ridge", choices=["ridge", "mlp"])
    p.add_argument("--pooling", default="mean", choices=["mean", "bos", "max"])
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subsample", type=int, default=0, help="use N random records (0 = all)")
    p.add_argument("--cache-dir", default="benchmarks/.cache/function")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    data = load_fasta_labels(args.data, label_field=2)
    y = as_targets(data, "regression", args.data)
    keep = np.arange(len(y))
    if args.subsample:
        keep = np.sort(np.random.default_rng(args.seed).choice(len(y), args.subsample, replace=False))
    seqs = [data.sequences[i] for i in keep]
    y = y[keep]
    groups = [mutated_position(data.ids[i]) for i in keep]
    print(f"{len(seqs)} records, {len(set(seqs))} distinct sequences, {len(set(groups))} positions", flush=True)

    t0 = time.perf_counter()
    emb = cached_embeddings(seqs, InferenceOptions(model=args.model), args.layer, args.pooling, args.cache_dir)
    t_embed = time.perf_counter() - t0
    reps = {f"protlm {args.model} ({args.pooling}, layer {args.layer})": emb,
            "one-hot": one_hot(seqs), "AA composition": composition(seqs)}
    splits = {"random": cvs.fold_indices(len(y), args.folds, "regression", seed=args.seed),
              "grouped-position": cvs.fold_indices(len(y), args.folds, "regression",
                                                        groups=groups, seed=args.seed)}
    rows = evaluate_all(reps, y, splits, args.head)
    result = {"args": vars(args), "n": len(seqs), "embed_seconds": round(t_embed, 1), "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
