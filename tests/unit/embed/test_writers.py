"""protlm.embed.writers and protlm.embed.h5: HDF5 shards + ExternalLink index, consolidation,
resume bookkeeping, .pt layout."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from protlm.embed import EmbedConfig, EmbedResult, embed_to_file
from protlm.runtime.options import InferenceOptions
from protlm.embed.h5 import read as read_h5, read_file_meta as read_h5_meta, read_info as read_h5_info
from protlm.embed.writers import H5Output, OutputMismatchError, PtOutput, to_fair_esm_dict
from protlm.pretrained.protlm_format import save_protlm

META = {"model": "m", "layers": [0, 2], "include": ["mean", "per_tok"], "long": "truncate",
        "dtype": "fp32", "protlm_version": "0.1.0"}


def fake(rid, L, seed):
    g = torch.Generator().manual_seed(seed)
    per_tok = {k: torch.randn(L, 4, generator=g) for k in (0, 2)}
    return EmbedResult(rid, f"{rid} desc", L, mean={k: v.mean(0) for k, v in per_tok.items()},
                       per_tok=per_tok)


def test_running_output_is_a_readable_link_index(tmp_path, monkeypatch):
    out = H5Output(tmp_path / "e.h5", META, index_interval_s=0)
    assert out.done_ids() == set()
    out.begin()
    out.write_batch([fake("a", 3, 0), fake("b", 5, 1)])
    out.write_batch([fake("c", 7, 2)])
    out.write_index()  # refreshed on a timer while running; forced here
    (out.parts / "shard-000009.h5.tmp").write_bytes(b"cut off mid-write")
    monkeypatch.chdir(tmp_path.parent)  # links are relative to the index file, not the cwd
    got = read_h5(tmp_path / "e.h5")
    assert sorted(got) == ["a", "b", "c"]
    assert got["c"]["per_tok"].shape == (2, 7, 4) and got["c"]["mean"].shape == (2, 4)
    np.testing.assert_array_equal(got["a"]["mean"][1], fake("a", 3, 0).mean[2].numpy())
    assert read_h5_meta(tmp_path / "e.h5")["layout"] == "links"

    again = H5Output(tmp_path / "e.h5", META, index_interval_s=0)  # a rerun after a kill
    assert again.done_ids() == {"a", "b", "c"}
    again.begin()
    assert not list(again.parts.glob("*.tmp"))
    again.write_batch([fake("d", 2, 3)])
    again.write_index()
    again.finish()
    assert not again.parts.exists()
    with h5py.File(tmp_path / "e.h5") as f:
        assert f.attrs["layout"] == "consolidated" and f.attrs["model"] == "m"
        assert list(f.attrs["layers"]) == [0, 2] and f.attrs["protlm_version"] == "0.1.0"
        assert all(f.get(k, getlink=True).__class__ is h5py.HardLink for k in f)  # self-contained
        assert sorted(f["id"].asstr()[()]) == ["a", "b", "c", "d"] and f["per_tok"].shape == (17, 2, 4)
    assert read_h5_info(tmp_path / "e.h5")["d"] == {"description": "d desc", "length": 2,
                                                    "sequence_sha256": None, "truncated_from": None}
    assert sorted(read_h5(tmp_path / "e.h5")) == ["a", "b", "c", "d"]


def test_appending_to_a_finished_output_keeps_it_readable(tmp_path):
    path = tmp_path / "e.h5"
    first = H5Output(path, META)
    first.done_ids(), first.begin(), first.write_batch([fake("a", 3, 0)]), first.finish()
    nxt = H5Output(path, META, index_interval_s=0)
    assert nxt.done_ids() == {"a"}
    nxt.begin()  # the finished file becomes shard 0 (a hard link: OUT is untouched)
    nxt.write_batch([fake("b", 4, 1)])
    assert sorted(read_h5(path)) == ["a", "b"]  # the index links both
    nxt.finish()
    assert sorted(read_h5(path)) == ["a", "b"] and not nxt.parts.exists()


def test_killed_after_final_rename_is_cleaned_up(tmp_path):
    path = tmp_path / "e.h5"
    out = H5Output(path, META)
    out.done_ids(), out.begin(), out.write_batch([fake("a", 3, 0)])
    parts = out.parts
    os.link(parts / "shard-000001.h5", tmp_path / "keep.h5")
    out.finish()
    parts.mkdir()  # as if killed between the rename and removing the parts
    os.link(tmp_path / "keep.h5", parts / "shard-000001.h5")
    again = H5Output(path, META)
    assert again.done_ids() == {"a"} and not parts.exists()


def test_other_settings_or_other_files_are_refused(tmp_path):
    out = H5Output(tmp_path / "e.h5", META)
    out.done_ids(), out.begin(), out.write_batch([fake("a", 3, 0)]), out.finish()
    with pytest.raises(OutputMismatchError, match=r"layers: existing \[0, 2\], now \[2\]"):
        H5Output(tmp_path / "e.h5", {**META, "layers": [2]}).done_ids()
    (tmp_path / "notes.h5").write_text("hello")
    with pytest.raises(OutputMismatchError, match="not an HDF5 file"):
        H5Output(tmp_path / "notes.h5", META).done_ids()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.txt").write_text("x")
    with pytest.raises(OutputMismatchError, match="not a protlm embed folder"):
        PtOutput(tmp_path / "dir", META).done_ids(["x"])
    with pytest.raises(OutputMismatchError, match="exists and is not a folder"):  # e.g. an .h5 output
        PtOutput(tmp_path / "e.h5", META).done_ids(["x"])
    with pytest.raises(OutputMismatchError, match="not an HDF5 file"):  # a folder given for h5
        H5Output(tmp_path / "dir", META).done_ids()


def test_pt_layout_is_fair_esm_extract(tmp_path):
    r = fake("a", 3, 0)
    r.bos = {0: torch.zeros(4), 2: torch.ones(4)}
    r.contacts = torch.rand(3, 3)
    d = to_fair_esm_dict(r)
    assert set(d) == {"label", "representations", "mean_representations", "bos_representations", "contacts"}
    assert d["label"] == "a desc" and set(d["representations"]) == {0, 2}
    out = PtOutput(tmp_path / "pt", META)
    assert out.done_ids(["a", "b"]) == set()
    out.begin()
    out.write_batch([r])
    back = torch.load(tmp_path / "pt" / "a.pt", weights_only=True)
    assert torch.equal(back["representations"][2], r.per_tok[2]) and torch.equal(back["contacts"], r.contacts)
    assert PtOutput(tmp_path / "pt", META).done_ids(["a", "b"]) == {"a"}
    assert "mean_representations" not in to_fair_esm_dict(EmbedResult("b", "b", 1, per_tok=r.per_tok))


def test_embed_to_file_resumes_into_a_larger_fasta(tmp_path, shared_data, debug_model):
    """few (3 records) then some (15, a superset): equals one run over some."""
    save_protlm(debug_model("esm2_debug"), tmp_path / "m")
    seqs = shared_data / "sequences"
    cfg = EmbedConfig(repr_layers=(-1,), include=("mean", "per_tok"))
    opts = InferenceOptions(model=str(tmp_path / "m"), device="cpu", toks_per_batch=600, progress=False)
    assert embed_to_file(seqs / "few_proteins.fasta", tmp_path / "a.h5", opts, cfg)["written"] == 3
    stats = embed_to_file(seqs / "some_proteins.fasta", tmp_path / "a.h5", opts, cfg)
    assert stats == {"records": 15, "skipped": 3, "written": 12, "recomputed": 0, "truncated": 0}
    embed_to_file(seqs / "some_proteins.fasta", tmp_path / "b.h5", opts, cfg)
    a, b = read_h5(tmp_path / "a.h5"), read_h5(tmp_path / "b.h5")
    assert sorted(a) == sorted(b) and len(a) == 15
    for rid in a:
        for k in ("mean", "per_tok"):
            np.testing.assert_allclose(a[rid][k], b[rid][k], atol=1e-5, rtol=0)
    again = embed_to_file(seqs / "some_proteins.fasta", tmp_path / "a.h5", opts, cfg)
    assert again == {"records": 15, "skipped": 15, "written": 0, "recomputed": 0, "truncated": 0}


def test_killed_during_consolidation_finishes_on_rerun(tmp_path):
    path = tmp_path / "e.h5"
    out = H5Output(path, META)
    out.done_ids(), out.begin(), out.write_batch([fake("a", 3, 0)]), out.write_batch([fake("b", 2, 1)])
    out.write_index()
    (tmp_path / ".e.h5.0badf00d.tmp").write_bytes(b"half a consolidated file")  # atomic_path's temp
    again = H5Output(path, META)
    assert again.done_ids() == {"a", "b"} and again.unfinished()
    again.begin()
    again.finish()
    assert read_h5_meta(path)["layout"] == "consolidated" and sorted(read_h5(path)) == ["a", "b"]
    assert not (tmp_path / ".e.h5.0badf00d.tmp").exists() and not again.parts.exists()


def hashed(rid, L, seed, sha):
    r = fake(rid, L, seed)
    r.sequence_sha256 = sha
    return r


def test_rewritten_record_newest_version_wins(tmp_path):
    """--overwrite-changed writes a record again: the index, a resume and the final file all
    take the newest shard's version."""
    path = tmp_path / "e.h5"
    out = H5Output(path, META)
    out.done_ids(), out.begin(), out.write_batch([hashed("a", 3, 0, "h-old"), hashed("b", 2, 1, "h-b")])
    out.finish()
    again = H5Output(path, META, index_interval_s=0)
    assert again.done_hashes() == {"a": "h-old", "b": "h-b"}
    again.begin()
    again.write_batch([hashed("a", 4, 2, "h-new")])
    assert read_h5(path)["a"]["per_tok"].shape == (2, 4, 4)  # the running index links the new one
    assert H5Output(path, META).done_hashes() == {"a": "h-new", "b": "h-b"}  # as a rerun after a kill sees it
    again.finish()
    info = read_h5_info(path)
    assert info["a"]["sequence_sha256"] == "h-new" and info["b"]["sequence_sha256"] == "h-b"
    assert read_h5(path)["a"]["per_tok"].shape == (2, 4, 4) and len(info) == 2  # one row each
    np.testing.assert_array_equal(read_h5(path)["a"]["mean"][0], fake("a", 4, 2).mean[0].numpy())


def full(rid, L, seed):
    r = hashed(rid, L, seed, f"h-{rid}-{L}")
    r.bos = {k: v[0] for k, v in r.per_tok.items()}
    r.contacts = torch.rand(L, L, generator=torch.Generator().manual_seed(seed))
    r.truncated_from = L + 10 if seed % 2 else None
    return r


def test_merge_in_small_blocks_keeps_every_row_exact(tmp_path, monkeypatch):
    """Rows copied in blocks (here of at most 2 rows / 12 ragged values), some rows of a file left
    out (rewritten later): every field and array comes back exact."""
    from protlm.embed import h5 as embed_h5

    monkeypatch.setattr(embed_h5, "BLOCK_ROWS", 2)
    monkeypatch.setattr(embed_h5, "BLOCK_ELEMENTS", 12)
    meta = {**META, "include": ["mean", "per_tok", "bos", "contacts"]}
    out = H5Output(tmp_path / "e.h5", meta)
    out.done_ids(), out.begin()
    first = [full(rid, L, i) for i, (rid, L) in enumerate([("a", 3), ("b", 1), ("c", 5), ("d", 2), ("e", 4)])]
    out.write_batch(first)
    later = [full("b", 6, 7), full("d", 3, 8)]  # --overwrite-changed: newer versions
    out.write_batch(later)
    out.finish()
    want = {r.id: r for r in first} | {r.id: r for r in later}
    got, info = read_h5(tmp_path / "e.h5"), read_h5_info(tmp_path / "e.h5")
    assert sorted(got) == sorted(want) == sorted(info)
    for rid, r in want.items():
        assert info[rid] == {"description": r.description, "length": r.length,
                             "sequence_sha256": r.sequence_sha256, "truncated_from": r.truncated_from}
        np.testing.assert_array_equal(got[rid]["per_tok"], torch.stack([r.per_tok[0], r.per_tok[2]]).numpy())
        np.testing.assert_array_equal(got[rid]["mean"], torch.stack([r.mean[0], r.mean[2]]).numpy())
        np.testing.assert_array_equal(got[rid]["bos"], torch.stack([r.bos[0], r.bos[2]]).numpy())
        np.testing.assert_array_equal(got[rid]["contacts"], r.contacts.numpy())


def test_files_of_the_old_layout_are_read_but_not_resumed(tmp_path):
    """Before the columnar format, protlm wrote one HDF5 group per record."""
    path = tmp_path / "old.h5"
    r = fake("a", 3, 0)
    with h5py.File(path, "w") as f:
        for k, v in META.items():
            f.attrs[k] = ",".join(v) if k == "include" else v
        f.attrs["layout"] = "consolidated"
        g = f.create_group("a")
        g.attrs["description"], g.attrs["length"], g.attrs["sequence_sha256"] = "a desc", 3, "h"
        g.create_dataset("mean", data=torch.stack([r.mean[0], r.mean[2]]).numpy())
    np.testing.assert_array_equal(read_h5(path)["a"]["mean"][1], r.mean[2].numpy())
    assert read_h5_info(path)["a"] == {"description": "a desc", "length": 3, "sequence_sha256": "h",
                                       "truncated_from": None}
    with pytest.raises(OutputMismatchError, match="older protlm .* choose another output path"):
        H5Output(path, META).done_ids()


def test_any_record_id_is_a_row(tmp_path):
    """IDs are data, not HDF5 names: '/', '.', '..' and non-ASCII IDs are kept as they are."""
    ids = ["a/b", ".", "..", "Ωmega|1"]
    out = H5Output(tmp_path / "e.h5", META)
    out.done_ids(), out.begin(), out.write_batch([fake(rid, 2, i) for i, rid in enumerate(ids)]), out.finish()
    assert sorted(read_h5(tmp_path / "e.h5")) == sorted(ids)
    assert H5Output(tmp_path / "e.h5", META).done_ids() == set(ids)
