"""Zero-shot variant effects from a masked language model (Meier et al. 2021).

Scores are log-probability ratios of mutant vs wild-type residues, from log-softmax over the
whole vocabulary as in fair-esm's variant-prediction example:
- masked-marginal: mask every mutated position together, sum log p(mt) - log p(wt) there;
- wt-marginal: the same ratio read from one unmasked forward pass on the wild type;
- pseudo-ll: PLL(mutant) - PLL(wt), PLL = sum_i log p(x_i | x with i masked) over the window.
Proteins over the model's limit are scored in a window of max length centred on the mutations.
"""

from __future__ import annotations

from protlm.errors import InputError, ProtlmError
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from protlm.alphabet import Alphabet
from protlm.engine.core import Engine
from protlm.io import atomic_path
from protlm.lock import output_lock
from protlm.windows import merge_1d, window_spans

METHODS = ("masked-marginal", "wt-marginal", "pseudo-ll")
_MUT = re.compile(r"^([A-Za-z])(-?\d+)([A-Za-z])$")
AAS = set("ACDEFGHIKLMNPQRSTVWYBZXUO")


class MutationError(ProtlmError, ValueError):
    """A mutation that cannot be applied; the message names it."""


@dataclass(frozen=True)
class Mutation:
    pos: int  # 0-based index into the wild-type sequence
    wt: str
    mt: str


def parse_mutant(mutant: str, wt_seq: str, offset: int = 1) -> tuple[Mutation, ...]:
    """'H24C' or 'H24C:A42G' -> Mutations; positions counted from `offset` (1 = first residue).

    Raises MutationError naming the mutant on bad syntax, out-of-range positions, a wild-type
    letter that does not match the sequence, or the same position twice.
    """
    muts = []
    for part in mutant.strip().split(":"):
        m = _MUT.match(part.strip())
        if not m:
            raise MutationError(f"mutant {mutant!r}: cannot parse {part!r} (expected e.g. H24C)")
        wt, num, mt = m.group(1).upper(), int(m.group(2)), m.group(3).upper()
        if mt not in AAS or wt not in AAS:
            raise MutationError(f"mutant {mutant!r}: {part!r} uses a letter that is not an amino acid")
        pos = num - offset
        if not 0 <= pos < len(wt_seq):
            raise MutationError(f"mutant {mutant!r}: position {num} is outside the sequence "
                                f"({offset}..{len(wt_seq) + offset - 1})")
        if wt_seq[pos] != wt:
            raise MutationError(f"mutant {mutant!r}: wild-type letter {wt} at position {num} does "
                                f"not match the sequence, which has {wt_seq[pos]} there")
        muts.append(Mutation(pos, wt, mt))
    if len({m.pos for m in muts}) != len(muts):
        raise MutationError(f"mutant {mutant!r}: the same position is mutated twice")
    return tuple(sorted(muts, key=lambda m: m.pos))


def apply_mutations(wt_seq: str, muts: Iterable[Mutation]) -> str:
    s = list(wt_seq)
    for m in muts:
        s[m.pos] = m.mt
    return "".join(s)


def centred_window(positions: Sequence[int], length: int, max_len: int) -> tuple[int, int]:
    """[start, end) of at most max_len residues, centred on the mutated positions."""
    if length <= max_len:
        return 0, length
    lo, hi = min(positions), max(positions)
    if hi - lo + 1 > max_len:
        raise MutationError(f"mutated positions {lo + 1}..{hi + 1} span more than the model's "
                            f"limit of {max_len} residues; they cannot be scored in one window")
    start = (lo + hi + 1) // 2 - max_len // 2
    start = min(max(start, 0), length - max_len)
    return start, start + max_len


def _run(jobs: list[list[int]], engine: Engine, bar) -> list[torch.Tensor]:
    """(len + BOS + EOS, V) log-probs per job (row 0 BOS where there is one), in job order."""
    out: list[torch.Tensor | None] = [None] * len(jobs)
    for idx, lps in engine.log_probs(jobs):
        for i, lp in zip(idx, lps):
            out[i] = lp
        bar.update(len(idx))
    return out


def _tokens(alphabet: Alphabet, seq: str, mask_at: Iterable[int] = ()) -> list[int]:
    """Residue indices with <mask> at `mask_at`; the engine adds BOS/EOS."""
    toks = [alphabet.get_idx(c) for c in seq]
    for p in mask_at:
        toks[p] = alphabet.mask_idx
    return toks


def _ratio(lp_TV: torch.Tensor, alphabet: Alphabet, muts, row0: int) -> float:
    """sum over mutations of log p(mt) - log p(wt); residue i sits at row i + row0 of lp_TV."""
    return sum(float(lp_TV[m.pos + row0, alphabet.get_idx(m.mt)] -
                     lp_TV[m.pos + row0, alphabet.get_idx(m.wt)]) for m in muts)


def masked_marginal(wt_seq: str, mutants: list[tuple[Mutation, ...]], alphabet: Alphabet,
                    engine: Engine, max_len: int, bar) -> list[float]:
    """One forward per distinct set of mutated positions (masked together), batched."""
    sets = list(dict.fromkeys(tuple(m.pos for m in ms) for ms in mutants))
    wins = [centred_window(ps, len(wt_seq), max_len) for ps in sets]
    jobs = [_tokens(alphabet, wt_seq[s:e], [p - s for p in ps]) for ps, (s, e) in zip(sets, wins)]
    bar.reset(total=len(jobs))
    lps = dict(zip(sets, zip(_run(jobs, engine, bar), wins)))
    out = []
    for ms in mutants:
        lp, (s, _) = lps[tuple(m.pos for m in ms)]
        out.append(_ratio(lp, alphabet, ms, alphabet.residue_offset - s))  # after BOS if any; window at s
    return out


def wt_marginal(wt_seq: str, mutants: list[tuple[Mutation, ...]], alphabet: Alphabet,
                engine: Engine, max_len: int, bar) -> list[float]:
    """Log-probs from unmasked wild-type forwards (overlapping windows averaged if long)."""
    spans = window_spans(len(wt_seq), max_len)
    bar.reset(total=len(spans))
    parts = _run([_tokens(alphabet, wt_seq[s:e]) for s, e in spans], engine, bar)
    # (n+2, V) per window -> residue rows only, averaged where windows overlap -> (L, V)
    o = alphabet.residue_offset  # 1 after a BOS (ESM), 0 without (CARP)
    lp_LV = merge_1d([p[o : e - s + o] for p, (s, e) in zip(parts, spans)], spans, len(wt_seq))
    return [_ratio(lp_LV, alphabet, ms, 0) for ms in mutants]


def pseudo_ll(wt_seq: str, mutants: list[tuple[Mutation, ...]], alphabet: Alphabet,
              engine: Engine, max_len: int, bar, store: "PLLStore | None" = None) -> list[float]:
    """PLL(mutant) - PLL(wild type) over the scoring window; one forward per masked position.

    With `store`, each sequence's PLL is saved as soon as it is known and reused, so a killed
    run loses at most one sequence's forwards.
    """
    wins = [centred_window([m.pos for m in ms], len(wt_seq), max_len) for ms in mutants]
    seqs = [apply_mutations(wt_seq, ms)[s:e] for ms, (s, e) in zip(mutants, wins)]
    wt_keys = sorted(set(wins))
    pll = dict(store.values) if store is not None else {}
    todo = [s for s in dict.fromkeys([wt_seq[s:e] for s, e in wt_keys] + seqs) if s not in pll]
    bar.reset(total=sum(len(s) for s in todo))
    for s in todo:
        pll[s] = _pll(s, alphabet, engine, bar)
        if store is not None:
            store.add(s, pll[s])
    return [pll[s] - pll[wt_seq[a:b]] for s, (a, b) in zip(seqs, wins)]


class PLLStore:
    """Append-only JSONL of {sequence: PLL} for one model, beside a long run's output.

    The first line names the model; a store written for another model is started afresh. Each
    line is flushed and fsynced, and a torn last line (a kill mid-write) is ignored on reading.
    Keyed by the scored sequence itself, so a changed wild type is never served an old PLL.
    """

    def __init__(self, path, model: str):
        self.path, self.values = Path(path), {}
        header = {"model": model}
        text = self.path.read_text() if self.path.exists() else ""
        lines = text.splitlines()
        if lines and _json_or_none(lines[0]) == header:
            for line in lines[1:]:
                rec = _json_or_none(line)
                if isinstance(rec, dict) and "seq" in rec and "pll" in rec:
                    self.values[rec["seq"]] = float(rec["pll"])
            self._fh = open(self.path, "a")
            if not text.endswith("\n"):
                self._fh.write("\n")  # end a torn line so the next record starts clean
        else:
            self._fh = open(self.path, "w")
            self._fh.write(json.dumps(header) + "\n")

    def add(self, seq: str, value: float) -> None:
        self._fh.write(json.dumps({"seq": seq, "pll": value}) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _pll(seq: str, alphabet: Alphabet, engine: Engine, bar) -> float:
    jobs = [_tokens(alphabet, seq, [i]) for i in range(len(seq))]
    lps = _run(jobs, engine, bar)
    o = alphabet.residue_offset
    return sum(float(lp[i + o, alphabet.get_idx(c)]) for i, (lp, c) in enumerate(zip(lps, seq)))


SCORERS = {"masked-marginal": masked_marginal, "wt-marginal": wt_marginal, "pseudo-ll": pseudo_ll}


def score_mutants(model, alphabet: Alphabet, wt_seq: str, mutants: Sequence[str],
                  method: str = "masked-marginal", offset: int = 1, batch_size: int = 8,
                  max_len: int | None = None, progress: bool = False,
                  pll_store: PLLStore | None = None) -> list[float]:
    """One score per mutant string (higher = predicted more fit than wild type).

    Every mutant is parsed and checked against `wt_seq` before any forward pass.
    `max_len` defaults to the model's `max_sequence_length`. `pll_store` (pseudo-ll only) keeps
    finished sequences' PLLs so that a rerun after a kill resumes.
    """
    from tqdm import tqdm

    if method not in SCORERS:
        raise InputError(f"--method must be one of {METHODS}, got {method!r}")
    require_mlm(model, alphabet)
    wt_seq = alphabet.clean(wt_seq, "wild type")
    parsed = [parse_mutant(m, wt_seq, offset) for m in mutants]
    max_len = max_len or model.config.max_sequence_length
    for text, ms in zip(mutants, parsed):  # before any forward: name the mutant that cannot fit
        try:
            centred_window([m.pos for m in ms], len(wt_seq), max_len)
        except MutationError as e:
            raise MutationError(f"mutant {text!r}: {e}") from None
    extra = {"store": pll_store} if method == "pseudo-ll" else {}
    # batch_size sequences per forward: the scorers' sequences of one call share a length
    engine = Engine(model, alphabet, toks_per_batch=batch_size * (min(max_len, len(wt_seq)) + alphabet.num_specials),
                    window=max_len)
    with tqdm(desc=method, unit="fwd", disable=not progress) as bar:
        return SCORERS[method](wt_seq, parsed, alphabet, engine, max_len, bar, **extra)


def require_mlm(model, alphabet: Alphabet) -> None:
    """Variant scores are masked-language-model log-probabilities: refuse an encoder without them."""
    from protlm.evaluate.perplexity import has_mlm_head

    if not has_mlm_head(model) or alphabet.mask_idx is None:
        raise InputError("this model has no masked-language-model head (the ProtT5 encoder gives "
                         "representations only); variant scoring needs an ESM-1b/ESM-1v/ESM-2 or CARP model")


def read_wild_type(path, unknown: str | None = None) -> str:
    """The single record of a wild-type FASTA (validated; `unknown` as in read_fasta)."""
    from protlm.data.fasta import read_fasta

    records = list(read_fasta(path, unknown=unknown))
    if len(records) != 1:
        raise MutationError(f"{path}: the wild-type FASTA must hold exactly one record, found {len(records)}")
    return records[0].sequence


def score_file(model_name: str, wt_fasta, mutations_csv, output, method: str = "masked-marginal",
               column: str | None = None, offset: int = 1, batch_size: int = 8,
               device: str | None = None, progress: bool = True, loader=None,
               unknown: str | None = None, dtype: str = "fp32") -> int:
    """Read the `mutant` column of a CSV/TSV, score every row, write all input columns plus one
    score column (named after the method unless `column` is given). Atomic: the output appears
    only when every row is scored. pseudo-ll keeps finished PLLs in `<output>.pll.jsonl` until
    the output is written, so a rerun after a kill resumes. `unknown` (e.g. 'X') replaces
    characters of the wild type outside the alphabet. The output's lock (protlm.lock) is held
    while scoring: a second writer fails at once. `dtype`: inference precision (fp32, bf16,
    int8, auto: protlm.engine.precision). Returns the number of rows."""
    import csv

    import protlm
    from protlm.data.fasta import not_a_table
    from protlm.engine import precision
    from protlm.pretrained.load import model_identity

    wt_seq = read_wild_type(wt_fasta, unknown)
    dtype = precision.resolve_dtype(dtype, device or "cpu")
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
        model, alphabet = (loader or protlm.load_model_and_alphabet)(model_name)
        require_mlm(model, alphabet)  # before quantizing or opening a store
        model = precision.prepare_model(model, device or "cpu", dtype, source=model_name, verbose=False)
        store = (PLLStore(out.with_name(out.name + ".pll.jsonl"), precision.keyed(model_identity(model_name), dtype))
                 if method == "pseudo-ll" else None)
        scores = score_mutants(model, alphabet, wt_seq, [r["mutant"] for r in rows], method, offset,
                               batch_size, progress=progress, pll_store=store)
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields + [column], delimiter=delim)
            w.writeheader()
            for row, s in zip(rows, scores):
                w.writerow({**row, column: f"{s:.6g}"})
        if store is not None:
            store.close()
            store.path.unlink()
        return len(rows)
