"""`protlm evaluate`: models -> one row each (parameters, perplexity, contact precision), resumable.

Each finished model's row is written atomically to `OUTPUT.parts/<stem>.json` with the key of
what produced it (the model's identity, the inputs' contents, the options that change a figure);
a rerun reuses a row whose key matches, so a killed evaluation never redoes finished models, and
recomputes one whose inputs changed. The output's lock (protlm.io) is held throughout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from protlm.alphabet import Alphabet
from protlm.contacts.structures import ChainStructure
from protlm.evaluate.contacts import DEFAULT_C, contact_precision, heads_file
from protlm.evaluate.perplexity import DEFAULT_MAX_LENGTH, DEFAULT_SEED, MaskPlan, masked_perplexity, subsample
from protlm.evaluate.table import DASH
from protlm.io import atomic_write, output_lock, record_stem, stale_temps
from protlm.runtime.options import InferenceOptions


@dataclass(frozen=True)
class EvalSettings:
    """The inputs and options of one evaluation (those that change a figure make the part key)."""

    perplexity_fasta: str | None = None
    structures: str | None = None
    heads: str | None = None
    seed: int = DEFAULT_SEED
    max_sequences: int | None = None
    mask_prob: float = 0.15
    C: float = DEFAULT_C


@dataclass
class EvalData:
    """What every model is evaluated on, read once: sequences and (training, held-out) chains."""

    sequences: list[str]
    train: list[ChainStructure]
    held: list[ChainStructure]


def load_data(s: EvalSettings, unknown: str | None = None) -> EvalData:
    """Sequences (cleaned, subsampled; `unknown` as in read_fasta) and the split structure chains."""
    from protlm.contacts import pipeline
    from protlm.contacts.structures import structure_files
    from protlm.data.fasta import load_fasta

    alphabet, seqs, train, held = Alphabet(), [], [], []
    if s.perplexity_fasta:
        seqs = [r.sequence for r in load_fasta(s.perplexity_fasta, alphabet=alphabet, unknown=unknown)]
        seqs = [seqs[i] for i in subsample(seqs, s.max_sequences)]
    if s.structures:
        train, held = pipeline.split_chains(pipeline.protein_chains(structure_files(s.structures), alphabet))
    return EvalData(seqs, train, held)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def part_key(name: str, s: EvalSettings, opts: InferenceOptions = InferenceOptions()) -> str:
    """SHA-256 of what a model's row depends on: model identity, input contents, options (not
    the device or the batch size, which change no figure)."""
    from protlm.contacts.structures import structure_files
    from protlm.pretrained.identity import model_identity

    heads = heads_file(s.heads, name) if s.heads else None
    what = {
        "model": model_identity(name),
        "perplexity": _file_digest(Path(s.perplexity_fasta)) if s.perplexity_fasta else None,
        "structures": ({p.name: _file_digest(p) for p in structure_files(s.structures)}
                       if s.structures else None),
        "heads": _file_digest(heads) if heads is not None and heads.is_file() else
                 (model_identity(str(heads)) if heads is not None else None),
        **{k: v for k, v in asdict(s).items() if k not in ("perplexity_fasta", "structures", "heads")},
        "unknown": opts.unknown,
        **({"dtype": opts.dtype} if opts.dtype != "fp32" else {}),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def evaluate_model(model, alphabet: Alphabet, name: str, data: EvalData, s: EvalSettings,
                   save_head: Path | None = None, progress: bool = False, toks_per_batch: int = 4096) -> dict:
    """One model's row: {'model', 'params', 'perplexity': dict | None, 'contacts': dict | None}.

    'perplexity' is None without an MLM head or without sequences; 'contacts' is None without an
    attention contact head or without structures.
    """
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()),
           "perplexity": None, "contacts": None}
    if data.sequences:
        plan = MaskPlan(data.sequences, s.seed, getattr(getattr(model, "config", None), "max_sequence_length",
                                                        DEFAULT_MAX_LENGTH), s.mask_prob, toks_per_batch)
        row["perplexity"] = masked_perplexity(model, alphabet, plan, progress)
    if data.held:
        row["contacts"] = contact_precision(model, alphabet, name, data.train, data.held,
                                            Path(s.heads) if s.heads else None, save_head, s.C, progress)
    return row


def parts_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".parts")


def render(rows: Sequence[dict], s: EvalSettings, data: EvalData, fmt: str) -> str:
    """The table of `rows` as 'md' (with notes naming the data) or 'csv'."""
    from protlm.evaluate.table import to_csv, to_markdown

    if fmt == "csv":
        return to_csv(rows)
    tokens = {r["perplexity"]["masked_tokens"] for r in rows if r.get("perplexity")}
    ppl = (f"² exp(mean cross-entropy) over the masked positions of {len(data.sequences)} sequences of "
           f"{s.perplexity_fasta} ({', '.join(map(str, sorted(tokens))) or 'no'} positions; {s.mask_prob:.0%} "
           f"of residues, 80/10/10 mask/random/keep, seed {s.seed}, fixed per sequence); "
           f"{DASH} for a model without an MLM head." if data.sequences else f"² {DASH}: no --perplexity FASTA given.")
    con = (f"³ Mean over {len(data.held)} held-out chains of {s.structures} (every 3rd by file name: "
           f"{_labels(data.held)}); a model without a fitted attention head gets one fitted on the other "
           f"{len(data.train)} chains; a model without attention (CARP) a bilinear head fitted on them." if data.held
           else f"³ {DASH}: no --structures folder given.")
    return to_markdown(rows, [ppl, con])


def check_model_names(models: Sequence[str]) -> None:
    """Every model is a path that exists or a published name (with a suggestion if misspelt),
    checked before the first is evaluated, not after it."""
    from protlm.errors import NotFoundError
    from protlm.pretrained import registry

    for name in models:
        if Path(name).exists() or name in registry.REGISTRY or registry.by_hf_repo(name):
            continue
        if "/" in name or "\\" in name or name.endswith(".pt"):
            raise NotFoundError(f"--models: no such checkpoint: {name}")
        registry.get(name)  # raises, listing the published names


def run_evaluation(models: Sequence[str], s: EvalSettings, output: str | Path, opts: InferenceOptions | None = None,
                   fmt: str = "md", echo: Callable[[str], None] = print, loader: Callable | None = None) -> str:
    """Evaluate `models` in order, resuming from OUTPUT.parts, and write the table to `output`;
    returns it as Markdown. `opts` (its model unused): device, precision, batch size, progress,
    unknown characters.

    `loader(name)` -> (model, alphabet): protlm's loader by default.
    A head fitted here is saved as OUTPUT.parts/<stem>.safetensors (reusable with --heads).
    """
    if loader is None:
        check_model_names(models)
    opts = (opts or InferenceOptions()).resolved()
    data = load_data(s, opts.unknown)
    if data.held:
        echo(f"contacts: scored on {len(data.held)} held-out chains ({_labels(data.held)}); heads fitted "
             f"here use the other {len(data.train)} ({_labels(data.train)})")
    with output_lock(output):
        rows = [_model_row(name, s, opts, data, parts_dir(output), echo, loader) for name in models]
        atomic_write(output, render(rows, s, data, fmt))
    return render(rows, s, data, "md")


def _model_row(name: str, s: EvalSettings, opts: InferenceOptions, data: EvalData, parts: Path, echo,
               loader) -> dict:
    """The row of one model: from its part file when the key matches, else computed and saved."""
    parts.mkdir(parents=True, exist_ok=True)
    path = parts / f"{record_stem(name)}.json"
    for tmp in stale_temps(path):
        tmp.unlink()  # cut off by a kill; ours alone while we hold the lock
    key = part_key(name, s, opts)
    if path.is_file():
        found = json.loads(path.read_text())
        if found.get("key") == key:
            echo(f"{name}: done in an earlier run ({path}), not recomputed")
            return found["row"]
    echo(f"{name}: evaluating")
    model, alphabet = dataclasses.replace(opts, model=name).load(loader, verbose=False)
    row = evaluate_model(model, alphabet, name, data, s, parts / f"{record_stem(name)}.safetensors",
                         opts.progress, opts.toks_per_batch)
    atomic_write(path, json.dumps({"key": key, "row": row}, indent=1))
    return row


def _labels(chains: Sequence[ChainStructure]) -> str:
    from protlm.contacts.pipeline import chain_label

    return ", ".join(chain_label(c) for c in chains)
