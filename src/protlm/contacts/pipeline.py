"""The library behind `protlm contacts`: fit heads on structures, evaluate, predict FASTA files."""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from protlm.alphabet import Alphabet, InvalidSequenceError
from protlm.contacts.bilinear import BilinearContactHead, BilinearTrainConfig, load_bilinear, train_bilinear
from protlm.contacts.fit import fit_regression, pair_dataset
from protlm.contacts.metrics import PrecisionTable, contact_precisions
from protlm.contacts.predict import (attention_features, predict_contacts, quiet_uncalibrated, representations,
                                     warn_if_uncalibrated)
from protlm.contacts.structures import ChainStructure, StructureError, load_chain, split_spec
from protlm.errors import InputError
from protlm.io import atomic_path, atomic_write
from protlm.io import output_lock
from protlm.models.esm import ESM
from protlm.pretrained.identity import packaged_root
from protlm.pretrained.registry import REGISTRY
from protlm.runtime.options import InferenceOptions
from protlm.io import changed_records, check_changed, record_stem, sequence_hash


def load_structures(specs: Sequence[str | Path], alphabet: Alphabet) -> list[ChainStructure]:
    """Chains from 'FILE[:CHAIN]' specs, sequences checked against the model's alphabet."""
    chains = []
    for spec in specs:
        chain = load_chain(*split_spec(str(spec)))
        try:
            alphabet.clean(chain.sequence, record=f"{chain.source}:{chain.chain}")
        except InvalidSequenceError as e:  # without the unknown='X' hint: no option maps these
            raise StructureError(e.args[0]) from None
        chains.append(chain)
    return chains


def protein_chains(files: Sequence[Path], alphabet: Alphabet, skip_non_protein: bool = True) -> list[ChainStructure]:
    """The first protein chain of each file; files with no protein chain are skipped when asked."""
    out = []
    for f in files:
        try:
            out.extend(load_structures([f], alphabet))
        except StructureError as e:
            if not (skip_non_protein and "no protein chain" in str(e)):
                raise
    return out


def split_chains(chains: Sequence[ChainStructure]) -> tuple[list[ChainStructure], list[ChainStructure]]:
    """(training, held-out) chains: every 3rd chain (index 2, 5, 8, ... of the given order, e.g.
    sorted by file name) is held out. The split behind the shipped head of protlm_small."""
    return ([c for i, c in enumerate(chains) if i % 3 != 2], [c for i, c in enumerate(chains) if i % 3 == 2])


def fit_attention_head(model: ESM, alphabet: Alphabet, chains: Sequence[ChainStructure], C: float = 0.15):
    """(weight (1, X), bias (1,)) fitted on every chain's valid pairs."""
    xs, ys = zip(*(pair_dataset(attention_features(model, alphabet, c.sequence), c.contacts()) for c in chains))
    return fit_regression(np.concatenate(xs), np.concatenate(ys), C=C)


def fit_bilinear_head(model: ESM, alphabet: Alphabet, chains: Sequence[ChainStructure],
                      cfg: BilinearTrainConfig = BilinearTrainConfig(), model_name: str = "") -> BilinearContactHead:
    reps = [representations(model, alphabet, c.sequence, -1) for c in chains]
    return train_bilinear(reps, [c.contacts() for c in chains], cfg, layer=-1, model_name=model_name)


def chain_label(chain: ChainStructure) -> str:
    return f"{Path(chain.source).name.split('.')[0]}:{chain.chain}"


def evaluate(model: ESM, alphabet: Alphabet, chains: Sequence[ChainStructure],
             head: BilinearContactHead | None = None, progress: bool = False) -> PrecisionTable:
    """Per-protein precisions (short/medium/long x L, L/2, L/5) of the chosen head."""
    from tqdm import tqdm

    rows = {}
    warn_if_uncalibrated(model, head)
    with quiet_uncalibrated():
        for c in tqdm(chains, desc="contacts", unit="chain", disable=not progress, dynamic_ncols=True):
            pred_LL = predict_contacts(model, alphabet, c.sequence, head)
            rows[chain_label(c)] = {"L": len(c.sequence), **contact_precisions(pred_LL, c.contacts())}
    return PrecisionTable(rows)


def resolve_bilinear(model_path: str, head_path: str | None) -> BilinearContactHead:
    """The bilinear head at `head_path`, else the one inside the model folder (a packaged model's
    folder for its name): its `bilinear_contact/` subfolder, or the head's files beside the
    weights (how protlm_small ships it)."""
    if head_path is not None:
        return load_bilinear(head_path)
    entry = REGISTRY.get(model_path)
    if Path(model_path).is_dir():
        source = Path(model_path)
    elif entry is not None and entry.packaged:
        source = packaged_root() / entry.packaged
    else:
        raise InputError(f"--head bilinear needs --head-weights (no model folder to look in: {model_path})")
    with importlib.resources.as_file(source) as folder:
        sub = folder / "bilinear_contact"
        return load_bilinear(sub if sub.is_dir() else folder)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, arr)


# Hidden: record_stem never starts a stem with '.', so no record's `<stem>.json` can be it.
SETTINGS_FILE = ".settings.json"
LEGACY_SETTINGS_FILE = "settings.json"  # older folders; a record with ID 'settings' overwrote it


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path}: not valid JSON; use another --output folder") from None


def _check_settings(output: Path, found: dict, settings: dict) -> None:
    if found != settings:
        diff = {k: (found.get(k), v) for k, v in settings.items() if found.get(k) != v}
        raise InputError(f"{output}: holds maps made with other settings {diff} (found, asked); "
                         "use another --output folder")


def _adopt_legacy_settings(output: Path, settings: dict) -> None:
    """A folder from before SETTINGS_FILE: its settings.json is checked, then renamed (an atomic
    rename, so a kill leaves one file or the other); one that a record overwrote is refused."""
    legacy = output / LEGACY_SETTINGS_FILE
    found = _read_json(legacy)
    if "sequence_sha256" in found:  # a record's marker: the folder's settings are lost
        raise InputError(f"{output}: written by an older protlm whose record 'settings' overwrote the "
                         f"folder's {LEGACY_SETTINGS_FILE}, so what made its maps is unknown; "
                         "use another --output folder")
    _check_settings(output, found, settings)
    os.replace(legacy, output / SETTINGS_FILE)


def _claim_output(output: Path, settings: dict) -> None:
    """Record what made the maps in `output`; refuse a folder made with other settings, so a
    rerun resumes only its own work and never mixes two models' maps."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / SETTINGS_FILE
    if path.exists():
        _check_settings(output, _read_json(path), settings)
    elif (output / LEGACY_SETTINGS_FILE).exists():
        _adopt_legacy_settings(output, settings)
    else:
        atomic_write(path, json.dumps(settings))


def check_structure(records, truth: ChainStructure) -> None:
    """Every record must be `truth`'s sequence (its contacts are drawn over each map)."""
    for rec in records:
        if rec.sequence != truth.sequence:
            raise InputError(f"record {rec.id!r} (L={len(rec.sequence)}) is not the sequence of "
                             f"{truth.source}:{truth.chain} (L={len(truth.sequence)})")


def predict_fasta(model: ESM, alphabet: Alphabet, records, output: Path,
                  head: BilinearContactHead | None = None, truth: ChainStructure | None = None,
                  settings: dict | None = None, overwrite_changed: bool = False) -> Iterator[tuple[Path, bool]]:
    """Write `<stem>.npy` (L x L float32), `<stem>.png` and `<stem>.json` per record (stem:
    protlm.io.record_stem of the ID); yields (npy path, computed).

    Each file is written atomically and the JSON (ID, sequence hash, length) last, so a record
    with all three is done: a rerun after a kill skips it (computed=False). A done record whose
    sequence changed is refused before any compute, or recomputed with `overwrite_changed`.
    `settings` (model, head, ...) are recorded in `output/.settings.json` (hidden: no record's
    files can have its name), and a folder made with other settings is refused. With `truth`, its
    true contacts are drawn over every record, so every record must be the chain's sequence
    (checked before anything is written). The folder's lock (protlm.io) is held until the last
    record: a second writer fails at once.
    """
    if truth is not None:
        check_structure(records, truth)
    with output_lock(output):
        yield from _predict_locked(model, alphabet, records, output, head, truth, settings or {},
                                   overwrite_changed)


def _record_files(output: Path, rid: str) -> tuple[Path, Path, Path]:
    stem = record_stem(rid)
    return output / f"{stem}.npy", output / f"{stem}.png", output / f"{stem}.json"


def _stored_hashes(output: Path, records) -> dict[str, str | None]:
    """{id: sequence hash} of the records that have all their files."""
    stored = {}
    for rec in records:
        npy, png, marker = _record_files(output, rec.id)
        if npy.exists() and png.exists() and marker.exists():
            stored[rec.id] = json.loads(marker.read_text()).get("sequence_sha256")
    return stored


def _predict_locked(model, alphabet, records, output: Path, head, truth, settings: dict,
                    overwrite_changed: bool):
    _claim_output(output, settings)
    for tmp in output.glob(".*.tmp*"):
        tmp.unlink()  # a file cut off by a kill (protlm.io temps); ours alone while we hold the lock
    hashes = {rec.id: sequence_hash(rec.sequence) for rec in records}
    stored = _stored_hashes(output, records)
    changed = changed_records(stored, list(hashes.items()))
    check_changed(output, changed, overwrite_changed)
    done = {rid for rid in stored if rid not in changed}
    if any(rec.id not in done for rec in records):
        warn_if_uncalibrated(model, head)  # once per run, not once per map
    with quiet_uncalibrated():  # held across yields: the caller only reports paths meanwhile
        for rec in records:
            if rec.id in done:
                yield _record_files(output, rec.id)[0], False
            else:
                yield _write_record(model, alphabet, rec, output, head, truth, hashes[rec.id]), True


def _write_record(model, alphabet, rec, output: Path, head, truth, seq_hash: str) -> Path:
    """Compute and write one record's files, its marker last; returns the .npy path."""
    from protlm.contacts.plot import plot_contact_map

    npy, png, marker = _record_files(output, rec.id)
    marker.unlink(missing_ok=True)  # a record being rewritten is not done until the end
    pred_LL = predict_contacts(model, alphabet, rec.sequence, head).astype(np.float32)
    _save_npy(npy, pred_LL)
    true_LL = truth.contacts() if truth is not None else None  # same sequence: check_structure
    plot_contact_map(pred_LL, png, title=rec.id, true_LL=true_LL)
    atomic_write(marker, json.dumps({"id": rec.id, "sequence_sha256": seq_hash, "length": len(rec.sequence)}))
    return npy


def load_for_contacts(opts: InferenceOptions, head: str = "attention", head_weights: str | None = None):
    """(model, alphabet, bilinear head or None) ready to predict with the chosen head, on
    `opts.device` in `opts.dtype` (resolve the options first).

    Attention head: regression from `head_weights` if given, else `contact_regression.safetensors`
    in a protlm model folder if present, else whatever the checkpoint carries.
    """
    from protlm.pretrained.contact_regression import REGRESSION_FILE, load_contact_regression
    from protlm.pretrained.load import load_model_and_alphabet
    from protlm.runtime import precision
    from protlm.runtime.options import check_device

    model_name = opts.model
    model, alphabet = load_model_and_alphabet(model_name)
    bilinear = None
    if head == "bilinear":
        bilinear = resolve_bilinear(model_name, head_weights)
        if bilinear.config.embed_dim != model.config.embed_dim:
            raise InputError(f"the bilinear head reads {bilinear.config.embed_dim}-wide representations "
                             f"(trained on {bilinear.config.model or 'another model'}); {model_name} has "
                             f"{model.config.embed_dim}")
    elif head_weights is not None:
        load_contact_regression(model, head_weights)
    elif (Path(model_name) / REGRESSION_FILE).is_file():
        load_contact_regression(model, Path(model_name) / REGRESSION_FILE)
    # after the head is loaded: its fp32 weights go through the same cast
    model = precision.prepare_model(model, check_device(opts.device), opts.dtype, source=model_name, verbose=False)
    if bilinear is not None:
        bilinear = bilinear.to(next(model.parameters()).device)
    return model, alphabet, bilinear


def chains_from_specs(specs: Sequence[str], alphabet: Alphabet) -> list[ChainStructure]:
    """Folders give the first protein chain of each file (non-protein files skipped); FILE[:CHAIN]
    specs give that chain."""
    chains = []
    for spec in specs:
        if Path(spec).is_dir():
            from protlm.contacts.structures import structure_files

            chains.extend(protein_chains(structure_files(spec), alphabet))
        else:
            chains.extend(load_structures([spec], alphabet))
    if not chains:
        raise StructureError(f"no protein chains in {list(specs)}")
    return chains
