"""The published comparison table (Lin et al., Science 2023) and which protlm names it covers."""

from __future__ import annotations

import csv
import functools
import importlib.resources

TABLE_FILE = "published_plm_comparison.tsv"
SOURCE = "Lin et al., Science 2023 (ESM-2 paper), as quoted in the ESM-1b material"

# model name as protlm loads it -> row of the published table. Exact names only: a checkpoint
# path or a fine-tuned copy is not the published model, whatever its file is called.
PUBLISHED_NAMES = {
    "esm2_t6_8M_UR50D": "ESM-2 8M",
    "esm2_t12_35M_UR50D": "ESM-2 35M",
    "esm2_t30_150M_UR50D": "ESM-2 150M",
    "esm2_t33_650M_UR50D": "ESM-2 650M",
    "esm2_t36_3B_UR50D": "ESM-2 3B",
    "esm2_t48_15B_UR50D": "ESM-2 15B",
    "esm1b_t33_650M_UR50S": "ESM-1b",
    "prot_t5_xl_uniref50": "Prot-T5-XL (UR50)",
    "prot_t5_xl_half_uniref50-enc": "Prot-T5-XL (UR50)",
    "prot_t5_xl_bfd": "Prot-T5-XL (BFD)",
    "carp_640M": "CARP",
    "carp_76M": "CARP 76M",
    "carp_38M": "CARP 38M",
    "carp_600k": "CARP 600K",
}
HUB_OWNERS = ("facebook/", "Rostlab/")  # the same models under their Hugging Face hub ids (CARP has none)


@functools.lru_cache(maxsize=1)
def published_table() -> dict[str, dict[str, str]]:
    """{published model name: {column: text}} with '-' (not reported) as ''."""
    text = (importlib.resources.files("protlm.evaluate") / TABLE_FILE).read_text()
    rows = csv.DictReader((line for line in text.splitlines() if not line.startswith("#")), delimiter="\t")
    return {r["model"]: {k: ("" if v == "-" else v) for k, v in r.items()} for r in rows}


def published_name(model: str) -> str | None:
    """The published table's name for a protlm model name, or None."""
    for owner in HUB_OWNERS:
        model = model.removeprefix(owner)
    return PUBLISHED_NAMES.get(model)


def published_row(model: str) -> dict[str, str] | None:
    """The published figures of `model` ({column: text}), or None when it is not in the table."""
    name = published_name(model)
    return None if name is None else published_table()[name]
