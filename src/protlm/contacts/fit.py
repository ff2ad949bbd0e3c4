"""Fitting the attention contact head: L1 logistic regression on attention features (ESM-1b).

The fitted weights are exactly the contact head's `regression` tensors, so they are saved as
fair-esm's `-contact-regression.pt` layout ({'model': {'contact_head.regression.weight': (1, X),
'contact_head.regression.bias': (1,)}}) or as safetensors inside a protlm model folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from protlm.contacts import bilinear
from protlm.errors import InputError, NotFoundError
from protlm.io import atomic_path
from protlm.models.esm import ESM
from protlm.pretrained.load import CheckpointError, load_safetensors, safe_torch_load

MIN_SEP = 6  # pairs closer in sequence are not features (as in the ESM-1b paper's training)
REGRESSION_FILE = "contact_regression.safetensors"
KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")


def pair_dataset(features_XLL: torch.Tensor, contacts_LL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_pairs, X) features and (n_pairs,) labels over i<j, j-i >= MIN_SEP, both observed."""
    L = contacts_LL.shape[0]
    i, j = np.triu_indices(L, MIN_SEP)
    y = contacts_LL[i, j]
    keep = y >= 0
    x_PX = features_XLL[:, i[keep], j[keep]].T.numpy().astype(np.float64)
    return x_PX, y[keep].astype(np.int64)


def fit_regression(x_PX: np.ndarray, y_P: np.ndarray, C: float = 0.15, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """L1-penalised logistic regression -> (weight (1, X), bias (1,)) float32 tensors.

    C is the inverse penalty strength; L1 keeps only the heads that carry contact signal.
    """
    from sklearn.linear_model import LogisticRegression

    if C <= 0:
        raise InputError(f"--C must be positive, got {C}")
    if len(np.unique(y_P)) < 2:
        raise InputError("training pairs need both contacts and non-contacts")
    # l1_ratio=1 is the pure L1 penalty (scikit-learn >= 1.8 spelling of penalty="l1").
    clf = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", max_iter=1000, random_state=seed)
    clf.fit(x_PX, y_P)
    return (torch.tensor(clf.coef_, dtype=torch.float32),
            torch.tensor(clf.intercept_, dtype=torch.float32))


def save_regression(weight: torch.Tensor, bias: torch.Tensor, path: str | Path) -> Path:
    """`.pt` (fair-esm's regression layout) or `.safetensors` (or a folder: REGRESSION_FILE in it)."""
    path = Path(path)
    if path.is_dir():
        path = path / REGRESSION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {KEYS[0]: weight.detach().float().reshape(1, -1).contiguous(),
             KEYS[1]: bias.detach().float().reshape(1).contiguous()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state, tmp)
        else:
            torch.save({"model": state}, tmp)
    return path


def read_regression(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a regression file without running code (safetensors or torch.load(weights_only=True))."""
    path = Path(path)
    if path.is_dir():
        path = path / REGRESSION_FILE
    if not path.is_file():
        err = NotFoundError(f"contact regression file not found: {path}")
        if (path.parent / bilinear.CONFIG_FILE).is_file():  # a bilinear head's folder, read as the attention one's
            err.hint = f"{path.parent} holds a bilinear head: load it with load_bilinear"
            err.cli_hint = f"{path.parent} holds a bilinear head: add --head bilinear"
        raise err
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        obj = safe_torch_load(path)
        state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        raise CheckpointError(f"{path}: not a contact-regression file (needs {list(KEYS)})")
    return {k: state[k] for k in KEYS}


def load_contact_regression(model: ESM, path: str | Path) -> ESM:
    """Load fitted regression tensors into `model.contact_head` (shapes checked)."""
    state = read_regression(path)
    head = model.contact_head.regression
    want = {KEYS[0]: tuple(head.weight.shape), KEYS[1]: tuple(head.bias.shape)}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        raise CheckpointError(f"{path}: regression shapes {got} do not fit this model's contact head {want}")
    return set_regression(model, state[KEYS[0]], state[KEYS[1]])


def set_regression(model: ESM, weight: torch.Tensor, bias: torch.Tensor) -> ESM:
    """Put fitted (1, X) weight and (1,) bias into `model.contact_head`; it counts as fitted."""
    head = model.contact_head.regression
    with torch.no_grad():
        head.weight.copy_(weight.reshape(head.weight.shape))
        head.bias.copy_(bias.reshape(head.bias.shape))
    model.contact_head.fitted = True
    return model
