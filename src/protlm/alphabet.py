"""The ESM vocabulary, input rules and the batch converter.

Token indices match fair-esm's ESM-1b alphabet exactly (also used by ESM-2), so published
embedding and LM-head rows line up: <cls>=0 <pad>=1 <eos>=2 <unk>=3, 20 amino acids and
X B U Z O . - (4..30), <null_1>=31, <mask>=32.
"""

from __future__ import annotations

from protlm.errors import ProtlmError
from dataclasses import dataclass, field
from typing import Sequence

import torch

PREPEND_TOKS = ("<cls>", "<pad>", "<eos>", "<unk>")
RESIDUE_TOKS = tuple("LAGVSERTIDPKQNFYMHWCXBUZO.-")
APPEND_TOKS = ("<mask>",)
STANDARD_AAS = "ACDEFGHIKLMNPQRSTVWY"


class InvalidSequenceError(ProtlmError, ValueError):
    """A residue outside the alphabet; names the record and the 1-based position."""

    hint = "use unknown='X' to map such characters to X"
    cli_hint = "use --unknown-to-x to map such characters to X"

    def __init__(self, record: str, position: int, char: str):
        self.record, self.position, self.char = record, position, char
        super().__init__(f"record {record!r}: invalid residue {char!r} at position {position}")


def _build_vocab() -> list[str]:
    toks = list(PREPEND_TOKS) + list(RESIDUE_TOKS)
    # fair-esm pads the vocabulary to a multiple of 8 before appending <mask>
    toks += [f"<null_{i + 1}>" for i in range((8 - len(toks) % 8) % 8)]
    return toks + list(APPEND_TOKS)


@dataclass
class Alphabet:
    """The ESM-1b/ESM-2 vocabulary with fair-esm's attribute names."""

    all_toks: list[str] = field(default_factory=_build_vocab)
    prepend_bos: bool = True
    append_eos: bool = True

    def __post_init__(self):
        self.tok_to_idx = {t: i for i, t in enumerate(self.all_toks)}
        self.padding_idx = self.tok_to_idx["<pad>"]
        self.cls_idx = self.tok_to_idx["<cls>"]
        self.eos_idx = self.tok_to_idx["<eos>"]
        self.unk_idx = self.tok_to_idx["<unk>"]
        self.mask_idx = self.tok_to_idx["<mask>"]
        self.standard_toks = list(RESIDUE_TOKS)
        self.standard_aa_idx = [self.tok_to_idx[a] for a in STANDARD_AAS]

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
        return frozenset(RESIDUE_TOKS)

    def encode(self, seq: str) -> list[int]:
        """Residue string -> indices (special tokens such as <mask> are recognised)."""
        out, i = [], 0
        while i < len(seq):
            if seq[i] == "<":
                j = seq.find(">", i)
                if j > 0 and seq[i : j + 1] in self.tok_to_idx:
                    out.append(self.tok_to_idx[seq[i : j + 1]])
                    i = j + 1
                    continue
            out.append(self.tok_to_idx.get(seq[i], self.unk_idx))
            i += 1
        return out

    def get_batch_converter(self, truncation_seq_length: int | None = None) -> "BatchConverter":
        return BatchConverter(self, truncation_seq_length)


class BatchConverter:
    """(label, sequence) pairs -> (labels, strs, tokens (B, T)) with BOS/EOS and padding."""

    def __init__(self, alphabet: Alphabet, truncation_seq_length: int | None = None):
        self.alphabet = alphabet
        self.truncation_seq_length = truncation_seq_length

    def __call__(self, raw_batch: Sequence[tuple[str, str]]):
        a = self.alphabet
        labels = [label for label, _ in raw_batch]
        strs = [s for _, s in raw_batch]
        encoded = [a.encode(s) for s in strs]
        if self.truncation_seq_length:
            encoded = [e[: self.truncation_seq_length] for e in encoded]
        return labels, strs, pad_tokens(encoded, a)


def pad_tokens(encoded: Sequence[Sequence[int]], alphabet: Alphabet) -> torch.Tensor:
    """Encoded residue lists -> (B, max_len + bos + eos) int64 tokens, right-padded."""
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
