"""Where packaged weights live, and what a model name or path stands for (the key of caches and
resumable outputs)."""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path

from protlm.pretrained import registry


def packaged_root():
    """Folder of the weights shipped inside protlm (a Traversable)."""
    return importlib.resources.files("protlm") / "weights"


def model_identity(name_or_path: str) -> str:
    """What a model name or path stands for, to key caches and resumable outputs: a published
    name, or an absolute path + its newest modification time.

    Packaged weights (e.g. 'protlm_small') are keyed by a hash of their files' contents, so a
    new release of the shipped weights does not reuse vectors from the old one, while a
    reinstall of the same release (another path, new modification times) still resumes.
    """
    p = Path(name_or_path)
    entry = registry.REGISTRY.get(str(name_or_path))
    if not p.exists() and entry is not None and entry.packaged:
        p = Path(str(packaged_root() / entry.packaged))
        return f"{name_or_path}:{_contents_hash(p) if p.exists() else 'missing'}"
    if p.exists():
        files = [p, *p.glob("*")] if p.is_dir() else [p]
        newest = max(f.stat().st_mtime for f in files)
        return f"{p.resolve()}@{newest:.0f}"
    return str(name_or_path)


def _contents_hash(folder: Path) -> str:
    """SHA-256 (first 16 hex digits) over the names and bytes of a folder's files (small folders:
    the packaged weights are ~15 MB)."""
    h = hashlib.sha256()
    for f in sorted(x for x in folder.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]
