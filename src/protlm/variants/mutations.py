"""Mutations against a wild type: parsed and checked before any model runs (pure functions)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from protlm.errors import ProtlmError

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
