"""The sharded embed path (rank shards, protlm.embed.writers) without torchrun: one rank,
resume from rank shards of other world sizes, and the merge taking each record from wherever its
current version is.
(Two real ranks: tests/integration/test_embed_distributed.py.)"""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from protlm.embed import EmbedConfig, EmbedError, embed_to_file, extract
from protlm.embed import writers as embed_dist
from protlm.embed.pipeline import output_meta
from protlm.runtime.options import InferenceOptions
from protlm.embed.h5 import read as read_h5, read_info as read_h5_info, read_file_meta as read_h5_meta
from protlm.embed.writers import H5Output, OutputMismatchError
from protlm.pretrained.protlm_format import save_protlm
from .test_writers import META, hashed

CFG = EmbedConfig(repr_layers=(0, -1), include=("mean", "per_tok", "bos"))


@pytest.fixture
def no_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)


def same_file_content(a, b):
    """Same attributes, records, per-record fields and arrays (rows may be in another order; the
    numbers to fp32 rounding: other batches may round differently on some CPUs)."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert dict(fa.attrs) | {"layers": 0} == dict(fb.attrs) | {"layers": 0}
        assert list(fa.attrs["layers"]) == list(fb.attrs["layers"]) and list(fa) == list(fb)
    assert read_h5_info(a) == read_h5_info(b)
    ra, rb = read_h5(a), read_h5(b)
    assert sorted(ra) == sorted(rb)
    for rid in ra:
        assert sorted(ra[rid]) == sorted(rb[rid])
        for k in ra[rid]:
            assert ra[rid][k].dtype == rb[rid][k].dtype and ra[rid][k].shape == rb[rid][k].shape
            np.testing.assert_allclose(ra[rid][k], rb[rid][k], atol=1e-5, rtol=0)


def test_rank_shards_of_a_killed_job_are_resumed_by_one_plain_process(tmp_path, shared_data, debug_model,
                                                                      no_torchrun, monkeypatch):
    fasta = shared_data / "sequences" / "some_proteins.fasta"
    model = debug_model("esm2_debug")
    save_protlm(model, tmp_path / "m")
    opts = InferenceOptions(model=str(tmp_path / "m"), device="cpu", toks_per_batch=600, progress=False)
    embed_to_file(fasta, tmp_path / "ref.h5", opts, CFG)
    # what a killed 3-rank job leaves: rank 2's shard holding 4 records, in two batch files
    out = tmp_path / "out.h5"
    shard = H5Output(embed_dist.shard_path(out, 2), output_meta(opts, [0, 2], CFG))
    shard.done_hashes(), shard.begin()
    done = list(extract(model, model.alphabet, fasta, CFG, dataclasses.replace(opts, toks_per_batch=300)))[:4]
    shard.write_batch(done[:2]), shard.write_batch(done[2:])
    assert embed_dist.has_shards(out, "h5") and not embed_dist.has_shards(tmp_path / "x.h5", "h5")

    # --no-distributed inside a torchrun environment: still a job of one rank, no process group
    monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "2")
    stats = embed_to_file(fasta, out, opts, CFG, distributed=False)
    assert stats["written"] == 11 and stats["skipped"] == 4
    assert [r["records"] for r in stats["ranks"]] == [11] and "merge_s" in stats
    same_file_content(tmp_path / "ref.h5", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out.h5", "ref.h5"]
    monkeypatch.delenv("RANK"), monkeypatch.delenv("WORLD_SIZE")
    again = embed_to_file(fasta, out, opts, CFG)
    assert again["written"] == 0 and again["skipped"] == 15 and "merge_s" not in again


def test_one_rank_under_torchrun_env_equals_a_plain_run(tmp_path, shared_data, debug_model, monkeypatch):
    fasta = shared_data / "sequences" / "few_proteins.fasta"
    save_protlm(debug_model("esm2_debug"), tmp_path / "m")
    opts = InferenceOptions(model=str(tmp_path / "m"), device="cpu", toks_per_batch=600, progress=False)
    for fmt in ("h5", "pt"):
        monkeypatch.delenv("RANK", raising=False)
        plain = embed_to_file(fasta, tmp_path / f"plain.{fmt}", opts, CFG, fmt=fmt)
        assert "ranks" not in plain
        monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "1")
        sharded = embed_to_file(fasta, tmp_path / f"sharded.{fmt}", opts, CFG, fmt=fmt)
        assert sharded["written"] == 3 and sharded["ranks"][0]["residues"] == 80 + 71 + 99
    same_file_content(tmp_path / "plain.h5", tmp_path / "sharded.h5")
    assert sorted(p.name for p in (tmp_path / "sharded.pt").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain.pt").iterdir())


def test_distributed_flag_needs_torchrun(tmp_path, shared_data, no_torchrun):
    with pytest.raises(EmbedError, match="--distributed runs under torchrun"):
        embed_to_file(shared_data / "sequences" / "few_proteins.fasta", tmp_path / "o.h5",
                      InferenceOptions(model="esm2_debug", device="cpu"), distributed=True)
    assert not list(tmp_path.iterdir())


def test_merge_takes_each_record_from_where_its_current_version_is(tmp_path):
    out = tmp_path / "e.h5"

    def write(path, *batches):
        o = H5Output(path, META)
        o.done_hashes(), o.begin()
        for b in batches:
            o.write_batch(b)
        o.write_index()

    write(out, [hashed("c", 2, 0, "h-c")])  # a killed single-process run: OUT.parts
    write(embed_dist.shard_path(out, 0), [hashed("a", 3, 1, "h-old"), hashed("b", 2, 2, "h-b")])
    write(embed_dist.shard_path(out, 3), [hashed("a", 4, 3, "h-new")])  # from a 4-rank job
    current = {"a": "h-new", "b": "h-b", "c": "h-c", "d": "h-d"}
    found = embed_dist.locate(out, META, current)
    assert {rid: (f.parent.name, h) for rid, (f, h) in found.items()} == {
        "a": ("rank-00003.h5.parts", "h-new"), "b": ("rank-00000.h5.parts", "h-b"),
        "c": ("e.h5.parts", "h-c")}
    ids, owner = ["a", "b", "c", "d"], np.array([-1, -1, -1, 1], dtype=np.int32)  # d: rank 1 this run
    with pytest.raises(RuntimeError, match="rank 1 finished without 1 of its records, e.g. 'd'"):
        embed_dist.merge_ranks(out, META, ids, owner, found)
    write(embed_dist.shard_path(out, 1), [hashed("d", 5, 4, "h-d")])
    embed_dist.merge_ranks(out, META, ids, owner, found)
    assert read_h5_meta(out)["layout"] == "consolidated"
    assert {rid: x["sequence_sha256"] for rid, x in read_h5_info(out).items()} == current
    assert read_h5(out)["a"]["per_tok"].shape == (2, 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5"]


def test_a_rank_shard_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "e.h5"
    o = H5Output(embed_dist.shard_path(out, 1), {**META, "long": "window"})
    o.done_hashes(), o.begin(), o.write_batch([hashed("a", 3, 1, "h")])
    with pytest.raises(OutputMismatchError, match=r"rank-00001\.h5.*long"):
        embed_dist.locate(out, META, {"a": "h"})
