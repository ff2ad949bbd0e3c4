"""Build the pretraining and evaluation FASTA files from ../shared/data.

    python scripts/prepare_pretraining_data.py --data ../shared/data --out runs/data

Writes, under --out:
- `cath_train.fasta`: CATH S40 domains (`sequences/cath_s40.fasta`) minus leaks. `protlm train`
  holds 5% of it out by a hash of the record ID (data.valid_fraction); the 40% identity cap of
  S40 makes that split free of close homologs.
- `cath_valid.fasta`: the records of `cath_train.fasta` that `protlm train` holds out (the same
  ID-hash split, --valid-fraction = data.valid_fraction of configs/protlm_small.toml), as a file of
  their own for `protlm evaluate --perplexity`.
- `msa_eval.fasta`: every query and hit of `msas/*.a3m` ('-' removed, letters upper-cased, which
  recovers each hit's own sequence), deduplicated. Evaluation data only: never trained on.
- `leaks.tsv`: each CATH record removed, with the evaluation sequence it matched and the shared
  5-mer fraction.

Leak filter: a CATH record is removed when it shares >= 30% (--max-shared) of its distinct 5-mers
with any protein chain of `structures/` or any MSA query or hit. The fraction is taken over the
smaller of the two 5-mer sets, so a domain cut out of a longer chain counts as a leak of that
chain. The 5-mer sets are compared through an inverted index (5-mer -> evaluation sequences), so
the 21k x 6k comparison is one pass over the CATH file.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from protlm.alphabet import Alphabet
from protlm.contacts.structures import chain_sequences, structure_files
from protlm.data.fasta import iter_raw_records, write_fasta
from protlm.data.index import id_hash
from protlm.data.sampler import heldout_mask
from protlm.io import atomic_path

K = 5


def kmers(seq: str, k: int = K) -> set[str]:
    return {seq[i : i + k] for i in range(len(seq) - k + 1)}


def msa_records(path: Path):
    for i, (_, raw, _) in enumerate(iter_raw_records(path)):
        yield f"{path.stem}_{i}", raw.replace("-", "").replace(".", "").upper()


def structure_records(folder: Path):
    for path in structure_files(folder):
        for chain, seq in chain_sequences(path).items():
            yield f"{path.stem}_{chain}", seq


def dedup(records, alphabet: Alphabet):
    """Clean (unknown letters to X), drop empty and repeated sequences; first ID wins."""
    seen = set()
    for rid, raw in records:
        seq = alphabet.clean(raw, record=rid, unknown="X")
        if seq and seq not in seen:
            seen.add(seq)
            yield rid, seq


class LeakFilter:
    """Finds, for a query sequence, the evaluation sequence sharing the largest 5-mer fraction."""

    def __init__(self, records: list[tuple[str, str]]):
        self.ids = [rid for rid, _ in records]
        self.sizes = []
        self.index: dict[str, list[int]] = defaultdict(list)
        for j, (_, seq) in enumerate(records):
            ks = kmers(seq)
            self.sizes.append(len(ks))
            for km in ks:
                self.index[km].append(j)

    def best(self, seq: str) -> tuple[str | None, float]:
        ks = kmers(seq)
        shared = Counter(j for km in ks for j in self.index.get(km, ()))
        best_id, best_frac = None, 0.0
        for j, n in shared.items():
            frac = n / max(1, min(len(ks), self.sizes[j]))
            if frac > best_frac:
                best_id, best_frac = self.ids[j], frac
        return best_id, best_frac


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("runs/data"))
    ap.add_argument("--max-shared", type=float, default=0.30, help="5-mer fraction at which a record is a leak")
    ap.add_argument("--valid-fraction", type=float, default=0.05,
                    help="held-out fraction of cath_train.fasta written to cath_valid.fasta (as data.valid_fraction)")
    args = ap.parse_args(argv)
    alphabet = Alphabet()
    args.out.mkdir(parents=True, exist_ok=True)

    msa = list(dedup((r for p in sorted((args.data / "msas").glob("*.a3m")) for r in msa_records(p)), alphabet))
    structures = list(dedup(structure_records(args.data / "structures"), alphabet))
    leak_filter = LeakFilter(structures + msa)

    train, leaks = [], []
    for rid, seq in dedup(((h.split()[0], raw) for h, raw, _ in
                           iter_raw_records(args.data / "sequences" / "cath_s40.fasta")), alphabet):
        match, frac = leak_filter.best(seq)
        if frac >= args.max_shared:
            leaks.append((rid, match, frac))
        else:
            train.append((rid, seq))

    held = heldout_mask(np.array([id_hash(rid) for rid, _ in train], dtype=np.int64), args.valid_fraction)
    valid = [r for r, h in zip(train, held) if h]
    for name, records in (("cath_train.fasta", train), ("cath_valid.fasta", valid), ("msa_eval.fasta", msa)):
        with atomic_path(args.out / name) as tmp:
            write_fasta(records, tmp)
        print(f"{args.out / name}: {len(records)} sequences, {sum(len(s) for _, s in records)} residues")
    with atomic_path(args.out / "leaks.tsv") as tmp:
        tmp.write_text("cath_id\tmatched\tshared_5mer_fraction\n"
                       + "".join(f"{r}\t{m}\t{f:.3f}\n" for r, m, f in leaks))
    by_source = Counter("structure" if m in {rid for rid, _ in structures} else "msa" for _, m, _ in leaks)
    print(f"leak filter: removed {len(leaks)} CATH records sharing >= {args.max_shared:.0%} of their 5-mers "
          f"with an evaluation sequence ({by_source['structure']} structure chains, {by_source['msa']} MSA "
          f"sequences); list in {args.out / 'leaks.tsv'}")


if __name__ == "__main__":
    main()
