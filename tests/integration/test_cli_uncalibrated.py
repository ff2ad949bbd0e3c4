"""A model without a fitted contact head says so once, on stderr, wherever contacts are asked for."""

import pytest
import torch
from click.testing import CliRunner

from protlm.cli.main import cli
from protlm.pretrained.contact_regression import save_regression
from protlm.pretrained.protlm_format import save_protlm

NOTE = "warning: this model has no fitted contact regression"


@pytest.fixture
def inputs(tmp_path, debug_model):
    model = debug_model("esm2_debug")
    save_protlm(model, tmp_path / "plain")
    save_protlm(model, tmp_path / "fitted")
    n = model.contact_head.regression.weight.numel()
    save_regression(torch.full((n,), 0.1), torch.tensor([-1.0]), tmp_path / "fitted")
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "KALTARQQEVFDLIRDHISQTGMPPTRAEIAQRLGFRS", "MSEQ", "GGGGSGGGGS"]
    (tmp_path / "in.fasta").write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    return tmp_path


@pytest.mark.parametrize("model, expected", [("plain", 1), ("fitted", 0)])
def test_embed_with_contacts(inputs, model, expected):
    r = CliRunner().invoke(cli, ["embed", str(inputs / "in.fasta"), "--model", str(inputs / model),
                                 "--output", str(inputs / f"{model}.h5"), "--include", "mean", "contacts",
                                 "--toks-per-batch", "40", "--no-progress"])  # several batches
    assert r.exit_code == 0, r.output
    assert r.stderr.count(NOTE) == expected, r.stderr
    assert "Traceback" not in r.stderr and "heads.py" not in r.stderr  # one plain line, not a warning dump


@pytest.mark.parametrize("model, expected", [("plain", 1), ("fitted", 0)])
def test_contacts_predict(inputs, model, expected):
    r = CliRunner().invoke(cli, ["contacts", "predict", str(inputs / "in.fasta"), "--model", str(inputs / model),
                                 "--output", str(inputs / f"maps_{model}")])
    assert r.exit_code == 0, r.output
    assert r.stderr.count(NOTE) == expected, r.stderr


def test_embed_without_contacts_says_nothing(inputs):
    r = CliRunner().invoke(cli, ["embed", str(inputs / "in.fasta"), "--model", str(inputs / "plain"),
                                 "--output", str(inputs / "m.h5"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert NOTE not in r.stderr
