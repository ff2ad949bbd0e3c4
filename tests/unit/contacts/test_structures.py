"""Structures -> contact maps on real files, checked against an independent reader (biotite)."""

import numpy as np
import pytest

from protlm.contacts.structures import StructureError, load_chain, split_spec, structure_files


def _biotite_cb(path, chain_id):
    """label_seq_id -> Cβ (Cα for Gly) coordinates, read with biotite."""
    import biotite.structure.io.pdbx as pdbx

    arr = pdbx.get_structure(pdbx.CIFFile.read(str(path)), model=1, use_author_fields=False,
                             extra_fields=[])
    out = {}
    for a in arr:
        if a.chain_id != chain_id or a.hetero:
            continue
        if a.atom_name == ("CA" if a.res_name == "GLY" else "CB") and a.res_id not in out:
            out[int(a.res_id)] = a.coord
    return out


def test_lysozyme_cb_distances_and_glycine(shared_data):
    path = shared_data / "structures" / "1aki.cif"
    c = load_chain(path)
    assert c.chain == "A" and len(c.sequence) == 129 and c.sequence.startswith("KVFGRCELAAAM")
    assert c.observed.all()
    ref = _biotite_cb(path, "A")
    coords = np.stack([ref[i + 1] for i in range(129)])
    np.testing.assert_allclose(c.coords_L3, coords, atol=1e-3)
    g = c.sequence.index("G")  # glycine: its Cα stands in for the missing Cβ
    assert not np.isnan(c.coords_L3[g]).any()
    d = c.distances()
    np.testing.assert_allclose(d[0, 5], np.linalg.norm(coords[0] - coords[5]), atol=1e-3)
    cm = c.contacts()
    assert cm.dtype == np.int8 and (cm == cm.T).all() and set(np.unique(cm)) <= {0, 1}
    assert ((d < 8.0) == (cm == 1)).all()


def test_unobserved_residues_are_masked(shared_data):
    c = load_chain(shared_data / "structures" / "5zng.cif")
    assert len(c.sequence) == 137 and c.observed.sum() == 79  # full sequence kept, gaps masked
    cm = c.contacts()
    missing = np.flatnonzero(~c.observed)
    assert (cm[missing] == -1).all() and (cm[:, missing] == -1).all()
    obs = np.flatnonzero(c.observed)
    assert (cm[np.ix_(obs, obs)] >= 0).all()


def test_chain_choice_and_nmr_first_model(shared_data):
    c = load_chain(shared_data / "structures" / "1l2y.cif")  # NMR ensemble: first model
    assert c.sequence == "NLYIQWLKDGGPSSGRPPPS" and c.observed.all()
    spec_path, chain = split_spec(f"{shared_data}/structures/1aki.cif:A")
    assert chain == "A" and load_chain(spec_path, chain).chain == "A"
    assert split_spec("x.cif") == ("x.cif", None)


def test_bad_inputs_name_file_and_chain(shared_data, tmp_path):
    path = shared_data / "structures" / "1aki.cif"
    with pytest.raises(StructureError, match=r"1aki\.cif.*chain 'Z'"):
        load_chain(path, "Z")
    with pytest.raises(StructureError, match=r"4gxy\.cif: no protein chain"):
        load_chain(shared_data / "structures" / "4gxy.cif")  # an RNA structure
    junk = tmp_path / "junk.cif"
    junk.write_text("this is not a structure\n")
    with pytest.raises(StructureError, match="junk.cif"):
        load_chain(junk)
    with pytest.raises(StructureError, match="no such structure file"):
        load_chain(tmp_path / "absent.cif")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no structures here\n")
    with pytest.raises(StructureError, match="no structure files"):
        structure_files(empty)


def test_structure_files_sorted(shared_data):
    files = structure_files(shared_data / "structures")
    assert len(files) == 22 and files == sorted(files)


def test_pdb_format_gives_the_same_chain(shared_data, tmp_path):
    import gemmi

    src = shared_data / "structures" / "5zng.cif"  # has unobserved residues: SEQRES alignment matters
    st = gemmi.read_structure(str(src))
    st.setup_entities()
    pdb = tmp_path / "5zng.pdb"
    st.write_pdb(str(pdb))
    a, b = load_chain(src), load_chain(pdb)
    assert a.sequence == b.sequence and a.chain == b.chain
    np.testing.assert_array_equal(a.observed, b.observed)
    np.testing.assert_allclose(a.coords_L3[a.observed], b.coords_L3[b.observed], atol=1e-3)
