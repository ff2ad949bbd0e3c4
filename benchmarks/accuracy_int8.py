"""How far `--dtype int8` (and bf16) moves protlm's outputs from fp32, on the same inputs.

With the shipped `protlm_small` (real weights) and the data of ../shared/data:
  embeddings  some_proteins.fasta (15 proteins): min cosine of the last layer's mean embeddings,
              max |error| of the per-residue representations over max |fp32| and over their RMS
  variants    BLAT_ECOLX masked-marginal scores of all DMS mutants (scripts/variants_eval.py):
              Spearman of the int8 scores against the fp32 scores, and each against fitness
  function    TEM-1 fitness (scripts/function_eval.py): the same ridge head and folds on fp32
              and int8 mean embeddings, random 5-fold CV Spearman of each and the change
The ESM-1b and ESM-2 650M shapes (random weights) are measured by bench_cpu_dtypes.py.

    OMP_NUM_THREADS=2 python benchmarks/accuracy_int8.py --subsample 1500 --out r.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_cpu_dtypes import agreement  # noqa: E402
from function_eval import DATA as TEM1  # noqa: E402
from variants_eval import derive_wild_type, read_dms  # noqa: E402

SOME = Path(__file__).resolve().parents[2] / "shared" / "data" / "sequences" / "some_proteins.fasta"


def load(name: str, dtype: str):
    import protlm

    return protlm.load_model_and_alphabet(name, dtype=dtype)


def embeddings(models: dict) -> dict:
    from protlm.data.fasta import load_fasta
    from protlm.embed.engine import Engine

    seqs = [r.sequence for r in load_fasta(SOME)]
    outs = {}
    for dt, (model, alphabet) in models.items():
        eng = Engine(model, alphabet, [-1])
        outs[dt] = {i: {"mean": r["mean"][0], "per_tok": r["per_tok"][0]}
                    for batch, recs in eng.run(seqs, {"mean", "per_tok"}) for i, r in zip(batch, recs)}
    return {dt: agreement(outs["fp32"], outs[dt]) for dt in models if dt != "fp32"}


def variants(models: dict) -> dict:
    from protlm.variants.scoring import score_mutants

    wt = derive_wild_type()
    mutants, fitness = read_dms()
    scores, out = {}, {}
    for dt, (model, alphabet) in models.items():
        t0 = time.perf_counter()
        scores[dt] = np.array(score_mutants(model, alphabet, wt, mutants, "masked-marginal",
                                            toks_per_batch=16 * (len(wt) + 2), progress=False))
        out[dt] = {"seconds": round(time.perf_counter() - t0, 1),
                   "spearman_vs_fitness": float(spearmanr(scores[dt], fitness)[0])}
        if dt != "fp32":
            out[dt]["spearman_vs_fp32"] = float(spearmanr(scores[dt], scores["fp32"])[0])
    return {"n_mutants": len(mutants), **out}


def function(models: dict, subsample: int, seed: int = 0) -> dict:
    from protlm.function import cv as cvs, heads
    from protlm.function.data import as_targets, load_fasta_labels
    from protlm.function.pipeline import embed_sequences
    from protlm.runtime.options import InferenceOptions

    data = load_fasta_labels(str(TEM1), label_field=2)
    y = as_targets(data, "regression", str(TEM1))
    keep = np.arange(len(y))
    if subsample:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), subsample, replace=False))
    seqs, y = [data.sequences[i] for i in keep], y[keep]
    folds = cvs.fold_indices(len(y), 5, "regression", seed=seed)
    fit = lambda xs, ys: heads.fit_head(xs, ys, "ridge", "regression", seed)  # noqa: E731
    out = {"n": len(seqs)}
    for dt, (model, alphabet) in models.items():
        t0 = time.perf_counter()
        x = embed_sequences(model, alphabet, seqs, -1, "mean", InferenceOptions(progress=False))
        cv = cvs.cross_validate(x, y, "regression", fit, folds)
        out[dt] = {"seconds": round(time.perf_counter() - t0, 1), "cv_spearman": cv["mean"]["spearman"]}
    for dt in models:
        if dt != "fp32":
            out[dt]["change_vs_fp32"] = out[dt]["cv_spearman"] - out["fp32"]["cv_spearman"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="protlm_small")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "int8", "bf16"])
    p.add_argument("--subsample", type=int, default=1500, help="TEM-1 records (0 = all 5,397)")
    p.add_argument("--parts", nargs="+", default=["embeddings", "variants", "function"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    models = {dt: load(args.model, dt) for dt in dict.fromkeys(["fp32", *args.dtypes])}
    result = {"model": args.model}
    for part in args.parts:
        result[part] = {"embeddings": embeddings, "variants": variants,
                        "function": lambda m: function(m, args.subsample)}[part](models)
        print(part, json.dumps(result[part], indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
