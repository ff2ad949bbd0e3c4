"""Metrics and k-fold cross-validation for function heads (pure functions over arrays)."""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from protlm.errors import InputError


def classification_metrics(y_true, y_pred) -> dict[str, float]:
    """Accuracy, macro-averaged F1 and Matthews correlation."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    y_true, y_pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
            "mcc": float(matthews_corrcoef(y_true, y_pred))}


def regression_metrics(y_true, y_pred) -> dict[str, float]:
    """Spearman and Pearson correlation, root mean squared error."""
    from scipy.stats import pearsonr, spearmanr

    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    with warnings.catch_warnings():
        # a constant prediction has no defined correlation: report NaN, not a warning per fold
        warnings.simplefilter("ignore")
        rho, r = spearmanr(y_true, y_pred)[0], pearsonr(y_true, y_pred)[0]
    return {"spearman": float(rho), "pearson": float(r),
            "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2)))}


def metrics_for(task: str, y_true, y_pred) -> dict[str, float]:
    return classification_metrics(y_true, y_pred) if task == "classification" else regression_metrics(y_true, y_pred)


def fold_indices(n: int, k: int, task: str, y=None, groups=None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs. With groups, no group is split across folds (GroupKFold);
    else stratified by class for classification, shuffled KFold for regression."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

    if k < 2:
        raise InputError(f"--folds must be at least 2, got {k}")
    labels = None
    if groups is not None:
        n_groups = len(set(groups))
        if n_groups < k:
            raise InputError(f"{n_groups} distinct groups cannot make {k} folds")
        splitter, groups = GroupKFold(n_splits=k, shuffle=True, random_state=seed), np.asarray(groups)
    elif task == "classification":
        splitter, labels = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed), np.asarray(y).astype(str)
        values, counts = np.unique(labels, return_counts=True)
        if counts.min() < k:
            hint = (" (every label is its own class: are they numbers? use --task regression)"
                    if len(values) > n // 2 else "")
            raise InputError(f"classification with {k} folds needs >= {k} records per class; "
                             f"class {str(values[counts.argmin()])!r} has {counts.min()}{hint}")
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        return list(splitter.split(np.zeros(n), labels, groups))
    except ValueError as e:  # scikit-learn's word on data too small for k folds
        raise InputError(f"cannot make {k} folds of {n} records ({e}): ask for fewer with --folds, "
                         "or give more records") from None


def cross_validate(x_ND: np.ndarray, y_N: np.ndarray, task: str,
                   fit: Callable[[np.ndarray, np.ndarray], object],
                   folds: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Fit on each training split, score the held-out split.

    `fit(x, y)` returns an object with `.predict(x)`. Returns per-fold metrics, their mean and
    standard deviation, and the out-of-fold predictions in input order.
    """
    per_fold = []
    oof = np.empty(len(y_N), dtype=object if task == "classification" else float)
    for train, test in folds:
        model = fit(x_ND[train], y_N[train])
        pred = model.predict(x_ND[test])
        oof[test] = pred
        per_fold.append(metrics_for(task, y_N[test], pred))
    names = list(per_fold[0])
    return {"folds": per_fold,
            "mean": {m: float(np.mean([f[m] for f in per_fold])) for m in names},
            "std": {m: float(np.std([f[m] for f in per_fold])) for m in names},
            "oof": oof}
