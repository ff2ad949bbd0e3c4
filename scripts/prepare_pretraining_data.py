"""Build the pretraining FASTA from ../shared/data (MSA hits + example sequences).

    python scripts/prepare_pretraining_data.py --data ../shared/data --out runs/data/pretrain.fasta

- A3M hits: '-' removed and every letter upper-cased, which recovers each hit's own sequence
  (lower-case letters are insertions relative to the query, still part of the protein).
- sequences/*.fasta as they are.
- function/ holds 5,397 single mutants of one protein: near-duplicates that would dominate the
  corpus, so only the wild type (the first record with a synonymous mutation label) is kept.
- Identical sequences are kept once (the first ID wins); IDs are made unique and stable
  (`<file stem>_<hit number>`) because the A3M headers are empty and the held-out split
  hashes the record ID.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from protlm.alphabet import Alphabet
from protlm.data.fasta import iter_raw_records, write_fasta

_SYNONYMOUS = re.compile(r"_([A-Z])(\d+)\1\|")  # e.g. beta-lactamase_P20P| : wild type


def msa_records(path: Path):
    for i, (header, raw, _) in enumerate(iter_raw_records(path)):
        yield f"{path.stem}_{i}", raw.replace("-", "").replace(".", "").upper()


def fasta_records(path: Path):
    for header, raw, _ in iter_raw_records(path):
        yield header.split()[0], raw


def wild_type(path: Path):
    for header, raw, _ in iter_raw_records(path):
        if _SYNONYMOUS.search(header + "|"):
            yield "P62593_wild_type", raw
            return


def collect(data: Path):
    """(id, sequence) pairs, deduplicated by sequence, in a fixed order."""
    alphabet, seen, ids = Alphabet(), set(), set()
    sources = [*(msa_records(p) for p in sorted((data / "msas").glob("*.a3m"))),
               *(fasta_records(p) for p in sorted((data / "sequences").glob("*.fasta")))]
    if (data / "function").is_dir():
        sources += [wild_type(p) for p in sorted((data / "function").glob("*.fasta"))]
    for src in sources:
        for rid, raw in src:
            seq = alphabet.clean(raw, record=rid, unknown="X")
            if not seq or seq in seen or rid in ids:
                continue
            seen.add(seq)
            ids.add(rid)
            yield rid, seq


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("runs/data/pretrain.fasta"))
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = list(collect(args.data))
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    write_fasta(records, tmp)
    tmp.replace(args.out)
    n_res = sum(len(s) for _, s in records)
    print(f"{args.out}: {len(records)} sequences, {n_res} residues")


if __name__ == "__main__":
    main()
