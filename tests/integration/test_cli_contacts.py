"""`protlm contacts predict | fit | eval` end to end on real structures with a debug model."""

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from protlm.cli.main import cli
from protlm.contacts.structures import load_chain
from protlm.pretrained.protlm_format import save_protlm

NAMES = ("1l2y", "2axd", "4gxy")  # 4gxy is RNA only: skipped in folders


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    from protlm import build_model
    from protlm.pretrained.registry import DEBUG_CONFIGS

    root = tmp_path_factory.mktemp("contacts_cli")
    torch.manual_seed(0)
    model_dir = save_protlm(build_model(DEBUG_CONFIGS["esm2_debug"]), root / "model")
    structs = root / "structs"
    structs.mkdir()
    for n in NAMES:
        shutil.copy(shared_data / "structures" / f"{n}.cif", structs)
    chains = [load_chain(structs / f"{n}.cif") for n in NAMES[:2]]
    fasta = root / "in.fasta"
    fasta.write_text("".join(f">{n}\n{c.sequence}\n" for n, c in zip(NAMES, chains)))
    return root, model_dir, structs, fasta


def _run(*args):
    return CliRunner().invoke(cli, ["contacts", *map(str, args)], catch_exceptions=False)


def test_fit_then_predict_and_eval(setup):
    root, model_dir, structs, fasta = setup
    r = _run("fit", "--model", model_dir, "--structures", structs, "--output", model_dir, "--C", "1e4")
    assert r.exit_code == 0, r.output
    assert "2 chains" in r.output and (model_dir / "contact_regression.safetensors").is_file()
    r = _run("fit", "--model", model_dir, "--head", "bilinear", "--structures", structs,
             "--output", model_dir / "bilinear_contact", "--epochs", "3", "--proj-dim", "8")
    assert r.exit_code == 0, r.output

    for head in ("attention", "bilinear"):
        out = root / f"pred_{head}"
        r = _run("predict", fasta, "--model", model_dir, "--head", head, "--output", out)
        assert r.exit_code == 0, r.output
        m = np.load(out / "1l2y.npy")
        assert m.shape == (20, 20) and m.dtype == np.float32
        assert ((m >= 0) & (m <= 1)).all() and np.allclose(m, m.T, atol=1e-6) and m.std() > 0
        if head == "attention":  # the file holds what the model's contact head predicts
            from protlm import load_model_and_alphabet

            model, alphabet = load_model_and_alphabet(model_dir)
            seq = fasta.read_text().splitlines()[1]
            toks = torch.tensor([[alphabet.cls_idx, *alphabet.encode(seq), alphabet.eos_idx]])
            with torch.no_grad():
                want = model.eval()(toks, return_contacts=True)["contacts"][0].numpy()
            np.testing.assert_allclose(m, want, atol=1e-5)
        assert (out / "1l2y.png").read_bytes()[:4] == b"\x89PNG" and (out / "2axd.png").is_file()

    r = _run("eval", "--model", model_dir, "--structures", structs)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()  # the table alone (progress goes to stderr)
    assert lines[0].startswith("| protein | L | short P@L") and "| 1l2y:A | 20 |" in r.stdout
    assert "**mean (2)**" in lines[-1]
    csv = root / "eval.csv"
    r = _run("eval", "--model", model_dir, "--head", "bilinear", "--structures", structs / "2axd.cif",
             "--format", "csv", "--output", csv)
    assert r.exit_code == 0, r.output
    rows = csv.read_text().splitlines()
    assert rows[0].startswith("protein,L,") and rows[1].startswith("2axd:S,76,") and rows[2].startswith("mean,,")


def test_bilinear_head_beside_the_weights_and_wrong_width(setup, tmp_path):
    """A head saved straight into the model folder (how protlm_small ships it) is found by
    --head bilinear; a head of another width is a clean error, not a matmul traceback."""
    root, model_dir, structs, fasta = setup
    beside = shutil.copytree(model_dir, tmp_path / "model", ignore=shutil.ignore_patterns("bilinear_contact"))
    r = _run("predict", fasta, "--model", beside, "--head", "bilinear", "--output", tmp_path / "none")
    assert r.exit_code == 1 and "bilinear_contact.json" in r.output
    r = _run("fit", "--model", beside, "--head", "bilinear", "--structures", structs,
             "--output", beside, "--epochs", "3", "--proj-dim", "8")
    assert r.exit_code == 0, r.output
    r = _run("predict", fasta, "--model", beside, "--head", "bilinear", "--output", tmp_path / "pred")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "pred" / "1l2y.npy").shape == (20, 20)

    from protlm.contacts.bilinear import BilinearConfig, BilinearContactHead, save_bilinear

    wide = save_bilinear(BilinearContactHead(BilinearConfig(embed_dim=999, proj_dim=4, model="other")),
                         tmp_path / "wide")
    r = _run("predict", fasta, "--model", beside, "--head", "bilinear", "--head-weights", wide,
             "--output", tmp_path / "wide_out")
    assert r.exit_code == 1 and "999" in r.output and "other" in r.output
    assert not (tmp_path / "wide_out").exists()
    # a bilinear head given as --head-weights of the (default) attention head: the error says so
    r = _run("predict", fasta, "--model", beside, "--head-weights", wide, "--output", tmp_path / "mixed")
    assert r.exit_code == 1 and "holds a bilinear head: add --head bilinear" in r.output, r.output


def test_predict_with_structure_overlay(setup):
    root, model_dir, structs, fasta = setup
    one = root / "one.fasta"
    one.write_text(">trp\n" + load_chain(structs / "1l2y.cif").sequence + "\n")
    r = _run("predict", one, "--model", model_dir, "--output", root / "overlay",
             "--structure", f"{structs / '1l2y.cif'}:A")
    assert r.exit_code == 0, r.output
    assert (root / "overlay" / "trp.png").is_file()
    r = _run("predict", fasta, "--model", model_dir, "--output", root / "overlay2",
             "--structure", structs / "1l2y.cif")
    assert r.exit_code != 0 and "2axd" in r.output  # second record is not the structure's sequence


def test_bad_inputs_exit_nonzero_with_names(setup):
    root, model_dir, structs, fasta = setup
    r = _run("eval", "--model", model_dir, "--structures", f"{structs / '2axd.cif'}:Q")
    assert r.exit_code == 1 and "2axd.cif" in r.output and "'Q'" in r.output
    r = _run("eval", "--model", model_dir, "--structures", structs / "4gxy.cif")
    assert r.exit_code == 1 and "no protein chain" in r.output
    bad = root / "bad.fasta"
    bad.write_text(">ok\nACDE\n>broken\nAC1DE\n")
    r = _run("predict", bad, "--model", model_dir, "--output", root / "bad_out")
    assert r.exit_code == 1 and "broken" in r.output
    assert not (root / "bad_out").exists() or not any((root / "bad_out").iterdir())  # nothing written
    r = _run("predict", fasta, "--model", root / "missing_model", "--output", root / "x")
    assert r.exit_code == 1


def test_predict_resumes_and_refuses_other_settings(setup):
    root, model_dir, structs, fasta = setup
    out = root / "resume"
    r = _run("predict", fasta, "--model", model_dir, "--output", out)
    assert r.exit_code == 0, r.output
    first = np.load(out / "2axd.npy")
    # as after a kill between the two records: the second one's picture was never written
    (out / "2axd.png").unlink()
    stamp = (out / "1l2y.npy").stat().st_mtime_ns
    r = _run("predict", fasta, "--model", model_dir, "--output", out)
    assert r.exit_code == 0, r.output
    assert "1 records already" in r.output and str(out / "2axd.npy") in r.output
    assert (out / "1l2y.npy").stat().st_mtime_ns == stamp  # done record not recomputed
    # recomputed alone, first batched with 1l2y: the same map to fp32 rounding
    np.testing.assert_allclose(np.load(out / "2axd.npy"), first, atol=1e-6, rtol=0)
    assert (out / "2axd.png").is_file()
    other = shutil.copytree(model_dir, root / "other_model")
    r = _run("predict", fasta, "--model", other, "--output", out)
    assert r.exit_code != 0 and "other settings" in r.output and "other_model" in r.output


def test_predict_refused_while_another_process_writes_the_folder(setup, capsys):
    import os

    from protlm.cli.main import main
    from protlm.io import output_lock

    root, model_dir, structs, fasta = setup
    out = root / "locked"
    r = _run("predict", fasta, "--model", model_dir, "--output", out)
    assert r.exit_code == 0, r.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with output_lock(out):  # as another `contacts predict` into the same folder would
        with pytest.raises(SystemExit) as e:
            main(["contacts", "predict", str(fasta), "--model", str(model_dir), "--output", str(out)])
    assert e.value.code == 1
    assert f"Error: {out} is being written by process {os.getpid()}" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


AWKWARD = ["a/b", "a_b", "..", "sp|P0|" + "long" * 80]  # used to share 'a_b'; '..' and 300 chars


def test_predict_gives_every_id_its_own_files(setup):
    from protlm.io import record_stem

    root, model_dir, structs, fasta = setup
    seqs = ["MKTAYIAKQR", "GSHMLEDPVA", "MKVLAAGIVG", "ACDEFGHIKL"]
    awkward = root / "awkward.fasta"
    awkward.write_text("".join(f">{i}\n{s}\n" for i, s in zip(AWKWARD, seqs)))
    out = root / "awkward_out"
    r = _run("predict", awkward, "--model", model_dir, "--output", out)
    assert r.exit_code == 0, r.output
    assert "already" not in r.output
    stems = [record_stem(i) for i in AWKWARD]
    assert len(set(stems)) == 4
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(f"{s}.npy" for s in stems)
    one = root / "one"
    for rid, seq, stem in zip(AWKWARD, seqs, stems):  # each file holds its own record's map (batched
        # with other records, so equal to fp32 rounding)
        (root / "one.fasta").write_text(f">x\n{seq}\n")
        assert _run("predict", root / "one.fasta", "--model", model_dir, "--output", one).exit_code == 0
        np.testing.assert_allclose(np.load(out / f"{stem}.npy"), np.load(one / "x.npy"), atol=1e-6, rtol=0)
        assert (out / f"{stem}.png").is_file()
        shutil.rmtree(one)


def test_predict_refuses_or_recomputes_a_changed_record(setup):
    root, model_dir, structs, fasta = setup
    out = root / "changed"
    chains = {n: load_chain(structs / f"{n}.cif").sequence for n in NAMES[:2]}
    src = root / "changing.fasta"
    src.write_text(f">1l2y\n{chains['1l2y']}\n>2axd\n{chains['2axd']}\n")
    assert _run("predict", src, "--model", model_dir, "--output", out).exit_code == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    src.write_text(f">1l2y\n{chains['1l2y']}\n>2axd\n{chains['2axd'][:40]}\n")  # same ID, new sequence
    r = _run("predict", src, "--model", model_dir, "--output", out)
    assert r.exit_code == 1 and "'2axd'" in r.output and "'1l2y'" not in r.output
    assert "another sequence" in r.output and "--overwrite-changed" in r.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp  # refused before any write
    r = _run("predict", src, "--model", model_dir, "--output", out, "--overwrite-changed")
    assert r.exit_code == 0, r.output
    assert str(out / "2axd.npy") in r.output and "1 records already" in r.output
    assert (out / "1l2y.npy").stat().st_mtime_ns == stamp["1l2y.npy"]
    (root / "new.fasta").write_text(f">2axd\n{chains['2axd'][:40]}\n")
    assert _run("predict", root / "new.fasta", "--model", model_dir, "--output", root / "new").exit_code == 0
    np.testing.assert_array_equal(np.load(out / "2axd.npy"), np.load(root / "new" / "2axd.npy"))
    assert np.load(out / "2axd.npy").shape == (40, 40)
    r = _run("predict", src, "--model", model_dir, "--output", out)
    assert r.exit_code == 0 and "2 records already" in r.output


def test_predict_record_named_settings_resumes(setup):
    root, model_dir, structs, fasta = setup
    src = root / "settings.fasta"
    src.write_text(">settings\nMKTAYIAKQRQISFVK\n>b\nGSHMSAAAKL\n")
    out = root / "named_settings"
    assert _run("predict", src, "--model", model_dir, "--output", out).exit_code == 0
    assert {"settings.npy", "settings.png", "settings.json", ".settings.json"} <= {p.name for p in out.iterdir()}
    r = _run("predict", src, "--model", model_dir, "--output", out)
    assert r.exit_code == 0, r.output
    assert "2 records already" in r.output


def test_predict_resumes_a_folder_of_the_old_layout(setup):
    root, model_dir, structs, fasta = setup
    out = root / "old_layout"
    assert _run("predict", fasta, "--model", model_dir, "--output", out).exit_code == 0
    (out / ".settings.json").rename(out / "settings.json")  # as older versions named it
    r = _run("predict", fasta, "--model", model_dir, "--output", out)
    assert r.exit_code == 0 and "2 records already" in r.output, r.output
    assert (out / ".settings.json").is_file() and not (out / "settings.json").exists()
    # an old folder whose record 'settings' overwrote the settings: what made it is unknown
    (out / ".settings.json").unlink()
    (out / "settings.json").write_text('{"id": "settings", "sequence_sha256": "00", "length": 4}')
    r = _run("predict", fasta, "--model", model_dir, "--output", out)
    assert r.exit_code == 1 and "record 'settings' overwrote" in r.output and "Traceback" not in r.output


def test_predict_checks_every_record_against_the_structure_first(setup):
    root, model_dir, structs, fasta = setup
    out = root / "structure_first"
    r = _run("predict", fasta, "--model", model_dir, "--output", out, "--structure", f"{structs / '1l2y.cif'}:A")
    assert r.exit_code == 1 and "'2axd'" in r.output and "1l2y.cif:A" in r.output
    assert not out.exists() and not (root / "structure_first.lock").exists()  # nothing written


@pytest.mark.parametrize("fmt, name, first", [(None, "t.csv", "protein,L,"), ("csv", "t.csv", "protein,L,"),
                                              (None, "t.md", "| protein |"), (None, "t.markdown", "| protein |")])
def test_eval_format_follows_the_output_suffix(setup, fmt, name, first):
    root, model_dir, structs, fasta = setup
    out = root / "fmt" / name
    out.parent.mkdir(exist_ok=True)
    r = _run("eval", "--model", model_dir, "--structures", structs / "1l2y.cif", "--output", out,
             *(["--format", fmt] if fmt else []))
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith(first)


@pytest.mark.parametrize("fmt, name, says", [("markdown", "t.csv", "contradicts"), ("csv", "t.md", "contradicts"),
                                             (None, "t.txt", "must end in .md or .csv"),
                                             ("csv", "t", "must end in .md or .csv")])
def test_eval_refuses_an_unclear_format(setup, fmt, name, says):
    root, model_dir, structs, fasta = setup
    out = root / "badfmt" / name
    r = _run("eval", "--model", model_dir, "--structures", structs / "1l2y.cif", "--output", out,
             *(["--format", fmt] if fmt else []))
    assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output
    assert not out.parent.exists()
