"""The contact head's feature functions: symmetrize (x + x^T) and the average product correction."""

from __future__ import annotations

import pytest
import torch

from protlm.models.heads import apc, symmetrize


def maps(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_symmetrize_adds_the_transpose_of_the_last_two_dimensions():
    x = maps(2, 3, 5, 5)
    y = symmetrize(x)
    for b in range(2):
        for h in range(3):
            for i in range(5):
                for j in range(5):
                    assert y[b, h, i, j] == x[b, h, i, j] + x[b, h, j, i]
    assert torch.equal(y, y.transpose(-1, -2)) and torch.equal(symmetrize(x), y)


def test_apc_subtracts_row_sum_times_column_sum_over_the_total():
    """APC(x)_ij = x_ij - (sum_k x_ik)(sum_k x_kj) / sum_kl x_kl (Dunn et al. 2008), per map."""
    x = maps(2, 4, 6, 6, seed=1)
    y = apc(x)
    for b in range(2):
        for h in range(4):
            m = x[b, h]
            total = m.sum()
            for i in range(6):
                for j in range(6):
                    want = m[i, j] - m[i, :].sum() * m[:, j].sum() / total
                    assert y[b, h, i, j].item() == pytest.approx(want.item(), abs=1e-12)
    # each map is corrected by its own sums: one map alone gives its slice of the batch
    torch.testing.assert_close(apc(x[1, 2]), y[1, 2], rtol=0, atol=1e-12)


def test_apc_removes_a_background_that_is_an_outer_product():
    """A map that is only background, x_ij = u_i v_j, has nothing left after APC, and a coupling
    added on top of such a background is what remains (up to the sums it shifts)."""
    u, v = maps(7, seed=2) + 0.1, maps(7, seed=3) + 0.1
    background = torch.outer(u, v)
    torch.testing.assert_close(apc(background), torch.zeros(7, 7, dtype=torch.float64), rtol=0, atol=1e-12)
    coupled = background.clone()
    coupled[1, 5] += 3.0
    corrected = apc(coupled)
    assert corrected.abs().argmax() == 1 * 7 + 5  # the planted pair stands out


def test_apc_keeps_a_symmetric_map_symmetric_and_its_dtype():
    x = symmetrize(maps(3, 8, 8, seed=4)).float()
    y = apc(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y, y.transpose(-1, -2))


def test_same_as_fair_esm():
    from esm.modules import apc as esm_apc, symmetrize as esm_symmetrize

    x = maps(2, 3, 9, 9, seed=5).float()
    torch.testing.assert_close(symmetrize(x), esm_symmetrize(x), rtol=0, atol=0)
    torch.testing.assert_close(apc(symmetrize(x)), esm_apc(esm_symmetrize(x)), rtol=1e-6, atol=1e-7)
