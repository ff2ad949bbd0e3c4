"""Fitting the attention contact head: L1 logistic regression on attention features (ESM-1b).

The fitted weights are exactly the contact head's `regression` tensors; they are written and read
by protlm.pretrained.contact_regression (fair-esm's `-contact-regression.pt` layout, or
safetensors inside a protlm model folder).
"""

from __future__ import annotations


import numpy as np
import torch

from protlm.errors import InputError

MIN_SEP = 6  # pairs closer in sequence are not features (as in the ESM-1b paper's training)


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
