"""Quantized weights cached on disk, so that a second `--dtype int8` run does not quantize again.

Where: beside the model when it is a folder or file the user can write to
(`<folder>.int8.safetensors` next to the folder, not in it, so that the folder's identity,
which keys embedding caches, does not change; `<file stem>.int8.safetensors`); in protlm's cache folder
(`$PROTLM_CACHE`, else `$XDG_CACHE_HOME/protlm`, else `~/.cache/protlm`) under `int8/` for
packaged and published models and read-only places.

Keyed by the source weights: the name, size and modification time (ns) of every weight file,
stored in the file's metadata with the quantizer's version. A changed model no longer matches
and is quantized again (the file is overwritten); a cache that cannot be read or does not fit
the model is ignored the same way. Files land atomically (protlm.io.atomic_path).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from protlm.io import atomic_path
from protlm.models.int8 import quantize_

FORMAT = "protlm-int8"
VERSION = "2"  # 2: 7-bit weights (models/int8.QMAX). Bump when quantize_weight changes: older files are then quantized again
CACHE_ENV = "PROTLM_CACHE"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin", ".json")


def cache_root() -> Path:
    """protlm's cache folder ($PROTLM_CACHE, $XDG_CACHE_HOME/protlm or ~/.cache/protlm)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "protlm"


def source_files(name_or_path: str | Path) -> list[Path]:
    """The files holding a model's weights: a path as given, a packaged or cached published model;
    [] when `name_or_path` names no files (e.g. a model built in memory)."""
    from protlm.pretrained import download, registry
    from protlm.pretrained.identity import packaged_root

    p = Path(name_or_path)
    if not p.exists() and str(name_or_path) in registry.REGISTRY:
        entry = registry.REGISTRY[str(name_or_path)]
        p = Path(str(packaged_root() / entry.packaged)) if entry.packaged else download.resolve(entry)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    return [p] if p.is_file() else []


def source_key(files: list[Path]) -> str:
    """A digest of (name, size, mtime ns) per file and the quantizer version."""
    h = hashlib.sha256(f"{FORMAT}:{VERSION}".encode())
    for f in files:
        st = f.stat()
        h.update(f"\0{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_path(name_or_path: str | Path) -> Path:
    """Where the int8 weights of this model are cached (see the module docstring)."""
    from protlm.pretrained import registry

    p = Path(name_or_path)
    if p.exists() and str(name_or_path) not in registry.REGISTRY:
        p = p.resolve()
        beside = p.with_name((p.name if p.is_dir() else p.stem) + ".int8.safetensors")
        if os.access(beside.parent, os.W_OK) and (not beside.exists() or os.access(beside, os.W_OK)):
            return beside
        stem = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16] + "-" + p.stem
    else:
        stem = str(name_or_path)
    return cache_root() / "int8" / (re.sub(r"[^A-Za-z0-9._-]", "_", stem) + ".safetensors")


def _read(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The cached state if `path` holds one for `key`, else None."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("source_key") != key:
            return None
        return load_file(str(path))
    except (OSError, SafetensorError):
        return None


def quantize_cached(model, name_or_path: str | Path | None, verbose: bool = True) -> bool:
    """Quantize `model` in place (protlm.models.int8.quantize_), reading the int8 weights from the
    cache when they were computed from the same source files, else writing them there.

    `name_or_path` None: quantize without a cache. Returns True when the cache was used.
    """
    files = source_files(name_or_path) if name_or_path is not None else []
    if not files:
        quantize_(model)
        return False
    key, path = source_key(files), cache_path(name_or_path)
    stored = _read(path, key) if path.is_file() else None
    if stored is not None:
        try:
            quantize_(model, stored)
            return True
        except (KeyError, ValueError):  # another architecture under the same name: quantize again
            pass
    state = quantize_(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(state, tmp, metadata={"format": FORMAT, "version": VERSION, "source_key": key,
                                            "source": json.dumps([str(f) for f in files])})
        if verbose:
            print(f"int8: quantized weights cached in {path}", file=sys.stderr, flush=True)
    except OSError as e:  # a cache we cannot write costs time on the next run, nothing else
        print(f"warning: could not cache int8 weights in {path}: {e}", file=sys.stderr, flush=True)
    return False
