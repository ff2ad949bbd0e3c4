"""`protlm variants score`: a mutations table in, the same table with a score column out."""

from __future__ import annotations

import csv
from pathlib import Path

from protlm.io import atomic_path, output_lock
from protlm.runtime.options import InferenceOptions
from protlm.variants.mutations import MutationError, parse_mutant
from protlm.variants.scoring import require_mlm, score_mutants
from protlm.variants.store import PLLStore


def read_wild_type(path, unknown: str | None = None) -> str:
    """The single record of a wild-type FASTA (validated; `unknown` as in read_fasta)."""
    from protlm.data.fasta import read_fasta

    records = list(read_fasta(path, unknown=unknown))
    if len(records) != 1:
        raise MutationError(f"{path}: the wild-type FASTA must hold exactly one record, found {len(records)}")
    return records[0].sequence


def score_file(wt_fasta, mutations_csv, output, opts: InferenceOptions, *, method: str = "masked-marginal",
               column: str | None = None, offset: int = 1, loader=None) -> int:
    """Read the `mutant` column of a CSV/TSV, score every row with `opts.model`, write all input
    columns plus one score column (named after the method unless `column` is given). Atomic: the
    output appears only when every row is scored. pseudo-ll keeps finished PLLs in
    `<output>.pll.jsonl` until the output is written, so a rerun after a kill resumes. The
    output's lock (protlm.io) is held while scoring: a second writer fails at once. Every row is
    checked against the wild type before the model loads. Returns the number of rows."""
    from protlm.data.fasta import not_a_table
    from protlm.pretrained.identity import model_identity
    from protlm.runtime import precision

    wt_seq = read_wild_type(wt_fasta, opts.unknown)
    opts = opts.resolved()
    delim = "\t" if str(mutations_csv).lower().endswith((".tsv", ".tab")) else ","
    try:
        with open(mutations_csv, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            reader = csv.DictReader(f, delimiter=delim)
            fields, rows = list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise MutationError(not_a_table(mutations_csv, e)) from None
    if "mutant" not in fields:
        raise MutationError(f"{mutations_csv}: no 'mutant' column; columns are {fields}")
    if not rows:
        raise MutationError(f"{mutations_csv}: no mutants (a header, no rows)")
    column = column or method
    if column in fields:
        raise MutationError(f"{mutations_csv}: already has a column {column!r}; pick --column")
    for line, row in enumerate(rows, start=2):
        try:
            parse_mutant(row["mutant"] or "", wt_seq, offset)
        except MutationError as e:
            raise MutationError(f"{mutations_csv}: line {line}: {e}") from None
    out = Path(output)
    with output_lock(out):  # also guards the pseudo-ll store beside it
        model, alphabet = opts.load(loader, verbose=False)
        require_mlm(model, alphabet)
        store = (PLLStore(out.with_name(out.name + ".pll.jsonl"),
                          precision.keyed(model_identity(opts.model), opts.dtype))
                 if method == "pseudo-ll" else None)
        scores = score_mutants(model, alphabet, wt_seq, [r["mutant"] for r in rows], method, offset,
                               toks_per_batch=opts.toks_per_batch, progress=opts.progress, pll_store=store)
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields + [column], delimiter=delim)
            w.writeheader()
            for row, s in zip(rows, scores):
                w.writerow({**row, column: f"{s:.6g}"})
        if store is not None:
            store.close()
            store.path.unlink()
        return len(rows)
