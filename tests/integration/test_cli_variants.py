"""`protlm variants score` on a slice of the real BLAT_ECOLX scan with a debug model."""

import csv

import pytest
from click.testing import CliRunner

from protlm.cli.main import cli


@pytest.fixture
def inputs(tmp_path, shared_data, debug_model):
    from protlm.pretrained.protlm_format import save_protlm

    save_protlm(debug_model("esm2_debug"), tmp_path / "dbg")
    # the first record of the function set is the synonymous P20P: the wild type itself
    fa = (shared_data / "function" / "P62593_beta_lactamase_fitness.fasta").read_text().splitlines()
    (tmp_path / "wt.fasta").write_text(f">P62593\n{fa[1]}\n")
    with open(shared_data / "dms" / "BLAT_ECOLX_Ranganathan2015.csv", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    (tmp_path / "muts.csv").write_text("\n".join(lines[:1] + lines[1::400]) + "\n")
    return tmp_path


def _library_scores(inputs, mutants, method):
    """The same scores from the library call on the same model and wild type."""
    from protlm import load_model_and_alphabet
    from protlm.variants.scoring import score_mutants

    model, alphabet = load_model_and_alphabet(inputs / "dbg")
    wt = (inputs / "wt.fasta").read_text().splitlines()[1]
    return score_mutants(model.eval(), alphabet, wt, mutants, method)


@pytest.mark.parametrize("method", ["masked-marginal", "wt-marginal"])
def test_score_keeps_columns_and_adds_one(inputs, method):
    out = inputs / "scored.csv"
    r = CliRunner().invoke(cli, ["variants", "score", "--model", str(inputs / "dbg"), "--sequence",
                                 str(inputs / "wt.fasta"), "--mutations", str(inputs / "muts.csv"),
                                 "--method", method, "--output", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    with open(inputs / "muts.csv") as f:
        src = list(csv.DictReader(f))
    with open(out) as f:
        reader = csv.DictReader(f)
        got = list(reader)
    assert reader.fieldnames[-1] == method and len(got) == len(src) == 13
    assert [g["mutant"] for g in got] == [s["mutant"] for s in src]
    assert got[0]["2500"] == src[0]["2500"]
    want = _library_scores(inputs, [s["mutant"] for s in src], method)
    assert [float(g[method]) for g in got] == pytest.approx(want, abs=1e-4)
    assert len(set(want)) > 1  # real, differing scores


def test_wrong_wild_type_letter_names_the_mutant(inputs):
    (inputs / "bad.csv").write_text("mutant\nH24C\nA24C\n")
    out = inputs / "scored.csv"
    r = CliRunner().invoke(cli, ["variants", "score", "--model", str(inputs / "dbg"), "--sequence",
                                 str(inputs / "wt.fasta"), "--mutations", str(inputs / "bad.csv"),
                                 "--output", str(out)])
    assert r.exit_code == 1
    assert "line 3: mutant 'A24C': wild-type letter A at position 24" in r.output
    assert not out.exists()


def test_a_model_without_an_mlm_head_is_refused(inputs):
    """The ProtT5 encoder has no LM head: one Error line, no traceback, no output."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
    import _writers as W

    W.hf_t5(seed=1).save_pretrained(inputs / "t5")
    out = inputs / "scored.csv"
    r = CliRunner().invoke(cli, ["variants", "score", "--model", str(inputs / "t5"), "--sequence",
                                 str(inputs / "wt.fasta"), "--mutations", str(inputs / "muts.csv"),
                                 "--method", "pseudo-ll", "--output", str(out)])
    assert r.exit_code == 1, r.output
    assert "no masked-language-model head" in r.output and "Traceback" not in r.output
    assert not out.exists() and not list(inputs.glob("scored.csv*"))


def test_pseudo_ll_cli_leaves_no_store_behind(inputs):
    muts = inputs / "two.csv"
    muts.write_text("\n".join((inputs / "muts.csv").read_text().splitlines()[:3]) + "\n")
    out = inputs / "pll.csv"
    r = CliRunner().invoke(cli, ["variants", "score", "--model", str(inputs / "dbg"), "--sequence",
                                 str(inputs / "wt.fasta"), "--mutations", str(muts), "--method",
                                 "pseudo-ll", "--toks-per-batch", "4096", "--output", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    with open(out) as f:
        got = list(csv.DictReader(f))
    assert len(got) == 2
    want = _library_scores(inputs, [g["mutant"] for g in got], "pseudo-ll")
    assert [float(g["pseudo-ll"]) for g in got] == pytest.approx(want, abs=1e-4)
    assert not (inputs / "pll.csv.pll.jsonl").exists()  # the resume store goes once the output exists


def test_score_refused_while_another_process_writes_the_output(inputs, capsys):
    import os

    from protlm.cli.main import main
    from protlm.io import output_lock

    out = inputs / "scored.csv"
    out.write_text("mutant,masked-marginal\nfrom,an earlier run\n")
    store = inputs / "scored.csv.pll.jsonl"
    store.write_text('{"model": "m"}\n')
    with output_lock(out):
        with pytest.raises(SystemExit) as e:
            main(["variants", "score", "--model", str(inputs / "dbg"), "--sequence", str(inputs / "wt.fasta"),
                  "--mutations", str(inputs / "muts.csv"), "--method", "pseudo-ll", "--output", str(out),
                  "--no-progress"])
    assert e.value.code == 1
    assert f"Error: {out} is being written by process {os.getpid()}" in capsys.readouterr().err
    assert out.read_text() == "mutant,masked-marginal\nfrom,an earlier run\n"
    assert store.read_text() == '{"model": "m"}\n'  # the other writer's resume store untouched
