"""CARP end to end through every command that takes --model, on a tiny random CARP written in the
published .pt layout by the reference package (sequence-models): embed (checked against the
package's own representations), convert, function fit/predict, variants score, evaluate."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import _carp_ref as R
from protlm.cli.main import cli
from protlm.embed.h5 import EmbeddingsFile

SEQS = {"a": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "b": "KALTARQQEVFDLIRD", "c": "MKVLAAGIVGALLA" * 5}


@pytest.fixture(scope="module")
def carp_pt(tmp_path_factory):
    root = tmp_path_factory.mktemp("carp_cli")
    net, meta = R.reference_bytenet(d_model=32, n_layers=4, r=4, seed=3)
    return R.write_published(net, meta, root / "carp_tiny.pt")


def _cli(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


def _fasta(path, seqs):
    path.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    return path


def test_embed_equals_the_reference_package(tmp_path, carp_pt):
    """mean and per_tok of every layer as sequence-models' CARP wrapper computes them alone."""
    fasta = _fasta(tmp_path / "in.fasta", SEQS)
    out = tmp_path / "emb.h5"
    r = _cli("embed", fasta, "--model", carp_pt, "--output", out, "--include", "mean", "per_tok",
             "--repr-layers", "0", "2", "-1", "--no-progress")
    assert r.exit_code == 0, r.output
    ref = R.load_reference(carp_pt)
    from sequence_models.constants import PROTEIN_ALPHABET

    with EmbeddingsFile(out) as f, torch.no_grad():
        for rid, seq in SEQS.items():
            tokens = torch.tensor([[PROTEIN_ALPHABET.index(c) for c in seq]])
            out_ref = ref(tokens, repr_layers=[0, 2, 4], logits=False)
            reps = {0: out_ref[0], **out_ref["representations"]}  # the package files layer 0 beside
            for j, layer in enumerate((0, 2, 4)):
                want = reps[layer][0].numpy()
                np.testing.assert_allclose(f[rid]["per_tok"][j], want, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(f[rid]["mean"][j], want.mean(0), rtol=1e-5, atol=1e-5)


def test_embed_refuses_contacts_and_bos(tmp_path, carp_pt):
    fasta = _fasta(tmp_path / "in.fasta", {"a": "MKV"})
    for include, message in (("contacts", "no attention maps"), ("bos", "no BOS")):
        r = CliRunner().invoke(cli, ["embed", str(fasta), "--model", str(carp_pt), "--output",
                                     str(tmp_path / f"{include}.h5"), "--include", include, "--no-progress"])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


def test_convert_then_embed_from_the_folder_in_int8_and_bf16(tmp_path, carp_pt):
    folder = tmp_path / "carp_folder"
    assert _cli("convert", carp_pt, folder).exit_code == 0
    fasta = _fasta(tmp_path / "in.fasta", SEQS)
    means = {}
    for dtype in ("fp32", "bf16", "int8"):
        out = tmp_path / f"{dtype}.h5"
        r = _cli("embed", fasta, "--model", folder, "--output", out, "--dtype", dtype, "--no-progress")
        assert r.exit_code == 0, r.output
        with EmbeddingsFile(out) as f:
            means[dtype] = np.stack([f[k]["mean"][0] for k in SEQS])
    for dtype in ("bf16", "int8"):
        cos = (means[dtype] * means["fp32"]).sum(1) / (
            np.linalg.norm(means[dtype], axis=1) * np.linalg.norm(means["fp32"], axis=1))
        assert cos.min() > 0.99, (dtype, cos)


def test_function_fit_then_predict(tmp_path, carp_pt, shared_data):
    lines = (shared_data / "function" / "P62593_beta_lactamase_fitness.fasta").read_text().splitlines()
    data = tmp_path / "small.fasta"
    data.write_text("\n".join(ln for i in range(0, len(lines), 2 * 90) for ln in lines[i : i + 2]) + "\n")
    head = tmp_path / "head"
    r = _cli("function", "fit", data, "--model", carp_pt, "--label-from-header", "2", "--task", "regression",
             "--folds", "3", "--output", head, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "3-fold CV (60 records)" in r.output
    r = _cli("function", "predict", data, "--head", head, "--output", tmp_path / "p.csv", "--no-progress")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 60 and all(np.isfinite(float(x["prediction"])) for x in rows)


@pytest.mark.parametrize("method", ["masked-marginal", "wt-marginal"])
def test_variants_score_is_the_log_ratio_of_the_reference_logits(tmp_path, carp_pt, method):
    wt = "MKTAYIAKQRQISFVKSHFSRQ"
    (tmp_path / "wt.fasta").write_text(f">wt\n{wt}\n")
    (tmp_path / "m.csv").write_text("mutant\nK2A\nT3W\nQ22E\n")
    out = tmp_path / "s.csv"
    r = _cli("variants", "score", "--model", carp_pt, "--sequence", tmp_path / "wt.fasta",
             "--mutations", tmp_path / "m.csv", "--method", method, "--output", out, "--no-progress")
    assert r.exit_code == 0, r.output
    got = {row["mutant"]: float(row[method]) for row in csv.DictReader(out.open())}
    from sequence_models.constants import MASK, PROTEIN_ALPHABET

    ref, idx = R.load_reference(carp_pt), PROTEIN_ALPHABET.index
    for mutant, score in got.items():
        w, pos, m = mutant[0], int(mutant[1:-1]) - 1, mutant[-1]
        seq = wt if method == "wt-marginal" else wt[:pos] + MASK + wt[pos + 1 :]
        with torch.no_grad():
            logits = ref(torch.tensor([[idx(c) for c in seq]]), logits=True)["logits"][0, pos]
        lp = torch.log_softmax(logits.float(), -1)
        assert score == pytest.approx(float(lp[idx(m)] - lp[idx(w)]), abs=1e-4)


def test_evaluate_perplexity_and_bilinear_contacts(tmp_path, carp_pt, shared_data):
    structs = tmp_path / "structs"
    structs.mkdir()
    for name in ("1k6p", "1l2y", "2axd"):
        shutil.copy(shared_data / "structures" / f"{name}.cif", structs)
    fasta = _fasta(tmp_path / "heldout.fasta", SEQS)
    out = tmp_path / "table.md"
    r = _cli("evaluate", "--models", carp_pt, "--perplexity", fasta, "--structures", structs,
             "--output", out, "--no-progress")
    assert r.exit_code == 0, r.output
    [measured] = [ln for ln in out.read_text().splitlines() if "| measured |" in ln]
    cells = [c.strip() for c in measured.split("|")[1:-1]]
    assert float(cells[3]) > 1 and 0 <= float(cells[4]) <= 1  # perplexity; long-range P@L
    assert "bilinear" in out.read_text()


def test_contacts_with_the_attention_head_is_a_clear_error(tmp_path, carp_pt, shared_data):
    r = CliRunner().invoke(cli, ["contacts", "predict", str(_fasta(tmp_path / "in.fasta", {"a": "MKV"})),
                                 "--model", str(carp_pt), "--output", str(tmp_path / "maps")])
    assert r.exit_code != 0 and "no attention maps" in r.output and "Traceback" not in r.output
