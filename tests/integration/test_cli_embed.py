"""`protlm embed` end to end: real sequences, both formats, every bad input, SIGKILL + resume."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from protlm import build_model
from protlm.cli.main import cli
from protlm.data.fasta import read_fasta, write_fasta
from protlm.embed.h5 import EmbeddingsFile
from protlm.embed.h5 import read as read_h5, read_file_meta as read_h5_meta
from protlm.pretrained.protlm_format import save_protlm
from protlm.pretrained.registry import DEBUG_CONFIGS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_protlm(build_model(DEBUG_CONFIGS["esm2_debug"]), root / "esm2")
    torch.manual_seed(0)  # ESM-1b limited to 32 residues: real proteins are "too long"
    save_protlm(build_model(dataclasses.replace(DEBUG_CONFIGS["esm1b_debug"], max_positions=34)), root / "short")
    return root


def run(*args):
    return CliRunner().invoke(cli, ["embed", *map(str, args), "--no-progress"], catch_exceptions=False)


def test_h5_and_pt_hold_the_same_numbers(tmp_path, shared_data, models):
    fasta = shared_data / "sequences" / "some_proteins.fasta"
    opts = ["--model", models / "esm2", "--repr-layers", "0", "-1", "--include", "mean", "per_tok",
            "bos", "contacts", "--toks-per-batch", "2048", "--device", "cpu"]
    r = run(fasta, *opts, "--output", tmp_path / "e.h5")
    assert r.exit_code == 0, r.output
    assert "15 records written" in r.output
    with EmbeddingsFile(tmp_path / "e.h5") as f:
        assert list(f.meta["layers"]) == [0, 2] and f.meta["model"] == str(models / "esm2")
        assert f.meta["protlm_version"] and len(f) == 15
        g = f["UniRef50_A0A2C9LWN7"]  # 935 residues
        assert g["mean"].shape == (2, 64) and g["per_tok"].shape == (2, 935, 64)
        assert g["bos"].shape == (2, 64) and g["contacts"].shape == (935, 935)
        assert g["mean"].dtype == np.float32
    r = run(fasta, *opts, "--output", tmp_path / "pt", "--format", "pt")
    assert r.exit_code == 0, r.output
    h5 = read_h5(tmp_path / "e.h5")
    for rec in read_fasta(fasta):
        pt = torch.load(tmp_path / "pt" / f"{rec.id}.pt", weights_only=True)
        assert set(pt) == {"label", "representations", "mean_representations", "bos_representations",
                           "contacts", "sequence_sha256"}
        assert pt["sequence_sha256"] == hashlib.sha256(rec.sequence.encode()).hexdigest()
        assert pt["label"] == rec.description and set(pt["representations"]) == {0, 2}
        for j, k in enumerate((0, 2)):
            np.testing.assert_array_equal(pt["representations"][k].numpy(), h5[rec.id]["per_tok"][j])
            np.testing.assert_array_equal(pt["mean_representations"][k].numpy(), h5[rec.id]["mean"][j])
            np.testing.assert_array_equal(pt["bos_representations"][k].numpy(), h5[rec.id]["bos"][j])
        np.testing.assert_array_equal(pt["contacts"].numpy(), h5[rec.id]["contacts"])


def test_gzip_fasta_and_repeated_options(tmp_path, shared_data, models):
    import gzip

    fasta = tmp_path / "few.fasta.gz"
    fasta.write_bytes(gzip.compress((shared_data / "sequences" / "few_proteins.fasta").read_bytes()))
    r = run(fasta, "--model", models / "esm2", "--output", tmp_path / "e.h5",
            "--repr-layers", "-1", "--repr-layers", "0", "--include=bos")
    assert r.exit_code == 0, r.output
    with EmbeddingsFile(tmp_path / "e.h5") as f:
        assert list(f.meta["layers"]) == [0, 2] and len(f) == 3
        assert set(f["UniRef50_A0A223SCH7"]) == {"bos"}


def test_long_sequences_window_and_truncate(tmp_path, shared_data, models):
    fasta = shared_data / "sequences" / "few_proteins.fasta"
    for mode, length in (("truncate", 32), ("window", 80)):
        out = tmp_path / f"{mode}.h5"
        r = run(fasta, "--model", models / "short", "--output", out, "--long", mode, "--include", "per_tok", "contacts")
        assert r.exit_code == 0, r.output
        with EmbeddingsFile(out) as f:
            assert f["UniRef50_UPI0003108055"]["per_tok"].shape == (1, length, 64)
            assert f["UniRef50_UPI0003108055"]["contacts"].shape == (length, length)


BAD = {
    "duplicate": (">a\nMKV\n>b\nMKL\n>a\nMKT\n", r"line 5: duplicate record ID 'a'"),
    "empty_record": (">a\nMKV\n>b\n>c\nMK\n", r"record 'b' has an empty sequence"),
    "empty_file": ("", r"no FASTA records found"),
    "not_fasta": ("id,sequence\na,MKV\n", r"line 1: sequence data before the first '>'"),
    "invalid_residue": (">a\nMKV\n>b\nMK1V\n", r"record 'b': invalid residue '1' at position 3"),
}


@pytest.mark.parametrize("fmt", ["h5", "pt"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_fasta_fails_before_any_output(tmp_path, models, case, fmt):
    text, message = BAD[case]
    fasta = tmp_path / "in.fasta"
    fasta.write_text(text)
    out = tmp_path / "out"
    r = run(fasta, "--model", models / "esm2", "--output", out, "--format", fmt)
    assert r.exit_code != 0
    assert re.search(message, r.output), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fasta"]  # nothing written at all


def test_bad_requests_fail_before_any_output(tmp_path, shared_data, models):
    fasta = shared_data / "sequences" / "few_proteins.fasta"
    out = tmp_path / "out.h5"
    cases = [
        (["--model", models / "short", "--long", "error"], "'UniRef50_UPI0003108055' has 80 residues"),
        (["--model", models / "esm2", "--repr-layers", "5"], "repr layer 5 out of range"),
        (["--model", "esm2_no_such_model"], "unknown model 'esm2_no_such_model'"),
        (["--model", tmp_path / "missing"], "no such checkpoint"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", models / "esm2", "--device", "cuda"], "CUDA is not available"))
    for args, message in cases:
        r = run(fasta, *args, "--output", out)
        assert r.exit_code != 0 and message in r.output, r.output
        assert not list(tmp_path.iterdir())


def beta_lactamase_fasta(shared_data, path, n=400):
    src = shared_data / "function" / "P62593_beta_lactamase_fitness.fasta"
    write_fasta(((r.id, r.sequence) for r in itertools.islice(read_fasta(src), n)), path)
    return path


def cli_args(fasta, model, out):
    # one ~290-residue record per batch: hundreds of shards, so a kill lands mid-run
    return [sys.executable, "-m", "protlm.cli.main", "embed", str(fasta), "--model", str(model),
            "--output", str(out), "--toks-per-batch", "300", "--include", "mean", "per_tok",
            "--device", "cpu", "--no-progress"]


def kill_after_shards(args, parts, n_shards, timeout=120):
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while len(list(parts.glob("shard-*.h5"))) < n_shards:
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() - t0 < timeout
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, shared_data, models):
    fasta = beta_lactamase_fasta(shared_data, tmp_path / "bl.fasta")
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    subprocess.run(cli_args(fasta, models / "esm2", ref), check=True)
    parts = tmp_path / "out.h5.parts"
    seen = 0
    for n_shards in (10, 60):  # killed twice, at different points
        kill_after_shards(cli_args(fasta, models / "esm2", out), parts, n_shards)
        with EmbeddingsFile(out) as f:  # opens after SIGKILL, every record in it complete
            assert f.meta["layout"] == "links"
            assert len(f) > seen  # the second run added to what the first left
            seen = len(f)
            for rid in f:
                L = f.info(rid)["length"]
                assert f[rid]["mean"].shape == (1, 64) and f[rid]["per_tok"].shape == (1, L, 64)
    done = subprocess.run(cli_args(fasta, models / "esm2", out), check=True, capture_output=True, text=True)
    assert "already in" in done.stderr and not parts.exists()
    a, b = read_h5(out), read_h5(ref)
    assert sorted(a) == sorted(b) and len(a) == 400
    for rid in a:
        for k in ("mean", "per_tok"):
            np.testing.assert_allclose(a[rid][k], b[rid][k], atol=1e-5, rtol=0)
    assert read_h5_meta(out)["layout"] == "consolidated"


def main_args(*args):
    return [sys.executable, "-m", "protlm.cli.main", *map(str, args)]


@pytest.mark.parametrize("fmt", ["h5", "pt"])
def test_second_writer_is_refused_at_start(tmp_path, shared_data, models, hold_in_subprocess, fmt):
    fasta = shared_data / "sequences" / "few_proteins.fasta"
    out = tmp_path / "out"
    r = run(fasta, "--model", models / "esm2", "--output", out, "--format", fmt)
    assert r.exit_code == 0, r.output
    files = [out] if fmt == "h5" else sorted(out.iterdir())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    holder = hold_in_subprocess(out)
    # a model that does not exist: the lock is checked first, before any slow loading
    for model in (models / "esm2", "esm2_no_such_model"):
        p = subprocess.run(main_args("embed", fasta, "--model", model, "--output", out, "--format", fmt,
                                     "--no-progress"), capture_output=True, text=True)
        assert p.returncode == 1, p.stderr
        assert f"Error: {out} is being written by process {holder.pid}" in p.stderr
        assert "Traceback" not in p.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before


_WAIT_THEN_RUN = """
import os, sys, time
import protlm.cli.main as cli, protlm.embed  # noqa: F401 - imported before the race
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.005)
sys.argv = ["protlm", *sys.argv[2:]]
cli.main()
"""


def test_two_concurrent_embeds_one_refused_output_complete(tmp_path, shared_data, models):
    # The second run is started (python, torch and protlm imported) before the first, and only
    # waits for a go file: the race is between a ~400-record run and a lock check, not process start.
    fasta = beta_lactamase_fasta(shared_data, tmp_path / "bl.fasta", n=400)
    ref, out, go = tmp_path / "ref.h5", tmp_path / "out.h5", tmp_path / "go"
    waiting = subprocess.Popen(
        [sys.executable, "-c", _WAIT_THEN_RUN, str(go), *cli_args(fasta, models / "esm2", out)[3:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert waiting.stdout.readline().strip() == "ready"
    first = subprocess.Popen(cli_args(fasta, models / "esm2", out), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "out.h5.parts"
    t0 = time.monotonic()
    while not list(parts.glob("shard-*.h5")):  # the first one is writing
        assert first.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.01)
    go.touch()
    out_, err_ = waiting.communicate(timeout=120)
    second = subprocess.CompletedProcess(waiting.args, waiting.returncode, out_, err_)
    assert first.poll() is None, (f"the first run ended (status {first.returncode}) before the second "
                                  f"one was refused: {first.stderr.read()}")
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"{out} is being written by process {first.pid}" in second.stderr
    assert first.wait() == 0, first.stderr.read()
    subprocess.run(cli_args(fasta, models / "esm2", ref), check=True)
    a, b = read_h5(out), read_h5(ref)
    assert sorted(a) == sorted(b) and len(a) == 400
    for rid in a:
        assert np.abs(a[rid]["mean"]).sum() > 0  # no all-zero record
        for k in ("mean", "per_tok"):
            np.testing.assert_allclose(a[rid][k], b[rid][k], atol=1e-5, rtol=0)
    assert read_h5_meta(out)["layout"] == "consolidated" and not parts.exists()


def test_pt_format_gives_every_id_its_own_file(tmp_path, models):
    from protlm.io import record_stem

    ids = ["a/b", "a_b", "..", "sp|P0|" + "long" * 80]
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{i} record {n}\nMKV{'L' * n}\n" for n, i in enumerate(ids)))
    r = run(fasta, "--model", models / "esm2", "--output", tmp_path / "pt", "--format", "pt")
    assert r.exit_code == 0, r.output
    assert "4 records written" in r.output
    for n, rid in enumerate(ids):
        d = torch.load(tmp_path / "pt" / f"{record_stem(rid)}.pt")
        assert d["label"] == f"{rid} record {n}" and d["mean_representations"][2].shape == (64,)
    assert len(list((tmp_path / "pt").glob("*.pt"))) == 4
    r = run(fasta, "--model", models / "esm2", "--output", tmp_path / "pt", "--format", "pt")
    assert "0 records written, 4 already" in r.output
    r = run(fasta, "--model", models / "esm2", "--output", tmp_path / "e.h5")  # IDs are data in HDF5
    assert r.exit_code == 0, r.output
    h5, pt = read_h5(tmp_path / "e.h5"), {rid: torch.load(tmp_path / "pt" / f"{record_stem(rid)}.pt") for rid in ids}
    assert sorted(h5) == sorted(ids)
    for rid in ids:
        np.testing.assert_array_equal(h5[rid]["mean"][0], pt[rid]["mean_representations"][2].numpy())


def main_run(capsys, *args):
    """`protlm ARGS` through main(): (exit status, stderr), as from a shell."""
    from protlm.cli.main import main

    try:
        main([*map(str, args)])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["h5", "pt"])
def test_changed_sequence_is_refused_or_recomputed(tmp_path, models, capsys, fmt):
    fasta, out, fresh = tmp_path / "in.fasta", tmp_path / "out", tmp_path / "fresh"
    opts = ["--model", models / "esm2", "--include", "mean", "per_tok", "--format", fmt, "--no-progress"]
    fasta.write_text(">a first\nMKTAYIAKQR\n>b second\nGSHMLEDPVA\n")
    assert main_run(capsys, "embed", fasta, *opts, "--output", out)[0] == 0

    def read(path):
        if fmt == "h5":
            return read_h5(path)
        from protlm.io import record_stem

        return {rid: torch.load(path / f"{record_stem(rid)}.pt") for rid in ("a", "b")}

    def snapshot():
        files = [out] if out.is_file() else sorted(out.iterdir())
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}

    before = snapshot()
    fasta.write_text(">a first\nMKTAYIAKQRQISFV\n>b second\nGSHMLEDPVA\n")  # same ID, new sequence
    code, err = main_run(capsys, "embed", fasta, *opts, "--output", out)
    assert code == 1 and "Traceback" not in err
    assert "1 record(s) already there have another sequence now" in err and "'a'" in err
    assert "'b'" not in err and "--overwrite-changed" in err
    assert snapshot() == before  # refused before any write

    code, err = main_run(capsys, "embed", fasta, *opts, "--output", out, "--overwrite-changed")
    assert code == 0 and "1 records written (1 changed, recomputed), 1 already" in err
    assert main_run(capsys, "embed", fasta, *opts, "--output", fresh)[0] == 0
    got, want = read(out), read(fresh)
    if fmt == "h5":
        assert got["a"]["per_tok"].shape == (1, 15, 64)
        for rid in ("a", "b"):
            for k in ("mean", "per_tok"):
                np.testing.assert_allclose(got[rid][k], want[rid][k], atol=1e-5, rtol=0)
    else:
        assert got["a"]["representations"][2].shape == (15, 64)
        assert got["a"]["sequence_sha256"] == want["a"]["sequence_sha256"]
        torch.testing.assert_close(got["a"]["mean_representations"][2], want["a"]["mean_representations"][2],
                                   atol=1e-5, rtol=0)
    code, err = main_run(capsys, "embed", fasta, *opts, "--output", out)
    assert code == 0 and "0 records written, 2 already" in err


def test_truncation_is_announced_once_and_recorded_per_record(tmp_path, shared_data, models):
    recs = list(read_fasta(shared_data / "sequences" / "few_proteins.fasta"))  # 80, 71, 99 residues
    fasta = tmp_path / "in.fasta"
    write_fasta([(r.id, r.sequence) for r in recs] + [("short", recs[0].sequence[:20])], fasta)
    lengths = {r.id: len(r.sequence) for r in recs}
    opts = ["--model", models / "short", "--include", "per_tok"]  # a 32-residue limit
    r = run(fasta, *opts, "--output", tmp_path / "t.h5")
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 3 of 4 records are longer than")
    assert "limit of 32 residues" in warnings[0] and "--long window" in warnings[0]
    with EmbeddingsFile(tmp_path / "t.h5") as f:
        for rid, n in lengths.items():
            assert f.info(rid)["truncated_from"] == n and f[rid]["per_tok"].shape == (1, 32, 64)
        assert f.info("short")["truncated_from"] is None and f["short"]["per_tok"].shape == (1, 20, 64)
    r = run(fasta, *opts, "--output", tmp_path / "t.h5")  # nothing left to embed: nothing truncated
    assert r.exit_code == 0 and "warning" not in r.stderr

    r = run(fasta, *opts, "--output", tmp_path / "pt", "--format", "pt")
    assert r.exit_code == 0 and r.stderr.count("warning: 3 of 4 records") == 1
    for rid, n in lengths.items():
        d = torch.load(tmp_path / "pt" / f"{rid}.pt", weights_only=True)
        assert d["truncated_from"] == n and d["representations"][2].shape == (32, 64)
    assert "truncated_from" not in torch.load(tmp_path / "pt" / "short.pt", weights_only=True)

    r = run(fasta, *opts, "--output", tmp_path / "w.h5", "--long", "window")
    assert r.exit_code == 0 and "warning" not in r.stderr
    with EmbeddingsFile(tmp_path / "w.h5") as f:
        assert all(f.info(rid)["truncated_from"] is None for rid in f)
