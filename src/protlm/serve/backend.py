"""The model behind the server, and the one module of protlm.serve that imports protlm's library
(protlm.errors aside).

Every protlm-internal name the server uses is imported here (and re-exported for the other
serve modules), so moving a library module means editing these import lines only.

`Backend` holds one loaded model. Its methods run the library's own code: the embedding engine
of `protlm embed` (packed token-budget batches, windows, pooling, contacts on the padded path),
`score_mutants` of `protlm variants score`, `masked_perplexity` of `protlm evaluate`. Methods
named `run_*` touch the model and are called from the server's one model thread only; the
others are pure checks for the event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch

from protlm.alphabet import STANDARD_AAS, InvalidSequenceError
from protlm.embed import EmbedConfig, Engine
from protlm.embed.pipeline import make_engine
from protlm.errors import ConfigError, InputError, ProtlmError
from protlm.evaluate.perplexity import DEFAULT_SEED, MaskPlan, masked_perplexity
from protlm.models.carp import NO_ATTENTION
from protlm.models.encoder import has_mlm_head
from protlm.runtime.options import LONG_MODES, InferenceOptions
from protlm.runtime.precision import canonical
from protlm.variants.mutations import (
    Mutation,
    MutationError,
    centred_window,
    parse_mutant,
)
from protlm.variants.scoring import METHODS, score_mutants
from protlm.version import __version__

__all__ = ["Backend", "ConfigError", "check_options", "DEFAULT_SEED", "InputError", "LONG_MODES", "METHODS", "ProtlmError",
           "STANDARD_AAS", "RequestError", "__version__"]

ENGINE_CACHE = 16  # engines kept, one per (layers, long) asked for; each is cheap on the CPU
WARMUP_SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV"


class RequestError(ProtlmError, ValueError):
    """Something in a request the server cannot use; the message names the record and where."""


@dataclass
class Backend:
    """A loaded model (eval mode, on its device) and the engines that run it."""

    model: torch.nn.Module
    alphabet: object
    name: str
    device: str
    dtype: str
    max_batch_tokens: int = 4096
    _engines: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self):
        # planning engines for the event loop: spans and costs only, never a forward
        self._planners = {long: Engine(self.model, self.alphabet, long=long) for long in LONG_MODES}

    @classmethod
    def load(cls, name: str, device: str | None = None, dtype: str = "fp32",
             max_batch_tokens: int = 4096) -> "Backend":
        """Load `name` (published name or path) as `protlm embed` does: device checked, dtype
        resolved ('auto' measured and said once), int8 weights cached by name."""
        opts = InferenceOptions(model=str(name), device=device, dtype=dtype).resolved()
        model, alphabet = opts.load()
        return cls(model, alphabet, str(name), opts.device, opts.dtype, max_batch_tokens)

    # ---- what the model can do ----
    @property
    def max_residues(self) -> int:
        return self.model.config.max_sequence_length

    @property
    def has_contacts(self) -> bool:
        return getattr(self.model, "contact_head", None) is not None

    @property
    def contacts_calibrated(self) -> bool:
        return self.has_contacts and bool(getattr(self.model.contact_head, "fitted", True))

    @property
    def has_mlm(self) -> bool:
        return has_mlm_head(self.model) and self.alphabet.mask_idx is not None

    def info(self) -> dict:
        """What GET /v1/models says about the model."""
        return {"id": self.name, "object": "model", "owned_by": "protlm", "protlm_version": __version__,
                "family": type(self.model).__name__, "layers": self.model.num_layers,
                "embed_dim": self.model.config.embed_dim, "max_residues": self.max_residues,
                "params": sum(p.numel() for p in self.model.parameters()), "device": self.device,
                "dtype": self.dtype, "bos": bool(self.alphabet.prepend_bos),
                "contacts": self.has_contacts, "contacts_calibrated": self.contacts_calibrated,
                "masked_lm": self.has_mlm, "variant_methods": list(METHODS) if self.has_mlm else []}

    # ---- checks for the event loop (pure: no forward) ----
    def clean(self, rid: str, seq: str, unknown_to_x: bool) -> str:
        """`protlm embed`'s input rules (upper case, one trailing '*' dropped, unknown residues
        refused or mapped to X); RequestError naming the record and the 1-based position."""
        try:
            out = self.alphabet.clean(seq, record=rid, unknown="X" if unknown_to_x else None)
        except InvalidSequenceError as e:
            raise RequestError(f"record {e.record!r}: invalid residue {e.char!r} at position {e.position} "
                               '(set "unknown_to_x": true to map such characters to X)') from None
        if not out:
            raise RequestError(f"record {rid!r}: empty sequence")
        return out

    def layers(self, layers: Sequence[int]) -> tuple[int, ...]:
        """fair-esm layer numbers resolved (negative from the end); RequestError when out of range."""
        try:
            return tuple(self.model.resolve_layers(layers))
        except (InputError, ValueError) as e:
            raise RequestError(f"layers: {e}") from None

    def spans(self, rid: str, length: int, long: str) -> list[tuple[int, int]]:
        """The residue spans `protlm embed --long LONG` runs a sequence as; names the record."""
        try:
            return self._planners[long].spans(length)
        except InputError:
            raise RequestError(f"record {rid!r} has {length} residues, over the model's limit of "
                               f'{self.max_residues}; use "long": "truncate" or "window"') from None

    def cost(self, length: int, long: str) -> int:
        """Model tokens a sequence costs (residues + BOS/EOS per window)."""
        return self._planners[long].cost(length)

    def check_embeddings(self, include: Sequence[str]) -> None:
        if "bos" in include and not self.alphabet.prepend_bos:
            raise RequestError("this model's tokens have no BOS: include mean or per_tok, not bos")

    def check_contacts(self) -> None:
        if not self.has_contacts:
            why = NO_ATTENTION if "CARP" in type(self.model).__name__ else "this model has no contact head"
            raise RequestError(why)

    def check_mlm(self, what: str) -> None:
        if not self.has_mlm:
            raise RequestError(f"{what} needs a masked-language-model head, which this model lacks "
                               "(the ProtT5 encoder gives representations only)")

    def mutants(self, rid: str, wt: str, mutants: Sequence[str], offset: int) -> list[tuple[Mutation, ...]]:
        """Every mutant parsed and checked against the wild type (and the scoring window) before
        any forward, as `score_mutants` does; RequestError naming the mutant and its index."""
        out = []
        for i, text in enumerate(mutants):
            try:
                ms = parse_mutant(text, wt, offset)
                centred_window([m.pos for m in ms], len(wt), self.max_residues)
            except MutationError as e:
                raise RequestError(f"{rid}: mutations[{i}]: {e}") from None
            out.append(ms)
        return out

    def variant_cost(self, wt_len: int, parsed: Sequence[tuple[Mutation, ...]], method: str) -> int:
        """Model tokens `score_mutants` runs: one forward per distinct set of masked positions
        (masked-marginal), the wild type's windows (wt-marginal), or one forward per residue of
        every distinct sequence (pseudo-ll)."""
        w = min(wt_len, self.max_residues) + self.alphabet.num_specials
        if method == "masked-marginal":
            return w * len({tuple(m.pos for m in ms) for ms in parsed})
        if method == "wt-marginal":
            return self.cost(wt_len, "window")
        return w * (w - self.alphabet.num_specials) * (len(parsed) + 1)

    def perplexity_cost(self, length: int) -> int:
        return min(length, self.max_residues) + self.alphabet.num_specials

    # ---- model work: the model thread only ----
    def engine(self, layers: tuple[int, ...], long: str) -> Engine:
        """`protlm embed`'s engine for these layers and long mode (built once, then reused)."""
        key = (layers, long)
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        opts = InferenceOptions(model=self.name, toks_per_batch=self.max_batch_tokens, long=long)
        self._engines[key] = make_engine(self.model, self.alphabet, EmbedConfig(repr_layers=layers), opts)
        if len(self._engines) > ENGINE_CACHE:
            self._engines.popitem(last=False)
        return self._engines[key]

    def run_records(self, key: tuple, items: Sequence[tuple[str, frozenset]]) -> list[dict]:
        """Per (sequence, outputs wanted), in order: {'mean' | 'bos': (nl, D), 'per_tok':
        (nl, L, D), 'contacts': (L, L)} float32 on the host. key: (layers, long, contacts?);
        the sequences go through `Engine.run` together: packed token-budget batches (padded
        with contacts), exactly as `protlm embed` batches a FASTA file."""
        layers, long = key[0], key[1]
        engine = self.engine(layers, long)
        want = frozenset().union(*(w for _, w in items))
        out: list[dict | None] = [None] * len(items)
        for idx, recs in engine.run([s for s, _ in items], want):
            for i, r in zip(idx, recs):
                # clones: a record's views would keep its whole batch's host tensors alive
                out[i] = {k: r[k].clone() for k in items[i][1]}
        return out

    def run_scores(self, wt: str, mutants: Sequence[str], method: str, offset: int) -> list[float]:
        """`protlm variants score` on one wild type, forwards of about max_batch_tokens."""
        return score_mutants(self.model, self.alphabet, wt, list(mutants), method, offset,
                             toks_per_batch=self.max_batch_tokens)

    def run_perplexity(self, seq: str, seed: int, mask_prob: float) -> dict:
        """`protlm evaluate`'s masked perplexity of one sequence (masks seeded by (seed, sequence))."""
        plan = MaskPlan([seq], seed, self.max_residues, mask_prob, self.max_batch_tokens)
        return masked_perplexity(self.model, self.alphabet, plan)

    def warm_up(self) -> None:
        """One batch through the embedding engine (and the contact path when there is one)."""
        self.run_records(((self.model.num_layers,), "truncate", False), [(WARMUP_SEQUENCE, frozenset({"mean"}))])
        if self.has_contacts:
            self.run_records(((self.model.num_layers,), "window", True), [(WARMUP_SEQUENCE, frozenset({"contacts"}))])


def check_options(device: str | None, dtype: str) -> None:
    """A bad --device or --dtype (CUDA absent, int8 on CUDA, an unknown name) fails here, before
    the server listens; 'auto' is measured later, once, when the model loads."""
    canonical(dtype)
    InferenceOptions(device=device, dtype="fp32" if dtype == "auto" else dtype).resolved(verbose=False)
