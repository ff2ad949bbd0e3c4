"""scripts/compare_contacts.py reads the per-protein tables that contacts_eval.py prints
(PrecisionTable.to_markdown) and pairs them chain by chain."""

import pytest

from protlm.contacts.metrics import PrecisionTable


@pytest.fixture(scope="module")
def cmp(load_script):
    return load_script("compare_contacts")


def output(values: dict[str, list[float]]) -> str:
    """A contacts_eval-style output: summary table, then one per-protein table per method."""
    cols = PrecisionTable({}).columns
    text = "model x\n\n| method | long P@L | long P@L/5 | medium P@L/5 | short P@L/5 |\n|---|---|---|---|---|\n"
    text += "".join(f"| {method} | 0 | 0 | 0 | 0 |\n" for method in values)
    for method, vals in values.items():
        rows = {f"c{i}:A": {"L": 100, **{c: 0.0 for c in cols}, "long P@L": v} for i, v in enumerate(vals)}
        text += f"\n### {method}\n\n{PrecisionTable(rows).to_markdown()}"
    return text


def test_pairs_chains_and_counts_direction(cmp, tmp_path, capsys):
    a = {"attention head": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "random": [0.05] * 7}
    b = {"attention head": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.71], "random": [0.05] * 7}
    pa = cmp.per_protein(output(a), "long P@L")
    assert pa["attention head"] == {f"c{i}:A": v for i, v in enumerate(a["attention head"])}
    rows = {r["method"]: r for r in cmp.compare(pa, cmp.per_protein(output(b), "long P@L"))}
    att = rows["attention head"]
    assert (att["n"], att["lower"], att["higher"]) == (7, 6, 1)
    assert att["mean_a"] == pytest.approx(0.4) and att["mean_b"] == pytest.approx(2.21 / 7)
    assert att["p"] == pytest.approx(0.03125)  # exact: W+ = 1 of 28
    assert (rows["random"]["lower"], rows["random"]["higher"], rows["random"]["p"]) == (0, 0, 1.0)

    (tmp_path / "a.md").write_text(output(a))
    (tmp_path / "b.md").write_text(output(b))
    cmp.main([str(tmp_path / "a.md"), str(tmp_path / "b.md")])
    assert "| attention head | 7 | 0.400 | 0.316 | 6 | 1 | 0.0312 |" in capsys.readouterr().out


def test_unknown_metric_names_the_columns(cmp):
    with pytest.raises(SystemExit, match="no column 'P@1'.*long P@L/5"):
        cmp.per_protein(output({"m": [0.1]}), "P@1")


def test_missing_file_is_an_error_not_a_traceback(cmp, tmp_path):
    (tmp_path / "a.md").write_text(output({"m": [0.1]}))
    with pytest.raises(SystemExit, match="no such file: .*nope.md"):
        cmp.main([str(tmp_path / "a.md"), str(tmp_path / "nope.md")])
