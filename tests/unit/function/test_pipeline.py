"""Function prediction: label parsing, metrics, folds, heads (no pickle), cache, fit/predict."""

import numpy as np
import pytest

from protlm.errors import InputError
from protlm.function import cv, heads
from protlm.function.pipeline import FitConfig, cached_embeddings, fit_function, load_head, predict_function
from protlm.function.data import LabelError, as_targets, load_labelled
from protlm.runtime.options import InferenceOptions

DBG = InferenceOptions(model="dbg", device="cpu", progress=False)


def test_labels_from_csv_tsv_and_fasta_header(tmp_path):
    (tmp_path / "d.csv").write_text("id,sequence,y,fam\na,MKV,1.5,f1\nb,mkl*,2,f2\n")
    d = load_labelled(tmp_path / "d.csv", "y", group_col="fam")
    assert d.ids == ["a", "b"] and d.sequences == ["MKV", "MKL"] and d.groups == ["f1", "f2"]
    assert as_targets(d, "regression").tolist() == [1.5, 2.0]
    (tmp_path / "d.tsv").write_text("name\tseq\tclass\nx\tMKV\tenzyme\ny\tGGG\tother\n")
    d = load_labelled(tmp_path / "d.tsv", "class", id_col="name", seq_col="seq")
    assert as_targets(d, "classification").tolist() == ["enzyme", "other"]
    (tmp_path / "d.fasta").write_text(">0|mut_A1A|0.5\nMKV\n>1|mut_K2G|-1.25\nMGV\n")
    d = load_labelled(tmp_path / "d.fasta", label_field=2, group_field=1)
    assert as_targets(d, "regression").tolist() == [0.5, -1.25] and d.groups == ["mut_A1A", "mut_K2G"]


@pytest.mark.parametrize("text, args, msg", [
    ("id,sequence,y\na,MKV,abc\n", {"target": "y"}, r"line 2: record 'a': label 'abc' is not a number"),
    ("id,sequence,y\nb,MKV,1\na,MKV,\n", {"target": "y"}, "line 3: record 'a' has no label"),
    ("id,sequence\na,MKV\n", {"target": "y"}, r"missing column\(s\) \['y'\]"),
    ("id,sequence,y\na,MK1V,1\n", {"target": "y"}, "line 2"),
    ("id,sequence,y\na,MKV,1\na,MKV,2\n", {"target": "y"}, "line 3: duplicate ID 'a'"),
    ("", {"target": "y"}, r"empty file \(expected a header line"),
])
def test_label_errors_name_the_record(tmp_path, text, args, msg):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(LabelError, match=msg):
        as_targets(load_labelled(tmp_path / "d.csv", **args), "regression")


def test_an_option_of_the_other_input_kind_is_named(tmp_path):
    (tmp_path / "d.csv").write_text("id,sequence,y\na,MKV,1\n")
    (tmp_path / "d.fasta").write_text(">a|1\nMKV\n")
    with pytest.raises(LabelError, match="--label-from-header reads FASTA headers"):
        load_labelled(tmp_path / "d.csv", label_field=1)
    with pytest.raises(LabelError, match="--group-from-header reads FASTA headers"):
        load_labelled(tmp_path / "d.csv", "y", group_field=1)
    with pytest.raises(LabelError, match="a FASTA file has no columns"):
        load_labelled(tmp_path / "d.fasta", "y")


def test_header_field_out_of_range(tmp_path):
    (tmp_path / "d.fa").write_text(">0|only\nMKV\n")
    with pytest.raises(LabelError, match="record '0|only'.*no field 2"):
        load_labelled(tmp_path / "d.fa", label_field=2)


def test_metrics_by_hand():
    m = cv.classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["mcc"] == pytest.approx(1 / np.sqrt(3))
    r = cv.regression_metrics([1, 2, 3, 4], [2, 4, 6, 9])
    assert r["spearman"] == 1.0 and r["rmse"] == pytest.approx(np.sqrt((1 + 4 + 9 + 25) / 4))
    assert r["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [2, 4, 6, 9])[0, 1])


def test_group_folds_never_split_a_group():
    groups = np.repeat(np.arange(12), 5)
    folds = cv.fold_indices(60, 4, "regression", groups=groups, seed=1)
    assert len(folds) == 4
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen) == list(range(60))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    with pytest.raises(ValueError, match="3 distinct groups"):
        cv.fold_indices(9, 4, "regression", groups=[0, 0, 0, 1, 1, 1, 2, 2, 2])
    with pytest.raises(InputError, match="cannot make 5 folds of 3 records .*fewer with --folds"):
        cv.fold_indices(3, 5, "regression")


def test_stratified_folds_for_classification():
    y = np.array(["a"] * 10 + ["b"] * 5)
    for _, test in cv.fold_indices(15, 5, "classification", y=y):
        assert sorted(y[test]) == ["a", "a", "b"]


def test_classification_of_continuous_labels_says_so():
    y = np.array([f"{v:.3f}" for v in np.linspace(0, 1, 30)])
    with pytest.raises(InputError, match=r"needs >= 5 records per class; class .* has 1 .*--task regression"):
        cv.fold_indices(30, 5, "classification", y=y)
    with pytest.raises(InputError, match=r"class 'b' has 2$"):
        cv.fold_indices(12, 3, "classification", y=np.array(["a"] * 10 + ["b"] * 2))


def _data(task, n=80, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10, size=d) + 5
    if task == "regression":
        return x, x @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    return x, np.array([f"c{i}" for i in (x[:, :k].argmax(1) if k > 2 else (x[:, 0] > 5).astype(int))])


@pytest.mark.parametrize("kind, task, k", [("ridge", "regression", 0), ("mlp", "regression", 0),
                                           ("logistic", "classification", 2), ("logistic", "classification", 3),
                                           ("mlp", "classification", 2), ("mlp", "classification", 3)])
def test_head_arrays_reproduce_sklearn(kind, task, k, tmp_path):
    from sklearn.preprocessing import StandardScaler

    x, y = _data(task, k=k)
    head = heads.fit_head(x, y, kind, task)
    est = heads._estimator(kind, task, 0).fit(StandardScaler().fit_transform(x), y.astype(str) if k else y)
    want = est.predict(StandardScaler().fit(x).transform(x))
    got = head.predict(x)
    if task == "regression":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert list(got) == list(want)
    from protlm.function.pipeline import save_head

    save_head(head, tmp_path, {"model": "m", "layer": -1, "pooling": "mean"})
    loaded, meta = load_head(tmp_path)
    assert meta["kind"] == kind and list(loaded.predict(x)) == list(got)


def test_undefined_cv_metrics_are_null_in_valid_json(tmp_path):
    """Constant CV predictions give a NaN Spearman: head.json must stay valid JSON."""
    import json

    from protlm.function.pipeline import save_head

    x, y = _data("regression", k=0)
    nan = float("nan")
    save_head(heads.fit_head(x, y, "ridge", "regression"), tmp_path,
              {"model": "m", "cv": {"mean": {"spearman": nan, "rmse": 0.5}, "per_fold": [{"spearman": nan}]}})
    meta = json.loads((tmp_path / "head.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert meta["cv"] == {"mean": {"spearman": None, "rmse": 0.5}, "per_fold": [{"spearman": None}]}


def test_head_task_mismatch():
    with pytest.raises(ValueError, match="ridge is for regression"):
        heads.fit_head(*_data("classification", k=2), "ridge", "classification")


def test_cache_reuses_vectors(tmp_path, debug_model):
    model = debug_model()
    calls = []

    def loader(name):
        calls.append(name)
        return model, model.alphabet

    seqs = ["MKV", "GGSA", "MKV"]
    x1 = cached_embeddings(seqs, DBG, -1, "mean", tmp_path, loader=loader)
    x2 = cached_embeddings(["GGSA", "MKV"], DBG, -1, "mean", tmp_path, loader=loader)
    assert calls == ["dbg"] and x1.shape == (3, 64)
    np.testing.assert_array_equal(x2, x1[[1, 0]])
    cached_embeddings(["MKV"], DBG, -1, "max", tmp_path, loader=loader)
    assert calls == ["dbg", "dbg"]  # another pooling is another cache entry


def test_fit_and_predict_classification_csv(tmp_path, debug_model):
    model = debug_model()
    loader = lambda name: (model, model.alphabet)  # noqa: E731
    rng = np.random.default_rng(0)
    rows = ["id,sequence,label,fam"]
    for i in range(40):
        cls = i % 2
        seq = "".join(rng.choice(list("DEKR" if cls else "AVLI"), 12))
        rows.append(f"s{i},{seq},{'charged' if cls else 'hydrophobic'},f{i // 4}")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    cfg = FitConfig(target="label", task="classification", group="fam", folds=4)
    meta = fit_function(tmp_path / "d.csv", cfg, DBG, tmp_path / "head", loader=loader)
    assert meta["cv"]["grouped"] and meta["cv"]["mean"]["accuracy"] >= 0.9
    assert set(meta["cv"]["mean"]) == {"accuracy", "macro_f1", "mcc"}
    (tmp_path / "q.fasta").write_text(">q1\nDEKRDEKRDEKR\n>q2\nAVLIAVLIAVLI\n")
    predict_function(tmp_path / "q.fasta", tmp_path / "head", tmp_path / "p.csv",
                     InferenceOptions(device="cpu", progress=False), loader=loader)
    assert (tmp_path / "p.csv").read_text().splitlines() == ["id,prediction", "q1,charged", "q2,hydrophobic"]


def test_cache_keeps_finished_chunks_after_a_crash(tmp_path, debug_model, monkeypatch):
    from protlm.function import pipeline as function

    model = debug_model()
    real = function.embed_sequences
    calls = []

    def flaky(m, a, seqs, *args):
        calls.append(list(seqs))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed during the second chunk
        return real(m, a, seqs, *args)

    monkeypatch.setattr(function, "embed_sequences", flaky)
    seqs = ["MKV", "GGSA", "MKLV", "PPW"]
    with pytest.raises(KeyboardInterrupt):
        cached_embeddings(seqs, DBG, -1, "mean", tmp_path, loader=lambda n: (model, model.alphabet),
                          chunk=2)
    cached_embeddings(seqs, DBG, -1, "mean", tmp_path, loader=lambda n: (model, model.alphabet), chunk=2)
    assert calls == [["MKV", "GGSA"], ["MKLV", "PPW"], ["MKLV", "PPW"]]  # only the lost chunk is redone


def test_cache_refuses_a_second_writer_but_serves_readers(tmp_path, debug_model):
    import os

    from protlm.io import OutputLockedError, output_lock
    from protlm.pretrained.identity import model_identity
    from protlm.function.data import EmbeddingCache

    model = debug_model()
    loader = lambda name: (model, model.alphabet)  # noqa: E731
    x = cached_embeddings(["MKV"], DBG, -1, "mean", tmp_path, loader=loader)
    cache_file = EmbeddingCache(tmp_path, model_identity("dbg"), -1, "mean").path
    before = cache_file.read_bytes()
    with output_lock(cache_file):  # another `function fit` is adding to this cache
        with pytest.raises(OutputLockedError, match=f"is being written by process {os.getpid()}"):
            cached_embeddings(["MKV", "GGSA"], DBG, -1, "mean", tmp_path, loader=loader)
        # everything cached: read without waiting for the writer
        np.testing.assert_array_equal(
            cached_embeddings(["MKV"], DBG, -1, "mean", tmp_path, loader=loader), x)
    assert cache_file.read_bytes() == before


def test_cache_never_serves_a_changed_sequence(tmp_path, debug_model):
    """The cache is keyed by the SHA-256 of each sequence (and model, layer, pooling), not by
    record ID: a record whose sequence changed gets a fresh vector."""
    model = debug_model()
    calls = []

    def loader(name):
        calls.append(name)
        return model, model.alphabet

    old = cached_embeddings(["MKTAYIAKQR"], DBG, -1, "mean", tmp_path / "c", loader=loader)
    new = cached_embeddings(["MKTAYIAKQL"], DBG, -1, "mean", tmp_path / "c", loader=loader)
    fresh = cached_embeddings(["MKTAYIAKQL"], DBG, -1, "mean", tmp_path / "empty", loader=loader)
    assert len(calls) == 3 and not np.array_equal(old, new)
    np.testing.assert_array_equal(new, fresh)
