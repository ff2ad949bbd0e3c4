"""ProtT5 end to end: `protlm embed`, `function fit/predict`, `contacts fit --head attention` and
`contacts predict` on a tiny random ProtT5 folder written by transformers (loaded by path)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from protlm import load_model_and_alphabet
from protlm.cli.main import cli
from protlm.embed.h5 import EmbeddingsFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import _writers as W  # noqa: E402


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("prot_t5") / "hf"
    W.hf_t5(seed=1).save_pretrained(path)
    return path


def _cli(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


def test_embed_mean_is_over_residues_only(tmp_path, t5_dir):
    fasta = tmp_path / "in.fasta"
    seqs = {"a": "MKTAYIAKQRQISFVKSHFSRQ", "b": "KALTARQQEVFDLIRDUB", "c": "MKV"}
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    out = tmp_path / "emb.h5"
    r = _cli("embed", fasta, "--model", t5_dir, "--output", out, "--include", "mean", "per_tok",
             "--repr-layers", "0", "-1", "--no-progress")
    assert r.exit_code == 0, r.output
    model, alphabet = load_model_and_alphabet(t5_dir)
    with EmbeddingsFile(out) as f, torch.no_grad():
        for rid, seq in seqs.items():
            tokens = torch.tensor([alphabet.encode(seq) + [alphabet.eos_idx]])  # residues, </s>
            rep = model(tokens, repr_layers=[2])["representations"][2][0]
            per_tok = f[rid]["per_tok"][1]  # layers (0, 2): index 1 is the last
            assert per_tok.shape == (len(seq), 64)
            np.testing.assert_allclose(per_tok, rep[:-1].numpy(), atol=1e-5)  # </s> excluded
            np.testing.assert_allclose(f[rid]["mean"][1], rep[:-1].mean(0).numpy(), atol=1e-5)


def test_embed_refuses_bos_pooling(tmp_path, t5_dir):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">a\nMKV\n")
    r = CliRunner().invoke(cli, ["embed", str(fasta), "--model", str(t5_dir), "--output",
                                 str(tmp_path / "e.h5"), "--include", "bos", "--no-progress"])
    assert r.exit_code != 0 and "no BOS" in r.output


def test_function_fit_then_predict(tmp_path, t5_dir, shared_data):
    lines = (shared_data / "function" / "P62593_beta_lactamase_fitness.fasta").read_text().splitlines()
    keep = [l for i in range(0, len(lines), 2 * 90) for l in lines[i : i + 2]]
    data = tmp_path / "small.fasta"
    data.write_text("\n".join(keep) + "\n")
    head = tmp_path / "head"
    r = _cli("function", "fit", data, "--model", t5_dir, "--label-from-header", "2", "--task",
             "regression", "--head", "ridge", "--folds", "3", "--output", head, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "3-fold CV (60 records): spearman" in r.output
    r = _cli("function", "predict", data, "--head", head, "--output", tmp_path / "p.csv", "--no-progress")
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 61


def test_contacts_fit_attention_then_predict(tmp_path, t5_dir, shared_data):
    model_dir = tmp_path / "model"
    shutil.copytree(t5_dir, model_dir)
    structs = tmp_path / "structs"
    structs.mkdir()
    for n in ("1l2y", "2axd"):
        shutil.copy(shared_data / "structures" / f"{n}.cif", structs)
    reg = tmp_path / "reg.safetensors"
    r = _cli("contacts", "fit", "--model", model_dir, "--head", "attention", "--structures", structs,
             "--output", reg, "--C", "1e4")
    assert r.exit_code == 0, r.output
    assert "2 chains" in r.output
    from protlm.contacts.structures import load_chain

    seq = load_chain(structs / "1l2y.cif").sequence
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">1l2y\n{seq}\n")
    out = tmp_path / "pred"
    r = _cli("contacts", "predict", fasta, "--model", model_dir, "--head-weights", reg, "--output", out)
    assert r.exit_code == 0, r.output
    m = np.load(out / "1l2y.npy")
    assert m.shape == (len(seq), len(seq)) and np.allclose(m, m.T, atol=1e-6) and m.std() > 0
    # the map is the fitted head over residues only (no BOS to strip; </s> stripped)
    from protlm.pretrained.contact_regression import load_contact_regression

    model, alphabet = load_model_and_alphabet(model_dir)
    load_contact_regression(model, reg)
    with torch.no_grad():
        ref = model.predict_contacts(torch.tensor([alphabet.encode(seq) + [alphabet.eos_idx]]))[0]
    np.testing.assert_allclose(m, ref.numpy(), atol=1e-5)


def test_evaluate_gives_no_perplexity_and_fits_an_attention_head(tmp_path, t5_dir, shared_data):
    structs = tmp_path / "structs"
    structs.mkdir()
    for n in ("1k6p", "1l2y", "2axd"):
        shutil.copy(shared_data / "structures" / f"{n}.cif", structs)
    fasta = tmp_path / "heldout.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMSEQNNTEMTFQIQRIYTKDISFEAPNAPHVFQ\n")
    out = tmp_path / "table.md"
    r = _cli("evaluate", "--models", t5_dir, "--perplexity", fasta, "--structures", structs,
             "--no-progress", "--output", out)
    assert r.exit_code == 0, r.output
    [row] = [ln for ln in out.read_text().splitlines() if "| measured |" in ln]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3] == "—"  # the encoder has no MLM head
    assert 0 <= float(cells[4]) <= 1  # contacts from an attention head fitted on the training chains
    assert "fitted here on 2 training chains" in out.read_text()
