"""Rows of `protlm evaluate` -> the comparison tables (Markdown with notes, or CSV).

Each measured model gives one line; a model of the published table (Lin et al., Science 2023)
gets the published figures on the line below it, marked "published". "—" marks what is not
measured (or not reported): CASP14 / CAMEO always (they need a folding trunk), perplexity for a
model without an MLM head.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from protlm.evaluate.published import SOURCE, TABLE_FILE, published_name, published_row

DASH = "—"
RANGES = ("short", "medium", "long")
FRACTIONS = ("P@L", "P@L/5")
CSV_COLUMNS = ["model", "source", "params", "validation_perplexity", "masked_tokens",
               *(f"{r} {f}" for r in RANGES[::-1] for f in FRACTIONS), "CASP14", "CAMEO", "contact_head"]


def format_params(n: int) -> str:
    """7_840_000 -> '7.8M', as the published table writes sizes."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def lines(rows: Sequence[dict]) -> list[dict]:
    """Flat lines, one per measured model plus one per published match: {column: value or None}."""
    out = []
    for row in rows:
        ppl, con = row.get("perplexity"), row.get("contacts")
        mean = con["mean"] if con else {}
        out.append({"model": row["model"], "source": "measured", "params": row["params"],
                    "validation_perplexity": ppl["perplexity"] if ppl else None,
                    "masked_tokens": ppl["masked_tokens"] if ppl else None,
                    **{f"{r} {f}": mean.get(f"{r} {f}") for r in RANGES for f in FRACTIONS},
                    "CASP14": None, "CAMEO": None, "contact_head": con["head"] if con else None})
        pub = published_row(row["model"])
        if pub is not None:
            out.append({"model": published_name(row["model"]), "source": "published", "params": pub["params"],
                        "validation_perplexity": pub["validation_perplexity"] or None, "masked_tokens": None,
                        "long P@L": pub["LR_P@L"] or None, "long P@L/5": pub["LR_P@L/5"] or None,
                        "CASP14": pub["CASP14"] or None, "CAMEO": pub["CAMEO"] or None})
    return out


def _cell(v, digits: int) -> str:
    if v is None:
        return DASH
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body)]


def to_markdown(rows: Sequence[dict], notes: Sequence[str] = ()) -> str:
    """Two tables (main; short- and medium-range contacts) and their notes."""
    ls = lines(rows)
    main = [[ln["model"], ln["source"], format_params(ln["params"]) if isinstance(ln["params"], int) else ln["params"],
             _cell(ln["validation_perplexity"], 2), _cell(ln["long P@L"], 3), _cell(ln["long P@L/5"], 3),
             _cell(ln["CASP14"], 2) + ("¹" if ln["source"] == "measured" else ""),
             _cell(ln["CAMEO"], 2) + ("¹" if ln["source"] == "measured" else "")] for ln in ls]
    second = [[ln["model"], *(_cell(ln[f"{r} {f}"], 3) for r in ("short", "medium") for f in FRACTIONS),
               ln["contact_head"] or DASH] for ln in ls if ln["source"] == "measured"]
    text = _md_table(["model", "source", "params", "validation perplexity²", "long-range P@L³", "long-range P@L/5³",
                      "CASP14", "CAMEO"], main)
    text += ["", *_md_table(["model", "short P@L³", "short P@L/5³", "medium P@L³", "medium P@L/5³",
                             "contact head"], second)]
    notes = ["¹ CASP14 / CAMEO are TM-scores of a structure-prediction trunk trained on the language "
             "model; there is none in protlm, so they are not measured.", *notes]
    if any(ln["source"] == "published" for ln in ls):
        notes.append(f"Published rows: {SOURCE} (protlm/evaluate/{TABLE_FILE}); their perplexity and "
                     "contacts are measured on other data (UniRef50 validation, their structure test set), "
                     "so compare the measured rows with each other and the published ones as a scale.")
    return "\n".join(text) + "\n\n" + "\n\n".join(notes) + "\n"  # a paragraph per note


def to_csv(rows: Sequence[dict]) -> str:
    """One CSV line per table line; empty cells where the Markdown shows '—'."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for ln in lines(rows):
        w.writerow({k: "" if ln.get(k) is None else ln[k] for k in CSV_COLUMNS})
    return buf.getvalue()
