"""Fitting the attention contact head: the pair dataset and the L1 logistic regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protlm.contacts.fit import MIN_SEP, fit_regression, pair_dataset
from protlm.errors import InputError
from protlm.models.heads import ContactPredictionHead

PLANTED_W = np.array([3.0, 0, 0, -2.0, 0, 0, 0, 0])  # two features carry the signal, six are noise
PLANTED_B = -1.0


def planted(n: int = 2000, noise: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a known logistic-like model: y = [x . w + b + noise > 0]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, PLANTED_W.size))
    y = (x @ PLANTED_W + PLANTED_B + noise * rng.standard_normal(n) > 0).astype(np.int64)
    return x, y


def test_recovers_the_planted_direction_and_drops_the_noise_features():
    x, y = planted()
    weight, bias = fit_regression(x, y)
    assert weight.shape == (1, PLANTED_W.size) and bias.shape == (1,)
    assert weight.dtype == bias.dtype == torch.float32
    w = weight[0].double().numpy()
    assert w @ PLANTED_W / np.linalg.norm(w) / np.linalg.norm(PLANTED_W) > 0.99
    noise = np.flatnonzero(PLANTED_W == 0)
    assert np.abs(w[noise]).max() < 0.02 * np.abs(w).max()
    # the boundary x . w + b = 0 is the planted one: the same intercept relative to the slope
    assert bias.item() / w[0] == pytest.approx(PLANTED_B / PLANTED_W[0], rel=0.1)


def test_the_fitted_tensors_are_the_contact_heads_regression():
    """weight (1, layers x heads) and bias (1,) load into ContactPredictionHead.regression as they
    are, and that linear layer then classifies the training pairs."""
    x, y = planted()
    weight, bias = fit_regression(x, y)
    head = ContactPredictionHead(num_layers=2, num_heads=4, eos_idx=2)
    head.regression.load_state_dict({"weight": weight, "bias": bias})
    with torch.no_grad():
        p = torch.sigmoid(head.regression(torch.from_numpy(x).float()))[:, 0].numpy()
    assert ((p > 0.5) == (y == 1)).mean() > 0.95


def test_smaller_C_keeps_fewer_features():
    """C is the inverse L1 strength: from no feature at all, through the two that carry the signal,
    to all of them."""
    x, y = planted()
    kept = {C: set(np.flatnonzero(fit_regression(x, y, C=C)[0][0].numpy())) for C in (1e-3, 1e-2, 0.15, 10.0)}
    assert kept[1e-3] == set() and kept[1e-2] == {0, 3}
    assert kept[1e-3] <= kept[1e-2] <= kept[0.15] <= kept[10.0]


def test_same_data_same_fit():
    x, y = planted()
    a, b = fit_regression(x, y, seed=3), fit_regression(x, y, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_refuses_what_it_cannot_fit():
    x, y = planted(n=50)
    with pytest.raises(InputError, match="--C must be positive, got 0"):
        fit_regression(x, y, C=0)
    with pytest.raises(InputError, match="both contacts and non-contacts"):
        fit_regression(x, np.zeros(50, dtype=np.int64))


def test_pair_dataset_takes_observed_pairs_at_least_min_sep_apart():
    L, X = 10, 3
    features = torch.arange(X * L * L, dtype=torch.float32).reshape(X, L, L)
    contacts = np.zeros((L, L), dtype=np.int64)
    contacts[0, 7] = contacts[2, 9] = 1
    contacts[1, 8] = -1  # unobserved (e.g. a residue missing from the structure)
    x, y = pair_dataset(features, contacts)
    pairs = [(i, j) for i in range(L) for j in range(i + MIN_SEP, L) if (i, j) != (1, 8)]
    assert len(pairs) == len(y) == x.shape[0] and x.shape[1] == X and x.dtype == np.float64
    assert y.tolist() == [int((i, j) in ((0, 7), (2, 9))) for i, j in pairs]
    assert x.tolist() == [[float(features[k, i, j]) for k in range(X)] for i, j in pairs]
