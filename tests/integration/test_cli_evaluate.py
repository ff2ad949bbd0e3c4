"""`protlm evaluate` end to end on a debug model, a few real structures and sequences: tables,
resume per model, a model without an MLM head, pre-fitted heads, the output lock."""

import csv
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from protlm.cli.main import cli
from protlm.data.fasta import read_fasta, write_fasta
from protlm.evaluate.run import EvalSettings, parts_dir, run_evaluation
from protlm.io import OutputLockedError
from protlm.pretrained.protlm_format import save_protlm

NAMES = ("1k6p", "1l2y", "2axd", "4gxy")  # chains 1k6p:A, 1l2y:A fit a head; 2axd:S is scored; 4gxy is RNA


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    from protlm import build_model
    from protlm.models.layers import init_weights
    from protlm.pretrained.registry import DEBUG_CONFIGS

    root = tmp_path_factory.mktemp("evaluate_cli")
    torch.manual_seed(0)
    model = build_model(DEBUG_CONFIGS["esm2_debug"])
    init_weights(model)
    model_dir = save_protlm(model, root / "model")
    structs = root / "structs"
    structs.mkdir()
    for n in NAMES:
        shutil.copy(shared_data / "structures" / f"{n}.cif", structs)
    fasta = root / "heldout.fasta"
    write_fasta([(r.id, r.sequence[:120]) for r in read_fasta(shared_data / "sequences" / "some_proteins.fasta")][:6],
                fasta)
    return root, model_dir, structs, fasta


def _evaluate(*args):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)], catch_exceptions=False)


def test_markdown_then_resume_then_csv(setup, tmp_path):
    root, model_dir, structs, fasta = setup
    out = tmp_path / "table.md"
    args = ["--models", model_dir, "--perplexity", fasta, "--structures", structs, "--no-progress"]
    r = _evaluate(*args, "--output", out)
    assert r.exit_code == 0, r.output + r.stderr
    assert "scored on 1 held-out chains (2axd:S)" in r.stderr and "use the other 2 (1k6p:A, 1l2y:A)" in r.stderr
    text = out.read_text()
    assert text == r.stdout
    [measured] = [ln for ln in text.splitlines() if "| measured |" in ln]
    cells = [c.strip() for c in measured.split("|")[1:-1]]
    assert cells[2] == "106.5K" and float(cells[3]) > 1 and cells[6:] == ["—¹", "—¹"]
    assert 0 <= float(cells[4]) <= 1 and "fitted here on 2 training chains" in text
    part = parts_dir(out) / f"{model_dir.as_posix().replace('/', '%2F')}.json"
    saved = json.loads(part.read_text())
    assert saved["row"]["contacts"]["chains"] == 1 and (part.with_suffix(".safetensors")).is_file()

    # a rerun reuses the finished model: same table, nothing recomputed
    r = _evaluate(*args, "--output", out)
    assert "not recomputed" in r.stderr and out.read_text() == text

    # other inputs change the key: recomputed; --max-sequences too
    r = _evaluate(*args, "--max-sequences", "3", "--output", out)
    assert "evaluating" in r.stderr and "3 sequences" in r.stdout

    # CSV, and the head fitted by the first run given back with --heads
    csv_out = tmp_path / "table.csv"
    r = _evaluate(*args, "--heads", parts_dir(out), "--output", csv_out)
    assert r.exit_code == 0, r.stderr
    [row] = list(csv.DictReader(csv_out.open()))
    assert row["source"] == "measured" and row["contact_head"].startswith("pre-fitted")
    assert float(row["long P@L"]) == pytest.approx(saved["row"]["contacts"]["mean"]["long P@L"])
    assert float(row["validation_perplexity"]) == pytest.approx(saved["row"]["perplexity"]["perplexity"], rel=0, abs=0)


def test_bad_output_suffix_is_a_usage_error(setup, tmp_path):
    r = _evaluate("--models", setup[1], "--output", tmp_path / "table.txt")
    assert r.exit_code != 0 and "must end in .md or .csv" in r.stderr


def test_a_misspelt_second_model_stops_the_run_before_the_first_is_evaluated(setup, tmp_path):
    out = tmp_path / "t.md"
    r = _evaluate("--models", f"{setup[1]},protlm_smal", "--output", out)
    assert r.exit_code == 1 and "did you mean 'protlm_small'" in r.stderr
    assert not out.exists() and not (tmp_path / "t.md.parts").exists()  # nothing evaluated


def _loader(calls, fail=()):
    from protlm import load_model_and_alphabet

    def load(name, device=None):
        calls.append(name)
        if name in fail:
            raise KeyboardInterrupt  # a kill in the middle of the run
        model, alphabet = load_model_and_alphabet(name.split("#")[0], device=device)
        if name.endswith("#encoder"):
            model.lm_head = None  # a model without an MLM head, such as the ProtT5 encoder
        return model, alphabet
    return load


def test_killed_run_resumes_without_redoing_finished_models(setup, tmp_path):
    root, model_dir, structs, fasta = setup
    s = EvalSettings(str(fasta), str(structs))
    out, a, b = tmp_path / "t.md", f"{model_dir}#a", f"{model_dir}#encoder"
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_evaluation([a, b], s, out, loader=_loader(calls, fail={b}), echo=lambda m: None)
    assert calls == [a, b] and not out.exists()
    calls.clear()
    text = run_evaluation([a, b], s, out, loader=_loader(calls), echo=lambda m: None)
    assert calls == [b]  # the finished model is read back, not recomputed
    [enc] = [ln for ln in text.splitlines() if ln.startswith(f"| {b} | measured")]
    assert enc.split("|")[4].strip() == "—"  # no MLM head: no perplexity; contacts still measured
    assert float(enc.split("|")[5]) >= 0


def test_second_writer_is_refused(setup, tmp_path, hold_in_subprocess):
    root, model_dir, structs, fasta = setup
    out = tmp_path / "t.md"
    hold_in_subprocess(out)
    with pytest.raises(OutputLockedError):
        run_evaluation([str(model_dir)], EvalSettings(str(fasta)), out, echo=lambda m: None)
