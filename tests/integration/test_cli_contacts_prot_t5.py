"""`protlm contacts` on a ProtT5 folder without a fitted contact head: the warning once per run."""

import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from protlm.cli.main import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import _writers as W  # noqa: E402

NOTE = "warning: this model has no fitted contact regression"


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("prot_t5") / "hf"
    W.hf_t5(seed=1).save_pretrained(path)
    return path


def test_predict_warns_once_per_run(tmp_path, t5_dir, monkeypatch):
    import protlm.contacts.plot as plot

    draw = plot.plot_contact_map

    def filters_changed(*a, **k):  # as matplotlib does on first use (often already imported here)
        with warnings.catch_warnings():
            pass
        return draw(*a, **k)

    monkeypatch.setattr(plot, "plot_contact_map", filters_changed)
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVK\n>b\nGSHMSAAAKL\n>c\nMKV\n")
    args = ["contacts", "predict", str(fasta), "--model", str(t5_dir), "--output", str(tmp_path / "maps")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert r.stderr.count(NOTE) == 1, r.stderr  # was 2 or 3: the "once" filter forgot
    (tmp_path / "maps" / "c.json").unlink()  # one record left to compute on the rerun
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and r.stderr.count(NOTE) == 1, r.stderr
    r = CliRunner().invoke(cli, args)  # nothing computed: no maps to warn about
    assert r.exit_code == 0 and NOTE not in r.stderr, r.stderr
