"""protlm.evaluate.published and .table: name mapping, the shipped copy of the published figures,
Markdown and CSV output."""

import csv
import io

import pytest

from protlm.evaluate.published import PUBLISHED_NAMES, published_name, published_row, published_table
from protlm.evaluate.table import format_params, lines, to_csv, to_markdown
from protlm.pretrained.registry import REGISTRY

MEAN = {f"{r} {f}": 0.1 * i for i, (r, f) in enumerate(
    (r, f) for r in ("short", "medium", "long") for f in ("P@L", "P@L/2", "P@L/5"))}
ROWS = [
    {"model": "esm2_t33_650M_UR50D", "params": 651_043_254,
     "perplexity": {"perplexity": 7.1234, "cross_entropy": 1.96, "masked_tokens": 1000, "sequences": 50},
     "contacts": {"head": "the model's own", "chains": 6, "mean": MEAN}},
    {"model": "prot_t5_xl_half_uniref50-enc", "params": 1_208_141_824, "perplexity": None,
     "contacts": None},
    {"model": "runs/my_model", "params": 7_512_474, "perplexity": None, "contacts": None},
]


def test_shipped_copy_matches_the_shared_reference(shared_data):
    ref = [ln.split("\t") for ln in (shared_data / "reference" / "plm_comparison.tsv").read_text().splitlines()
           if ln and not ln.startswith("#")]
    table = published_table()
    names = list(table)
    # the paper's rows first, unchanged; then protlm's additions: the smaller CARPs, sizes only
    assert names[: len(ref) - 1] == [r[0] for r in ref[1:]]
    for r in ref[1:]:
        assert [table[r[0]][k] or "-" for k in ref[0]] == r
    assert names[len(ref) - 1 :] == ["CARP 76M", "CARP 38M", "CARP 600K"]
    for name in names[len(ref) - 1 :]:
        assert all(not table[name][k] for k in ref[0][2:])


def test_every_published_checkpoint_of_the_table_is_in_the_registry():
    """CARP's four sizes and both ProtT5-XL models load by name and map onto their rows."""
    for name, row in {"carp_640M": "CARP", "carp_76M": "CARP 76M", "carp_38M": "CARP 38M",
                      "carp_600k": "CARP 600K", "prot_t5_xl_bfd": "Prot-T5-XL (BFD)"}.items():
        assert name in REGISTRY and published_name(name) == row
    assert published_row("carp_640M")["CASP14"] == "0.42"


def test_registry_names_map_to_published_rows():
    esm2 = [n for n in REGISTRY if n.startswith("esm2_")]
    assert len(esm2) == 6 and all(published_name(n).startswith("ESM-2 ") for n in esm2)
    assert published_row("esm2_t33_650M_UR50D")["validation_perplexity"] == "6.95"
    assert published_row("facebook/esm2_t6_8M_UR50D")["LR_P@L"] == "0.17"
    assert published_name("esm1b_t33_650M_UR50S") == "ESM-1b"
    assert published_name("prot_t5_xl_uniref50") == published_name("Rostlab/prot_t5_xl_uniref50") == "Prot-T5-XL (UR50)"
    assert published_row("prot_t5_xl_half_uniref50-enc")["LR_P@L/5"] == "0.72"
    assert set(PUBLISHED_NAMES.values()) <= set(published_table())
    # fine-tuned copies, paths and models of other data are not the published model
    for name in ("protlm_small", "runs/esm2_t6_8M_UR50D", "esm1v_t33_650M_UR90S_1"):
        assert published_row(name) is None


def test_markdown_puts_published_rows_beside_measured_ones():
    text = to_markdown(ROWS, ["² ppl note", "³ contacts note"])
    main = [ln for ln in text.splitlines() if ln.startswith("| ")][1:5]
    assert main[0].startswith("| esm2_t33_650M_UR50D | measured | 651.0M | 7.12 | 0.600 | 0.800 | —¹ | —¹ |")
    assert main[1] == "| ESM-2 650M | published | 650M | 6.95 | 0.52 | 0.79 | 0.51 | 0.70 |"
    assert main[2].startswith("| prot_t5_xl_half_uniref50-enc | measured | 1.2B | — | — | — |")
    assert main[3] == "| Prot-T5-XL (UR50) | published | 3B | — | 0.48 | 0.72 | 0.50 | 0.69 |"
    assert "| runs/my_model | measured | 7.5M | — |" in text
    second = text.split("\n\n")[1].splitlines()
    assert second[2] == "| esm2_t33_650M_UR50D | 0.000 | 0.200 | 0.300 | 0.500 | the model's own |"
    assert len(second) == 2 + 3  # measured models only
    assert "¹ CASP14 / CAMEO" in text and "² ppl note" in text and "Lin et al., Science 2023" in text
    assert "Lin et al." not in to_markdown(ROWS[2:])  # the source is named only under published rows


def test_csv_has_one_line_per_table_line_and_empty_cells_for_dashes():
    got = list(csv.DictReader(io.StringIO(to_csv(ROWS))))
    assert [(r["model"], r["source"]) for r in got] == [(ln["model"], ln["source"]) for ln in lines(ROWS)]
    assert float(got[0]["validation_perplexity"]) == 7.1234 and got[0]["masked_tokens"] == "1000"
    assert float(got[0]["long P@L/5"]) == pytest.approx(0.8) and got[0]["CASP14"] == ""
    assert got[1]["validation_perplexity"] == "6.95" and got[1]["CASP14"] == "0.51"
    assert got[2]["validation_perplexity"] == "" and got[2]["long P@L"] == ""


def test_format_params():
    assert [format_params(n) for n in (7_512_474, 651_043_254, 2_838_000_000, 999)] == ["7.5M", "651.0M", "2.8B", "999"]
