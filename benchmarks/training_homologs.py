"""How many training sequences are homologs of a query protein (e.g. TEM-1 for the BLAT_ECOLX scan).

Zero-shot variant scoring reads per-position preferences that a model learns from a protein's
family; this counts how much of that family the training set holds. Local alignment (BLOSUM62,
gap open 11, extend 1) of the query against every training record with Biopython's aligner:

    pip install biopython
    python scripts/variants_eval.py --references-only --wt-out /tmp/bench/P62593_wt.fasta
    python benchmarks/training_homologs.py /tmp/bench/P62593_wt.fasta runs/data/cath_train.fasta \
        --exclude runs/data/cath_valid.fasta    # the 5% that `protlm train` holds out

About a minute for 21k CATH domains on one core.
"""

from __future__ import annotations

import argparse
import json

from Bio import SeqIO
from Bio.Align import PairwiseAligner, substitution_matrices


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("query", help="FASTA; its first record is the query")
    ap.add_argument("training", help="the training FASTA")
    ap.add_argument("--exclude", help="FASTA of records not trained on (the held-out split)")
    ap.add_argument("--min-score", type=float, default=100.0, help="local alignment score of a homolog")
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args(argv)
    query = str(next(SeqIO.parse(args.query, "fasta")).seq)
    aligner = PairwiseAligner(mode="local", substitution_matrix=substitution_matrices.load("BLOSUM62"),
                              open_gap_score=-11, extend_gap_score=-1)
    held_out = {r.id for r in SeqIO.parse(args.exclude, "fasta")} if args.exclude else set()
    records = [(r.id, str(r.seq)) for r in SeqIO.parse(args.training, "fasta") if r.id not in held_out]
    scored = sorted(((aligner.score(query, seq), rid, seq) for rid, seq in records), reverse=True)
    top = []
    for score, rid, seq in scored[: args.top]:
        counts = aligner.align(query, seq)[0].counts()
        aligned = counts.identities + counts.mismatches
        top.append({"id": rid, "score": score, "identity": round(counts.identities / aligned, 3),
                    "aligned": aligned})
    print(json.dumps({"query_length": len(query), "training_records": len(records),
                      f"homologs_score_ge_{args.min_score:g}": sum(s >= args.min_score for s, _, _ in scored),
                      "top": top}, indent=2))


if __name__ == "__main__":
    main()
