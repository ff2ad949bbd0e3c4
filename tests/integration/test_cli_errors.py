"""User errors through the real entry point (`protlm.cli.main.main`): one clear line on stderr,
exit status 1, no traceback and no output; anything else still raises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from protlm import build_model
from protlm.cli.main import main
from protlm.data.fasta import FastaError, read_fasta
from protlm.embed.h5 import read as read_h5
from protlm.pretrained.checkpoint import CheckpointError
from protlm.pretrained.load import load_model_and_alphabet
from protlm.pretrained.protlm_format import save_protlm
from protlm.pretrained.registry import DEBUG_CONFIGS

REPO = Path(__file__).resolve().parents[2]
GOOD = ">a|0.5\nMKTAYIAKQR\n>b|1.5\nQISFV\nKSLHFSRQ\n>c|2.5\nMLLAVLYCLA\n>d|3.5\nAVALLIS\n"
BINARY = bytes(range(256)) * 4  # NUL bytes and invalid UTF-8, as in a .pt, .h5 or .gz file


@pytest.fixture(scope="module")
def dbg(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_protlm(build_model(DEBUG_CONFIGS["esm2_debug"]), tmp_path_factory.mktemp("m") / "dbg")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "good.fasta").write_text(GOOD)
    (tmp_path / "bom.fasta").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    (tmp_path / "binary.fasta").write_bytes(BINARY)
    (tmp_path / "binary.csv").write_bytes(BINARY)
    # 'J' is no residue: record b, position 8, on line 5 of the file
    (tmp_path / "bad.fasta").write_text(GOOD.replace("KSLHFSRQ", "KSJHFSRQ"))
    (tmp_path / "wt.fasta").write_text(">wt\nMKTAYIAKQR\n")
    (tmp_path / "bad_wt.fasta").write_text(">wt\nMKTAY\nIJKQR\n")
    (tmp_path / "muts.csv").write_text("mutant\nM1A\nK2R\n")
    return tmp_path


def run(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `protlm ARGS` run through main()."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def main_code(args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope="module")
def head(tmp_path_factory, dbg) -> Path:
    """A fitted function head, for `function predict`."""
    root = tmp_path_factory.mktemp("head")
    (root / "train.fasta").write_text(GOOD)
    assert main_code(["function", "fit", root / "train.fasta", "--model", dbg, "--task", "regression",
                      "--label-from-header", "1", "--folds", "2", "-o", root / "head", "--no-progress"]) == 0
    return root / "head"


def commands(f: Path, dbg: Path, head: Path, fasta: str) -> dict[str, tuple[list, Path]]:
    """Each subcommand that reads sequences, reading `fasta`: (arguments, its output)."""
    out = f / "out"
    return {
        "embed": (["embed", f / fasta, "--model", dbg, "-o", out, "--no-progress"], out),
        "contacts predict": (["contacts", "predict", f / fasta, "--model", dbg, "-o", out], out),
        "function fit": (["function", "fit", f / fasta, "--model", dbg, "--task", "regression",
                          "--label-from-header", "1", "--folds", "2", "-o", out, "--no-progress"], out),
        "function predict": (["function", "predict", f / fasta, "--head", head, "-o", out, "--no-progress"], out),
        "variants score": (["variants", "score", "--model", dbg, "--sequence", f / fasta,
                            "--mutations", f / "muts.csv", "-o", out, "--no-progress"], out),
    }


COMMANDS = ["embed", "contacts predict", "function fit", "function predict", "variants score"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_binary_fasta(capsys, files, dbg, head, cmd):
    args, out = commands(files, dbg, head, "binary.fasta")[cmd]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, f"{files / 'binary.fasta'}: line 1: binary data, not FASTA text")
    assert not out.exists()


@pytest.mark.parametrize("name", ["binary.csv", "binary.fasta"])
def test_binary_mutations(capsys, files, dbg, name):
    out = files / "scored.csv"
    code, _, err = run(capsys, "variants", "score", "--model", dbg, "--sequence", files / "wt.fasta",
                       "--mutations", files / name, "-o", out)
    assert_one_line_error(code, err, f"{files / name}: not a CSV/TSV text file")
    assert not out.exists()


def test_mutations_file_without_rows(capsys, files, dbg):
    (files / "header_only.csv").write_text("mutant,score\n")
    out = files / "scored.csv"
    code, _, err = run(capsys, "variants", "score", "--model", dbg, "--sequence", files / "wt.fasta",
                       "--mutations", files / "header_only.csv", "-o", out)
    assert_one_line_error(code, err, f"{files / 'header_only.csv'}: no mutants (a header, no rows)")
    assert not out.exists()


def test_binary_function_table(capsys, files, dbg):
    out = files / "head"
    code, _, err = run(capsys, "function", "fit", files / "binary.csv", "--model", dbg, "--task",
                       "regression", "--target", "y", "-o", out)
    assert_one_line_error(code, err, f"{files / 'binary.csv'}: not a CSV/TSV text file")
    assert not out.exists()


def test_byte_order_mark_is_accepted(capsys, files, dbg):
    code, _, err = run(capsys, "embed", files / "bom.fasta", "--model", dbg, "-o", files / "e.h5", "--no-progress")
    assert code == 0, err
    assert sorted(read_h5(files / "e.h5")) == ["a|0.5", "b|1.5", "c|2.5", "d|3.5"]


def test_text_file_named_pt(capsys, files):
    fake = files / "x.pt"
    fake.write_text("this is not a checkpoint\n")
    code, _, err = run(capsys, "embed", files / "good.fasta", "--model", fake, "-o", files / "e.h5")
    assert_one_line_error(code, err, f"{fake}: not a PyTorch checkpoint")
    assert not (files / "e.h5").exists()


@pytest.mark.parametrize("cmd", COMMANDS)
def test_invalid_residue_names_the_cli_flag(capsys, files, dbg, head, cmd):
    wt = cmd == "variants score"  # reads a one-record wild-type FASTA
    fasta = "bad_wt.fasta" if wt else "bad.fasta"
    args, out = commands(files, dbg, head, fasta)[cmd]
    code, _, err = run(capsys, *args)
    where = ("line 3: record 'wt': invalid residue 'J' at position 7" if wt
             else "line 5: record 'b|1.5': invalid residue 'J' at position 8")
    line = assert_one_line_error(code, err, f"{files / fasta}: {where}", "(use --unknown-to-x to map")
    assert "unknown='X'" not in line
    assert not out.exists()

    code, _, err = run(capsys, *args, "--unknown-to-x")
    assert code == 0, err
    assert out.exists()


def test_library_message_names_the_argument(files):
    with pytest.raises(FastaError) as info:
        list(read_fasta(files / "bad.fasta"))
    assert "unknown='X'" in str(info.value) and "--unknown-to-x" not in str(info.value)
    assert [r.sequence for r in read_fasta(files / "bad.fasta", unknown="X")][1] == "QISFVKSXHFSRQ"


def test_weights_that_do_not_match_their_config(capsys, files, dbg):
    broken = files / "broken"
    shutil.copytree(dbg, broken)
    meta = json.loads((broken / "config.json").read_text())
    meta["model"]["ffn_embed_dim"] //= 2  # fc1/fc2 of every layer now have the wrong shape
    (broken / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape mismatches.*fc1.weight"):
        load_model_and_alphabet(broken)

    code, _, err = run(capsys, "embed", files / "good.fasta", "--model", broken, "-o", files / "e.h5")
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"Error: {broken}: checkpoint does not match the model")
    assert "layers.0.fc1.weight: checkpoint (256, 64) vs model (128, 64)" in err.replace("\n", " ")
    assert not (files / "e.h5").exists()


def test_unknown_model_name(capsys, files):
    code, _, err = run(capsys, "embed", files / "good.fasta", "--model", "esm3_giant", "-o", files / "e.h5")
    assert_one_line_error(code, err, "Error: unknown model 'esm3_giant'; published names: ")


def test_a_bug_keeps_its_traceback(files, head, monkeypatch):
    """Only ProtlmError is reported as a user error; a plain ValueError is a bug and propagates."""
    import protlm.function.pipeline

    def buggy(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(protlm.function.pipeline, "predict_function", buggy)
    with pytest.raises(ValueError, match="a bug"):
        main(["function", "predict", str(files / "good.fasta"), "--head", str(head), "-o", str(files / "p.csv")])


def test_real_process_prints_no_traceback(files, dbg):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "protlm.cli.main", "embed", str(files / "binary.fasta"),
                           "--model", str(dbg), "-o", str(files / "e.h5")], capture_output=True, text=True, env=env)
    assert_one_line_error(proc.returncode, proc.stderr, "binary data")
    assert not (files / "e.h5").exists()
