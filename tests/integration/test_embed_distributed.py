"""`protlm embed` under torchrun (gloo, CPU): the merged output holds what one process's holds
(same records, fields, dtypes and shapes; numbers equal to fp32 rounding, since each rank batches
its own share and a CPU's kernels may round differently for other batch shapes), and a job killed
mid-run resumes with another number of ranks to the same file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from protlm.cli.main import cli
from protlm.embed.h5 import read as read_h5, read_info as read_h5_info
from test_cli_embed import beta_lactamase_fasta, models  # noqa: F401 - the models fixture

pytestmark = pytest.mark.distributed
SRC = Path(__file__).resolve().parents[2] / "src"
OPTS = ["--include", "mean", "per_tok", "bos", "--repr-layers", "0", "-1", "--device", "cpu", "--no-progress"]


def env():
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def torchrun(nproc, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "protlm.cli.main", "embed", *map(str, args)]


def one_process(*args):
    r = CliRunner().invoke(cli, ["embed", *map(str, args)], catch_exceptions=False)
    assert r.exit_code == 0, r.output


def h5_content(path) -> tuple:
    """Everything a reader gets from a file: root attrs, the columns' dtypes, then per record
    (by ID: rows may be in another order) its fields, each array's dtype and shape, and the arrays."""
    with h5py.File(path) as f:
        root = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}
        dtypes = {k: (d.dtype.str, d.shape[1:]) for k, d in f.items()}
    info, arrays = read_h5_info(path), read_h5(path)
    return (root, dtypes), [(rid, info[rid], {k: (a.dtype.str, a.shape) for k, a in arrays[rid].items()},
                             arrays[rid]) for rid in sorted(info)]


def assert_same_h5(a, b):
    (root_a, recs_a), (root_b, recs_b) = h5_content(a), h5_content(b)
    assert root_a == root_b
    assert [r[0] for r in recs_a] == [r[0] for r in recs_b]
    for ra, rb in zip(recs_a, recs_b):
        assert ra[:3] == rb[:3], ra[0]
        for k, x in ra[3].items():
            np.testing.assert_allclose(x, rb[3][k], atol=1e-5, rtol=0, err_msg=f"{ra[0]} {k}")


def test_two_ranks_equal_one_process_exactly(tmp_path, shared_data, models):  # noqa: F811
    fasta = shared_data / "sequences" / "some_proteins.fasta"
    model = ["--model", models / "esm2", "--toks-per-batch", "1024"]
    one_process(fasta, *model, *OPTS, "--output", tmp_path / "one.h5")
    p = subprocess.run(torchrun(2, fasta, *model, *OPTS[:-1], "--output", tmp_path / "two.h5"),
                       capture_output=True, text=True, env=env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "15/15" in p.stderr and "tok/s, 2 ranks" in p.stderr  # rank 0's bar: global counts
    assert p.stderr.count("rank 0: ") == p.stderr.count("rank 1: ") == 1  # the per-rank summary
    assert p.stderr.count("15 records written, 0 already in") == 1
    assert_same_h5(tmp_path / "one.h5", tmp_path / "two.h5")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["one.h5", "two.h5"]  # no shards, no lock

    one_process(fasta, *model, *OPTS, "--output", tmp_path / "one_pt", "--format", "pt")
    p = subprocess.run(torchrun(2, fasta, *model, *OPTS, "--output", tmp_path / "two_pt", "--format", "pt"),
                       capture_output=True, text=True, env=env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    names = sorted(q.name for q in (tmp_path / "one_pt").iterdir())
    assert names == sorted(q.name for q in (tmp_path / "two_pt").iterdir()) and len(names) == 16
    for name in names[:-1]:  # the last is protlm_embed.json
        a, b = torch.load(tmp_path / "one_pt" / name, weights_only=True), torch.load(tmp_path / "two_pt" / name, weights_only=True)
        assert a.keys() == b.keys() and a["label"] == b["label"]
        for k in ("representations", "mean_representations", "bos_representations"):
            for layer in (0, 2):
                torch.testing.assert_close(a[k][layer], b[k][layer], atol=1e-5, rtol=0)


def test_a_second_job_on_the_output_is_refused_by_every_rank(tmp_path, shared_data, models,  # noqa: F811
                                                              hold_in_subprocess):
    fasta = shared_data / "sequences" / "few_proteins.fasta"
    out = tmp_path / "out.h5"
    holder = hold_in_subprocess(out)
    p = subprocess.run(torchrun(2, fasta, "--model", models / "esm2", *OPTS, "--output", out),
                       capture_output=True, text=True, env=env(), timeout=300)
    assert p.returncode != 0
    assert p.stderr.count(f"Error: {out} is being written by process {holder.pid}") == 1
    assert "Error: rank 1: stopped, rank 0 reports why" in p.stderr
    assert "protlm/" not in p.stderr  # no traceback from the ranks (torchrun prints its own)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.h5.lock"]


def kill_rank(proc, shard: Path, n_batches: int, timeout=120):
    """SIGKILL the rank writing `shard` once its parts hold `n_batches` batches; torchrun then
    stops the other ranks and fails."""
    parts, lock = shard.with_name(shard.name + ".parts"), shard.with_name(shard.name + ".lock")
    t0 = time.monotonic()
    while not parts.is_dir() or len(list(parts.glob("shard-*.h5"))) < n_batches:
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() - t0 < timeout
        time.sleep(0.005)
    os.kill(int(lock.read_text()), signal.SIGKILL)
    assert proc.wait(timeout=120) != 0


def test_killed_ranks_resume_with_other_rank_counts(tmp_path, shared_data, models):  # noqa: F811
    # one ~290-residue record per batch: a kill lands mid-run
    fasta = beta_lactamase_fasta(shared_data, tmp_path / "bl.fasta", n=200)
    opts = [fasta, "--model", models / "esm2", "--toks-per-batch", "300", *OPTS]
    out, shards = tmp_path / "out.h5", tmp_path / "out.h5.shards"
    one_process(*opts, "--output", tmp_path / "ref.h5")

    def start(nproc):
        return subprocess.Popen(torchrun(nproc, *opts, "--output", out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env())

    kill_rank(start(2), shards / "rank-00001.h5", 12)  # 2 ranks, rank 1 killed
    kill_rank(start(3), shards / "rank-00002.h5", 12)  # then 3 ranks, rank 2 killed
    assert not out.exists() and len(list(shards.glob("rank-0000[012].h5"))) == 3
    # then one plain process: it finds the rank shards and finishes the job as one rank
    p = subprocess.run([sys.executable, "-m", "protlm.cli.main", "embed", *map(str, opts), "--output", str(out)],
                       capture_output=True, text=True, env=env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    written, already = map(int, re.search(r"(\d+) records written, (\d+) already in", p.stderr).groups())
    assert already >= 24 and written + already == 200  # only what no rank had written
    assert_same_h5(tmp_path / "ref.h5", out)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["bl.fasta", "out.h5", "ref.h5"]
