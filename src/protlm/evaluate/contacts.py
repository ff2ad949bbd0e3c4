"""Contact precision for `protlm evaluate`: which attention head, fitted on what, scored where.

The structures are split once (protlm.contacts.pipeline.split_chains: every 3rd chain by file
name held out) and every model is scored on the held-out chains only. The head is, in order:
a pre-fitted regression given for the model (`heads` folder), the model's own fitted head
(`contact_head.fitted`, set by the loaders), or an L1 logistic regression fitted here on the
training chains, as `protlm contacts fit` does. A model without attention (CARP) is scored with
the bilinear head on its last representation instead: pre-fitted (`heads/<stem>.bilinear/`) or
fitted here on the same training chains (`protlm contacts fit --head bilinear`'s defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from protlm.alphabet import Alphabet
from protlm.contacts import pipeline
from protlm.pretrained.contact_regression import load_contact_regression, save_regression, set_regression
from protlm.contacts.structures import ChainStructure
from protlm.io import record_stem

DEFAULT_C = 0.15  # as `protlm contacts fit`


def has_attention_contact_head(model: torch.nn.Module) -> bool:
    """True when the model has protlm's attention contact head (an ESM model); others get '—'."""
    return getattr(model, "contact_head", None) is not None


def heads_file(folder: str | Path, model: str) -> Path | None:
    """The pre-fitted regression for `model` in `folder`: `<stem>.safetensors`, `<stem>.pt` or a
    folder `<stem>/` holding contact_regression.safetensors, where stem is record_stem of the
    model argument as given, or of its last path component; None when there is none."""
    folder = Path(folder)
    for stem in dict.fromkeys([record_stem(model), record_stem(Path(model).name or model)]):
        for path in (folder / f"{stem}.safetensors", folder / f"{stem}.pt", folder / stem):
            if path.is_file() or (path / "contact_regression.safetensors").is_file():
                return path
    return None


def choose_head(model, alphabet: Alphabet, name: str, train: Sequence[ChainStructure],
                heads: Path | None, save_fitted: Path | None, C: float = DEFAULT_C) -> str:
    """Put the head to score into `model.contact_head` (see the module docstring); returns what
    it is, in words. A head fitted here is saved to `save_fitted` when given."""
    given = heads_file(heads, name) if heads is not None else None
    if given is not None:
        load_contact_regression(model, given)
        return f"pre-fitted ({given})"
    if getattr(model.contact_head, "fitted", False):
        return "the model's own"
    weight, bias = pipeline.fit_attention_head(model, alphabet, train, C=C)
    set_regression(model, weight, bias)
    if save_fitted is not None:
        save_regression(weight, bias, save_fitted)
    return f"fitted here on {len(train)} training chains (C={C})"


def contact_precision(model, alphabet: Alphabet, name: str, train: Sequence[ChainStructure],
                      held: Sequence[ChainStructure], heads: Path | None = None,
                      save_fitted: Path | None = None, C: float = DEFAULT_C,
                      progress: bool = False) -> dict | None:
    """{'head': words, 'chains': n, 'mean': {'long P@L': ..., ...}} on the held-out chains;
    a model without an attention contact head is scored with a bilinear head."""
    if not has_attention_contact_head(model):
        return bilinear_precision(model, alphabet, name, train, held, heads, save_fitted, progress)
    head = choose_head(model, alphabet, name, train, heads, save_fitted, C)
    table = pipeline.evaluate(model, alphabet, held, progress=progress)
    return {"head": head, "chains": len(held), "mean": table.mean()}


def bilinear_precision(model, alphabet: Alphabet, name: str, train: Sequence[ChainStructure],
                       held: Sequence[ChainStructure], heads: Path | None = None,
                       save_fitted: Path | None = None, progress: bool = False) -> dict:
    """As `contact_precision`, with a bilinear head (for models without attention, e.g. CARP):
    `heads/<stem>.bilinear/` when given, else fitted on `train` and saved to
    `save_fitted` with the suffix `.bilinear` (a folder) when given."""
    from protlm.contacts.bilinear import CONFIG_FILE, load_bilinear, save_bilinear

    stems = dict.fromkeys([record_stem(name), record_stem(Path(name).name or name)])  # as heads_file
    found = [heads / f"{s}.bilinear" for s in stems] if heads is not None else []
    given = next((f for f in found if (f / CONFIG_FILE).is_file()), None)
    if given is not None:
        head, words = load_bilinear(given), f"bilinear, pre-fitted ({given})"
    else:
        head = pipeline.fit_bilinear_head(model, alphabet, train, model_name=name)
        words = f"bilinear (no attention), fitted here on {len(train)} training chains"
        if save_fitted is not None:
            save_bilinear(head, save_fitted.with_suffix(".bilinear"))
    table = pipeline.evaluate(model, alphabet, held, head=head, progress=progress)
    return {"head": words, "chains": len(held), "mean": table.mean()}
