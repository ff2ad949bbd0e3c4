"""Vocabularies, input rules and the batch converter, for every model family.

ESM (default `Alphabet()`): token indices match fair-esm's ESM-1b alphabet exactly (also used by
ESM-2), so published embedding and LM-head rows line up: <cls>=0 <pad>=1 <eos>=2 <unk>=3,
20 amino acids and X B U Z O . - (4..30), <null_1>=31, <mask>=32. Tokens: <cls> residues <eos>.

ProtT5 (`Alphabet.prot_t5()`): the T5 sentencepiece vocabulary of Rostlab/prot_t5_xl_uniref50,
<pad>=0 </s>=1 <unk>=2, residue pieces ▁A ▁L ... ▁Z (3..27), <extra_id_99>..<extra_id_0>
(28..127). The published recipe: one piece per residue, U Z O B mapped to X, `</s>` appended,
no BOS. Tokens: residues </s>.

CARP (`Alphabet.carp()`): sequence-models' PROTEIN_ALPHABET, 30 single characters: the 20 amino
acids, B Z X J O U (0..25), '*' stop, '-' pad, '#' mask, '@' start (26..29). No BOS or EOS are
added (the published CARP collater adds none). Tokens: residues, right-padded with '-'.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from protlm.errors import ProtlmError, ProtlmWarning

PREPEND_TOKS = ("<cls>", "<pad>", "<eos>", "<unk>")
RESIDUE_TOKS = tuple("LAGVSERTIDPKQNFYMHWCXBUZO.-")
APPEND_TOKS = ("<mask>",)
STANDARD_AAS = "ACDEFGHIKLMNPQRSTVWY"

# ProtT5's sentencepiece pieces in id order (checked against public dumps of the published
# tokenizer in tests/unit/models/test_t5.py); T5Tokenizer appends 100 sentinels, highest first.
PROT_T5_SPECIALS = ("<pad>", "</s>", "<unk>")
PROT_T5_RESIDUES = "ALGVSREDTIPKFQNYMHWCXBOUZ"
PROT_T5_EXTRA_IDS = 100
PROT_T5_TO_X = "UZOB"  # the published recipe: re.sub(r"[UZOB]", "X", sequence)
# sequence_models.constants.PROTEIN_ALPHABET: ALL_AAS + STOP + GAP (= PAD) + MASK + START
CARP_RESIDUES = STANDARD_AAS + "BZX" + "JOU"
CARP_TOKENS = CARP_RESIDUES + "*-#@"
SPIECE_SPACE = "\u2581"  # sentencepiece's word-start mark: residue pieces are "▁A", "▁L", ...


class InvalidSequenceError(ProtlmError, ValueError):
    """A residue outside the alphabet; names the record and the 1-based position."""

    hint = "use unknown='X' to map such characters to X"
    cli_hint = "use --unknown-to-x to map such characters to X"

    def __init__(self, record: str, position: int, char: str):
        self.record, self.position, self.char = record, position, char
        super().__init__(f"record {record!r}: invalid residue {char!r} at position {position}")


class GapWarning(ProtlmWarning):
    """A sequence holds '-' or '.', which ESM's vocabulary has as gap tokens."""


GAP_MESSAGE = ("sequences hold gap characters ('-' or '.'): ESM models embed them as gap tokens, "
               "as fair-esm does; remove them from aligned rows (e.g. A3M) to embed the protein itself")


def _build_vocab() -> list[str]:
    toks = list(PREPEND_TOKS) + list(RESIDUE_TOKS)
    # fair-esm pads the vocabulary to a multiple of 8 before appending <mask>
    toks += [f"<null_{i + 1}>" for i in range((8 - len(toks) % 8) % 8)]
    return toks + list(APPEND_TOKS)


def prot_t5_vocab() -> list[str]:
    """ProtT5's 128 tokens in id order (the built-in mapping, used when a folder has no tokenizer)."""
    return [*PROT_T5_SPECIALS, *(SPIECE_SPACE + r for r in PROT_T5_RESIDUES),
            *(f"<extra_id_{i}>" for i in reversed(range(PROT_T5_EXTRA_IDS)))]


@dataclass
class Alphabet:
    """A model's vocabulary with fair-esm's attribute names (ESM by default; see `prot_t5`).

    residues: the characters accepted in input sequences; piece_prefix: what a residue's token
    is spelled with ("" for ESM, "▁" for ProtT5); to_x: residues encoded as X. cls_tok/mask_tok
    None: the vocabulary has no such token (then cls_idx/mask_idx are None).
    """

    all_toks: list[str] = field(default_factory=_build_vocab)
    prepend_bos: bool = True
    append_eos: bool = True
    residues: str = "".join(RESIDUE_TOKS)
    piece_prefix: str = ""
    to_x: str = ""
    pad_tok: str = "<pad>"
    eos_tok: str = "<eos>"
    unk_tok: str = "<unk>"
    cls_tok: str | None = "<cls>"
    mask_tok: str | None = "<mask>"

    def __post_init__(self):
        self.tok_to_idx = {t: i for i, t in enumerate(self.all_toks)}
        missing = [t for t in (self.pad_tok, self.eos_tok, self.unk_tok, self.cls_tok, self.mask_tok)
                   if t is not None and t not in self.tok_to_idx]
        missing += [self.piece_prefix + r for r in self.residues if r not in self.to_x
                    and self.piece_prefix + r not in self.tok_to_idx]
        if missing:
            raise ValueError(f"vocabulary lacks the tokens {missing}")
        self.padding_idx = self.tok_to_idx[self.pad_tok]
        self.eos_idx = self.tok_to_idx[self.eos_tok]
        self.unk_idx = self.tok_to_idx[self.unk_tok]
        self.cls_idx = self.tok_to_idx[self.cls_tok] if self.cls_tok else None
        self.mask_idx = self.tok_to_idx[self.mask_tok] if self.mask_tok else None
        # residue character -> token index (U Z O B -> X where the recipe says so)
        self.residue_idx = {r: self.tok_to_idx[self.piece_prefix + ("X" if r in self.to_x else r)]
                            for r in self.residues}
        self.standard_toks = list(self.residues)
        self.standard_aa_idx = [self.residue_idx[a] for a in STANDARD_AAS]

    @classmethod
    def prot_t5(cls, all_toks: list[str] | None = None) -> "Alphabet":
        """ProtT5's vocabulary: `all_toks` read from a checkpoint's tokenizer files, else built in."""
        return cls(all_toks=list(all_toks or prot_t5_vocab()), prepend_bos=False, append_eos=True,
                   residues=STANDARD_AAS + "X" + PROT_T5_TO_X, piece_prefix=SPIECE_SPACE,
                   to_x=PROT_T5_TO_X, pad_tok="<pad>", eos_tok="</s>", unk_tok="<unk>",
                   cls_tok=None, mask_tok=None)

    @classmethod
    def carp(cls) -> "Alphabet":
        """CARP's 30 tokens (see the module docstring). '*' stands as the EOS token but is never
        appended; 'X' is the unknown token; '-' is padding only, so it is not accepted in input."""
        return cls(all_toks=list(CARP_TOKENS), prepend_bos=False, append_eos=False,
                   residues=CARP_RESIDUES, pad_tok="-", eos_tok="*", unk_tok="X",
                   cls_tok=None, mask_tok="#")

    # fair-esm's remaining Alphabet attributes (protlm has no MSA models)
    use_msa = False

    @property
    def prepend_toks(self) -> list[str]:
        """Special tokens before the residues (ESM: <cls> <pad> <eos> <unk>)."""
        first = min(self.residue_idx.values())
        return self.all_toks[:first]

    @property
    def append_toks(self) -> list[str]:
        """Special tokens after the residues (ESM: <mask>; fair-esm's <null_k> fillers are not)."""
        last = max(self.tok_to_idx[self.piece_prefix + r] for r in self.residues
                   if self.piece_prefix + r in self.tok_to_idx)
        return [t for t in self.all_toks[last + 1:] if t.startswith("<") and not t.startswith("<null_")]

    @property
    def unique_no_split_tokens(self) -> list[str]:
        return list(self.all_toks)

    def tokenize(self, text: str) -> list[str]:
        """fair-esm's tokenize: whitespace dropped, special tokens such as <mask> kept whole."""
        text = "".join(text.split())
        out, i = [], 0
        while i < len(text):
            j = text.find(">", i) if text[i] == "<" else -1
            if j > 0 and text[i : j + 1] in self.tok_to_idx:
                out.append(text[i : j + 1])
                i = j + 1
            else:
                out.append(text[i])
                i += 1
        return out

    @property
    def residue_offset(self) -> int:
        """Index of the first residue in a tokenised sequence (1 after a BOS, else 0)."""
        return int(self.prepend_bos)

    @property
    def num_specials(self) -> int:
        """Tokens a sequence gets besides its residues (BOS and/or EOS)."""
        return int(self.prepend_bos) + int(self.append_eos)

    @classmethod
    def from_architecture(cls, name: str = "ESM-1b") -> "Alphabet":
        if name not in ("ESM-1b", "roberta_large", "ESM-2", "esm2"):
            raise ValueError(f"unsupported alphabet architecture {name!r}")
        return cls()

    def __len__(self) -> int:
        return len(self.all_toks)

    def get_idx(self, tok: str) -> int:
        return self.tok_to_idx.get(tok, self.unk_idx)

    def get_tok(self, idx: int) -> str:
        return self.all_toks[idx]

    def to_dict(self) -> dict[str, int]:
        return dict(self.tok_to_idx)

    def clean(self, seq: str, record: str = "?", unknown: str | None = None) -> str:
        """Apply the input rules: drop whitespace, upper-case, drop one trailing '*'.

        Any other character outside the residue alphabet raises InvalidSequenceError,
        unless `unknown` (e.g. 'X') is given, in which case it is substituted.
        """
        s = "".join(seq.split()).upper()
        if s.endswith("*"):
            s = s[:-1]
        valid = self._residue_set
        if all(c in valid for c in s):
            if "-" in s or "." in s:
                warnings.warn(GAP_MESSAGE, GapWarning, stacklevel=2)
            return s
        out = []
        for i, c in enumerate(s):
            if c in valid:
                out.append(c)
            elif unknown is not None:
                out.append(unknown)
            else:
                raise InvalidSequenceError(record, i + 1, c)
        return "".join(out)

    @property
    def _residue_set(self) -> frozenset[str]:
        return frozenset(self.residues)

    def encode(self, seq: str, record: str = "?", offset: int = 0) -> list[int]:
        """Residue string -> indices (special tokens such as <mask> are recognised).

        Any other character outside the alphabet (lower case included) raises
        InvalidSequenceError naming `record` and the 1-based position (+ `offset`), as fair-esm's
        batch converter refuses it (KeyError); `clean()` upper-cases and maps unknowns first.
        """
        out, i = [], 0
        get, tok_to_idx = self.residue_idx.get, self.tok_to_idx
        while i < len(seq):
            c = seq[i]
            if c == "<":
                j = seq.find(">", i)
                if j > 0 and seq[i : j + 1] in tok_to_idx:
                    out.append(tok_to_idx[seq[i : j + 1]])
                    i = j + 1
                    continue
            idx = get(c)
            if idx is None:
                err = InvalidSequenceError(record, offset + i + 1, c)
                err.hint = err.cli_hint = self.clean_hint
                raise err
            out.append(idx)
            i += 1
        return out

    clean_hint = ("residues must be upper-case letters of the alphabet, as for fair-esm; "
                  "Alphabet.clean(seq, unknown='X') upper-cases and maps the others to X")

    def get_batch_converter(self, truncation_seq_length: int | None = None) -> "BatchConverter":
        return BatchConverter(self, truncation_seq_length)


class BatchConverter:
    """(label, sequence) pairs -> (labels, strs, tokens (B, T)) with BOS/EOS and padding."""

    def __init__(self, alphabet: Alphabet, truncation_seq_length: int | None = None):
        self.alphabet = alphabet
        self.truncation_seq_length = truncation_seq_length

    def __call__(self, raw_batch: Iterable[tuple[str | None, str]]):
        a = self.alphabet
        raw_batch = list(raw_batch)  # a generator or zip would be used up by the first pass
        if not raw_batch:
            raise ValueError("empty batch: give at least one (label, sequence) pair")  # as fair-esm refuses it
        labels = [label for label, _ in raw_batch]
        strs = [s for _, s in raw_batch]
        # fair-esm's tokenizer drops whitespace; anything else outside the alphabet is an error
        encoded = [a.encode("".join(s.split()), f"#{i}" if label is None else str(label))
                   for i, (label, s) in enumerate(raw_batch)]
        if self.truncation_seq_length:
            encoded = [e[: self.truncation_seq_length] for e in encoded]
        return labels, strs, pad_tokens(encoded, a)


def pad_tokens(encoded: Sequence[Sequence[int]], alphabet: Alphabet) -> torch.Tensor:
    """Encoded residue lists -> (B, max_len + bos + eos) int64 tokens, right-padded (BOS/EOS as
    the alphabet says: ESM <cls> ... <eos>, ProtT5 ... </s>)."""
    a = alphabet
    bos, eos = int(a.prepend_bos), int(a.append_eos)
    max_len = max((len(e) for e in encoded), default=0)
    tokens = torch.full((len(encoded), max_len + bos + eos), a.padding_idx, dtype=torch.int64)
    for i, e in enumerate(encoded):
        if bos:
            tokens[i, 0] = a.cls_idx
        tokens[i, bos : bos + len(e)] = torch.as_tensor(e, dtype=torch.int64)
        if eos:
            tokens[i, bos + len(e)] = a.eos_idx
    return tokens
