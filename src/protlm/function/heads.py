"""Function-prediction heads on pooled embeddings: fitted with scikit-learn, stored without pickle.

Every head is a standardiser followed by dense layers (one for ridge/logistic, two for the MLP),
so a fitted sklearn estimator is reduced to arrays (safetensors) + JSON and predicted with numpy.
Loading a head therefore never executes code from the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from protlm.errors import InputError

HEADS = ("ridge", "logistic", "mlp")
TASKS = ("regression", "classification")


@dataclass
class Head:
    kind: str  # ridge | logistic | mlp
    task: str  # regression | classification
    mean_D: np.ndarray
    scale_D: np.ndarray
    weights: list[np.ndarray]  # per layer (D_in, D_out); hidden layers use ReLU
    biases: list[np.ndarray]
    classes: list[str] = field(default_factory=list)  # classification only, sklearn's order

    def decision(self, x_ND: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, K) raw outputs of the last layer."""
        h = (np.asarray(x_ND, dtype=np.float64) - self.mean_D) / self.scale_D
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h

    def predict(self, x_ND: np.ndarray) -> np.ndarray:
        """Regression: (N,) floats. Classification: (N,) class names."""
        z = self.decision(x_ND)
        if self.task == "regression":
            return z[:, 0]
        # binary sklearn models have one output: positive score means classes[1]
        idx = (z[:, 0] > 0).astype(int) if z.shape[1] == 1 else z.argmax(1)
        return np.array(self.classes, dtype=object)[idx]


def _estimator(kind: str, task: str, seed: int):
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    if kind == "ridge":
        if task != "regression":
            raise InputError("--head ridge is for regression; use logistic or mlp for classification")
        return RidgeCV(alphas=np.logspace(-2, 5, 15))  # alpha by efficient leave-one-out
    if kind == "logistic":
        if task != "classification":
            raise InputError("--head logistic is for classification; use ridge or mlp for regression")
        return LogisticRegression(max_iter=2000)
    if kind == "mlp":
        cls = MLPRegressor if task == "regression" else MLPClassifier
        # early stopping on a 10% split keeps the small-data MLP from memorising
        return cls(hidden_layer_sizes=(128,), alpha=1e-3, early_stopping=True, max_iter=500,
                   random_state=seed)
    raise InputError(f"head must be one of {HEADS}, got {kind!r}")


def fit_head(x_ND: np.ndarray, y_N: np.ndarray, kind: str, task: str, seed: int = 0) -> Head:
    """Standardise features, fit the sklearn estimator, and keep only its arrays."""
    from sklearn.preprocessing import StandardScaler

    if task not in TASKS:
        raise InputError(f"task must be one of {TASKS}, got {task!r}")
    scaler = StandardScaler().fit(x_ND)
    est = _estimator(kind, task, seed)
    y_fit = y_N.astype(str) if task == "classification" else y_N
    if task == "classification" and len(set(y_fit)) < 2:
        raise InputError("classification needs at least two classes in the training labels")
    try:
        est.fit(scaler.transform(x_ND), y_fit)
    except ValueError as e:  # scikit-learn refusing these labels (e.g. too few for early stopping)
        raise InputError(f"cannot fit a {kind} head on these {len(y_fit)} records: {e}") from None
    if kind == "mlp":
        weights = [np.asarray(w, dtype=np.float64) for w in est.coefs_]
        biases = [np.asarray(b, dtype=np.float64) for b in est.intercepts_]
    else:
        coef = np.atleast_2d(est.coef_)  # ridge: (D,) -> (1, D); logistic: (K or 1, D)
        weights = [coef.T.astype(np.float64)]
        biases = [np.atleast_1d(est.intercept_).astype(np.float64)]
    classes = [str(c) for c in est.classes_] if task == "classification" else []
    return Head(kind, task, scaler.mean_.copy(), scaler.scale_.copy(), weights, biases, classes)


def head_arrays(head: Head) -> dict[str, np.ndarray]:
    arrays = {"scaler.mean": head.mean_D, "scaler.scale": head.scale_D}
    for i, (w, b) in enumerate(zip(head.weights, head.biases)):
        arrays[f"layers.{i}.weight"] = np.ascontiguousarray(w)
        arrays[f"layers.{i}.bias"] = np.ascontiguousarray(b)
    return arrays


def head_from_arrays(arrays: dict[str, np.ndarray], kind: str, task: str, classes: list[str]) -> Head:
    n = sum(1 for k in arrays if k.endswith(".weight"))
    if n == 0 or "scaler.mean" not in arrays:
        raise InputError("head weights file has no layers or no scaler")
    return Head(kind, task, arrays["scaler.mean"], arrays["scaler.scale"],
                [arrays[f"layers.{i}.weight"] for i in range(n)],
                [arrays[f"layers.{i}.bias"] for i in range(n)], list(classes))
