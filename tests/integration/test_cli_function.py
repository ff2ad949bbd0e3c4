"""`protlm function fit/predict` round trip on a slice of the real beta-lactamase set."""

import json

import pytest
from click.testing import CliRunner

from protlm.cli.main import cli


@pytest.fixture
def debug_dir(tmp_path, debug_model):
    from protlm.pretrained.protlm_format import save_protlm

    save_protlm(debug_model("esm2_debug"), tmp_path / "dbg")
    return tmp_path / "dbg"


@pytest.fixture
def small_set(tmp_path, shared_data):
    # every 90th record: the file is sorted by fitness, so this spans the whole range
    lines = (shared_data / "function" / "P62593_beta_lactamase_fitness.fasta").read_text().splitlines()
    keep = [l for i in range(0, len(lines), 2 * 90) for l in lines[i : i + 2]]
    path = tmp_path / "small.fasta"
    path.write_text("\n".join(keep) + "\n")
    return path


def test_fit_then_predict(tmp_path, debug_dir, small_set):
    head = tmp_path / "head"
    r = CliRunner().invoke(cli, ["function", "fit", str(small_set), "--model", str(debug_dir),
                                 "--label-from-header", "2", "--task", "regression", "--head", "ridge",
                                 "--folds", "3", "--output", str(head), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "3-fold CV (60 records): spearman" in r.output
    meta = json.loads((head / "head.json").read_text())
    assert meta["model"] == str(debug_dir) and meta["task"] == "regression" and meta["pooling"] == "mean"
    assert set(meta["cv"]["mean"]) == {"spearman", "pearson", "rmse"} and len(meta["cv"]["per_fold"]) == 3
    assert list((head / "embedding_cache").glob("*.npz"))
    out = tmp_path / "new_folder" / "pred.csv"  # a folder that does not exist yet is made
    r = CliRunner().invoke(cli, ["function", "predict", str(small_set), "--head", str(head),
                                 "--output", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = out.read_text().splitlines()
    assert rows[0] == "id,prediction" and len(rows) == 61
    assert rows[1].startswith("0|beta-lactamase_P20P|1.581033423,")
    float(rows[1].rsplit(",", 1)[1])


def test_bad_label_field_is_a_clean_error(tmp_path, debug_dir, small_set):
    r = CliRunner().invoke(cli, ["function", "fit", str(small_set), "--model", str(debug_dir),
                                 "--label-from-header", "1", "--task", "regression",
                                 "--output", str(tmp_path / "h"), "--no-progress"])
    assert r.exit_code == 1
    assert "label 'beta-lactamase_P20P' is not a number" in r.output and "record '0|" in r.output
    assert not (tmp_path / "h").exists()


def test_predict_needs_a_head_dir(tmp_path, small_set):
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, ["function", "predict", str(small_set), "--head", str(tmp_path / "empty"),
                                 "--output", str(tmp_path / "p.csv")])
    assert r.exit_code == 1 and "not a head dir" in r.output
