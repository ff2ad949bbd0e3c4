"""Experimental structures -> true contact maps over a chain's full sequence (gemmi).

A residue's position is its index in the chain's full sequence (mmCIF entity_poly_seq or PDB
SEQRES, numbered by `label_seq`), so residues missing from the model are kept in the sequence
and masked out (`observed` False) instead of silently shifting every later index.
"""

from __future__ import annotations

from protlm.errors import ProtlmError
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

CONTACT_THRESHOLD = 8.0  # Å, Cβ–Cβ (Cα for glycine), as in the ESM papers


class StructureError(ProtlmError, ValueError):
    """A structure file that cannot give a protein chain; the message names the file and chain."""


@dataclass(frozen=True)
class ChainStructure:
    """One protein chain: its full sequence and Cβ coordinates (NaN where unobserved).

    `coords_L3` (L, 3) in Å; `observed` (L,) bool; L = len(sequence).
    """

    source: str
    chain: str
    sequence: str
    coords_L3: np.ndarray

    @property
    def observed(self) -> np.ndarray:
        return ~np.isnan(self.coords_L3).any(-1)

    def distances(self) -> np.ndarray:
        """(L, L) Cβ–Cβ distances in Å; NaN where either residue is unobserved."""
        diff_LL3 = self.coords_L3[:, None, :] - self.coords_L3[None, :, :]
        return np.sqrt((diff_LL3 ** 2).sum(-1))

    def contacts(self, threshold: float = CONTACT_THRESHOLD) -> np.ndarray:
        """(L, L) int8 map: 1 contact, 0 no contact, -1 unobserved (masked out of every metric)."""
        d_LL = self.distances()
        out = (d_LL < threshold).astype(np.int8)
        out[np.isnan(d_LL)] = -1
        return out


def split_spec(spec: str) -> tuple[str, str | None]:
    """'file.cif:B' -> ('file.cif', 'B'); 'file.cif' -> ('file.cif', None)."""
    path, sep, chain = str(spec).rpartition(":")
    if sep and path and chain and "/" not in chain and not Path(spec).exists():
        return path, chain
    return str(spec), None


def _read(path: Path) -> gemmi.Structure:
    if not path.is_file():
        raise StructureError(f"{path}: no such structure file")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as e:
        raise StructureError(f"{path}: not a PDB or mmCIF structure ({e})") from None
    if len(st) == 0:
        raise StructureError(f"{path}: no models in the structure")
    st.setup_entities()
    # Numbers residues by their position in the full sequence (aligning to SEQRES for PDB files).
    st.assign_label_seq_id(force=False)
    return st


def _protein_chains(model: gemmi.Model) -> list[gemmi.Chain]:
    return [c for c in model
            if c.get_polymer().check_polymer_type() in (gemmi.PolymerType.PeptideL, gemmi.PolymerType.PeptideD)]


def _one_letter(name: str) -> str:
    # Microheterogeneity lists alternatives as "A,B"; the first is the sequence's residue.
    info = gemmi.find_tabulated_residue(name.split(",")[0])
    code = info.one_letter_code.upper() if info is not None else "X"
    return code if code.isalpha() and code != " " else "X"


def _beta_carbon(res: gemmi.Residue) -> np.ndarray | None:
    # Glycine has no Cβ; its Cα stands in. A residue lacking the atom counts as unobserved.
    name = "CA" if res.name == "GLY" else "CB"
    atoms = [a for a in res if a.name == name]
    if not atoms:
        return None
    p = atoms[0].pos
    return np.array([p.x, p.y, p.z])


def _full_sequence(st: gemmi.Structure, ch: gemmi.Chain) -> str:
    polymer = ch.get_polymer()
    entity = st.get_entity_of(polymer)
    full = list(entity.full_sequence) if entity is not None else []
    if not full:  # no SEQRES: the observed residues are the whole sequence
        full = [r.name for r in polymer]
    return "".join(_one_letter(n) for n in full)


def chain_sequences(path: str | Path) -> dict[str, str]:
    """{chain name: full sequence} for every protein chain of the first model."""
    st = _read(Path(path))
    return {ch.name: _full_sequence(st, ch) for ch in _protein_chains(st[0])}


def load_chain(path: str | Path, chain: str | None = None) -> ChainStructure:
    """The first model's chain `chain` (auth name; default: the first protein chain).

    NMR ensembles use their first model. Raises StructureError naming the file and chain.
    """
    path = Path(path)
    st = _read(path)
    model = st[0]
    proteins = _protein_chains(model)
    if chain is None:
        if not proteins:
            raise StructureError(f"{path}: no protein chain (chains: {[c.name for c in model]})")
        ch = proteins[0]
    else:
        found = [c for c in proteins if c.name == chain]
        if not found:
            names = [c.name for c in proteins]
            raise StructureError(f"{path}: chain {chain!r} not found or not a protein (protein chains: {names})")
        ch = found[0]
    polymer = ch.get_polymer()
    entity = st.get_entity_of(polymer)
    sequence = _full_sequence(st, ch)
    coords_L3 = np.full((len(sequence), 3), np.nan)
    for i, res in enumerate(polymer):
        pos = (res.label_seq - 1) if res.label_seq is not None and entity is not None and entity.full_sequence else i
        if not 0 <= pos < len(sequence):
            raise StructureError(f"{path}: chain {ch.name}: residue {res.name}{res.seqid} outside the full sequence")
        xyz = _beta_carbon(res)
        if xyz is not None:
            coords_L3[pos] = xyz
    return ChainStructure(str(path), ch.name, sequence, coords_L3)


def structure_files(folder: str | Path) -> list[Path]:
    """Structure files in `folder` (.cif, .mmcif, .pdb, .ent, optionally .gz), sorted by name."""
    exts = (".cif", ".mmcif", ".pdb", ".ent")
    files = [p for p in Path(folder).iterdir()
             if p.is_file() and p.name.lower().removesuffix(".gz").endswith(exts)]
    if not files:
        raise StructureError(f"{folder}: no structure files (.cif, .pdb, optionally gzipped)")
    return sorted(files)
