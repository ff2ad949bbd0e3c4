"""Zero-shot variant effects from a masked language model (Meier et al. 2021).

Scores are log-probability ratios of mutant vs wild-type residues, from log-softmax over the
whole vocabulary as in fair-esm's variant-prediction example:
- masked-marginal: mask every mutated position together, sum log p(mt) - log p(wt) there;
- wt-marginal: the same ratio read from one unmasked forward pass on the wild type;
- pseudo-ll: PLL(mutant) - PLL(wt), PLL = sum_i log p(x_i | x with i masked) over the window.
Proteins over the model's limit are scored in a window of max length centred on the mutations.
Every forward goes through the inference engine (packed token-budget batches).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from protlm.alphabet import Alphabet
from protlm.data.windows import merge_1d, window_spans
from protlm.embed.engine import Engine
from protlm.errors import InputError
from protlm.models.encoder import has_mlm_head
from protlm.variants.mutations import Mutation, MutationError, apply_mutations, centred_window, parse_mutant
from protlm.variants.store import PLLStore

METHODS = ("masked-marginal", "wt-marginal", "pseudo-ll")


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


def _pll(seq: str, alphabet: Alphabet, engine: Engine, bar) -> float:
    jobs = [_tokens(alphabet, seq, [i]) for i in range(len(seq))]
    lps = _run(jobs, engine, bar)
    o = alphabet.residue_offset
    return sum(float(lp[i + o, alphabet.get_idx(c)]) for i, (lp, c) in enumerate(zip(lps, seq)))


SCORERS = {"masked-marginal": masked_marginal, "wt-marginal": wt_marginal, "pseudo-ll": pseudo_ll}


def score_mutants(model, alphabet: Alphabet, wt_seq: str, mutants: Sequence[str],
                  method: str = "masked-marginal", offset: int = 1, *, toks_per_batch: int = 4096,
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
    engine = Engine(model, alphabet, toks_per_batch=toks_per_batch, window=max_len)
    with tqdm(desc=method, unit="fwd", disable=not progress) as bar:
        return SCORERS[method](wt_seq, parsed, alphabet, engine, max_len, bar, **extra)


def require_mlm(model, alphabet: Alphabet) -> None:
    """Variant scores are masked-language-model log-probabilities: refuse an encoder without them."""
    if not has_mlm_head(model) or alphabet.mask_idx is None:
        raise InputError("this model has no masked-language-model head (the ProtT5 encoder gives "
                         "representations only); variant scoring needs an ESM-1b/ESM-1v/ESM-2 or CARP model")
