"""Zero-shot variant effects on the BLAT_ECOLX deep mutational scan (Stiffler et al. 2015).

The wild type (UniProt P62593, TEM-1, 286 aa) is derived from the data: the per-position
consensus of the 5,397 single mutants of the function set. It is checked before scoring: every
function-set sequence must differ from it at most at its labelled position, and every DMS
wild-type letter must match it (numbering = 1-based on this sequence, as in UniProt).

    python scripts/variants_eval.py --model protlm_small --pll-subset 8 \
        --out /tmp/variants.json

Reports the Spearman correlation of each score with the measured fitness (column 2500).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

import protlm
from protlm.variants.scoring import METHODS, score_mutants

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FUNCTION = SHARED / "function" / "P62593_beta_lactamase_fitness.fasta"
DMS = SHARED / "dms" / "BLAT_ECOLX_Ranganathan2015.csv"


def derive_wild_type(function_fasta: Path = FUNCTION) -> str:
    """Per-position consensus of the single mutants, verified against each record's label."""
    from protlm.data.fasta import read_fasta

    records = list(read_fasta(function_fasta))
    length = len(records[0].sequence)
    assert all(len(r.sequence) == length for r in records), "function set: unequal lengths"
    wt = "".join(Counter(col).most_common(1)[0][0] for col in zip(*(r.sequence for r in records)))
    for r in records:
        wt_aa, pos, mt_aa = re.search(r"_([A-Z])(\d+)([A-Z])", r.description.split("|")[1]).groups()
        diff = [i for i, (a, b) in enumerate(zip(wt, r.sequence)) if a != b]
        expected = [] if wt_aa == mt_aa else [int(pos) - 1]
        if diff != expected or wt[int(pos) - 1] != wt_aa or r.sequence[int(pos) - 1] != mt_aa:
            raise ValueError(f"record {r.id}: differs from the consensus at {diff}, label says {pos}")
    return wt


def read_dms(path: Path = DMS, target: str = "2500") -> tuple[list[str], np.ndarray]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.DictReader(f) if r[target] not in ("", "nan")]
    return [r["mutant"] for r in rows], np.array([float(r[target]) for r in rows])


REFERENCE_COLUMNS = ("mutation_effect_prediction_vae_ensemble", "mutation_effect_prediction_pairwise",
                     "mutation_effect_prediction_independent")


def reference_spearman(path: Path = DMS, target: str = "2500") -> dict[str, dict]:
    """Spearman of the MSA-based predictions shipped in the DMS file (DeepSequence VAE ensemble,
    EVmutation pairwise, independent-site model), over the rows where they are present."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for col in REFERENCE_COLUMNS:
        ok = [r for r in rows if r[col] not in ("", "nan") and r[target] not in ("", "nan")]
        out[col] = {"n": len(ok), "spearman": float(spearmanr([float(r[col]) for r in ok],
                                                              [float(r[target]) for r in ok])[0])}
    return out


def check_numbering(wt: str, mutants: list[str]) -> int:
    bad = [m for m in mutants for part in m.split(":")
           if wt[int(part[1:-1]) - 1] != part[0]]
    if bad:
        raise ValueError(f"{len(bad)} DMS mutants do not match the derived wild type, e.g. {bad[:5]}")
    return len(mutants)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="protlm_small")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--target", default="2500")
    p.add_argument("--pll-subset", type=int, default=40,
                   help="pseudo-ll costs one forward per residue per mutant: score N random mutants")
    p.add_argument("--toks-per-batch", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wt-out", default=None, help="also write the derived wild type as FASTA here")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--references-only", action="store_true",
                   help="only check the wild type and print the MSA-based reference correlations")
    args = p.parse_args(argv)

    wt = derive_wild_type()
    mutants, fitness = read_dms(target=args.target)
    print(f"wild type: {len(wt)} aa; {check_numbering(wt, mutants)} DMS mutants, all wild-type "
          "letters match (1-based UniProt numbering)", flush=True)
    if args.wt_out:
        Path(args.wt_out).write_text(f">P62593 TEM-1 beta-lactamase (consensus of the function set)\n{wt}\n")
    refs = reference_spearman(target=args.target)
    for col, r in refs.items():
        print(f"reference {col}: n {r['n']}, spearman {r['spearman']:.3f}", flush=True)
    if args.references_only:
        return
    model, alphabet = protlm.load_model_and_alphabet(args.model)
    subset = np.sort(np.random.default_rng(args.seed).choice(len(mutants), args.pll_subset, replace=False))
    rows = []
    for method in args.methods:
        idx = subset if method == "pseudo-ll" else np.arange(len(mutants))
        t0 = time.perf_counter()
        scores = score_mutants(model, alphabet, wt, [mutants[i] for i in idx], method,
                               toks_per_batch=args.toks_per_batch, progress=True)
        row = {"method": method, "n": int(len(idx)), "seconds": round(time.perf_counter() - t0, 1),
               "spearman": float(spearmanr(scores, fitness[idx])[0])}
        if method != "pseudo-ll" and "pseudo-ll" in args.methods:
            row["spearman_on_pll_subset"] = float(spearmanr(np.array(scores)[subset], fitness[subset])[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "wt_length": len(wt),
                                              "n_mutants": len(mutants), "references": refs,
                                              "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
