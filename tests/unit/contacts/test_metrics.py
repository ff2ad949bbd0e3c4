"""Contact precision on hand-made maps with exactly known answers."""

import numpy as np
import pytest

from protlm.contacts.metrics import PrecisionTable, contact_precisions, precision_at


def _long_range_case():
    """L=30: 21 long-range pairs (j-i >= 24); the 6 best-scored hold 3 contacts."""
    L = 30
    truth = np.zeros((L, L), np.int8)
    scores = np.zeros((L, L))
    pairs = [(i, j) for i in range(L) for j in range(i + 24, L)]
    assert len(pairs) == 21
    for rank, (i, j) in enumerate(pairs):
        scores[i, j] = scores[j, i] = 100 - rank  # ranked in list order
    for i, j in [pairs[0], pairs[2], pairs[4]]:
        truth[i, j] = truth[j, i] = 1
    return scores, truth


def test_long_range_precisions_exact():
    scores, truth = _long_range_case()
    p = contact_precisions(scores, truth)
    assert p["long P@L/5"] == pytest.approx(3 / 6)  # k = 6: ranks 0..5 hold 3 contacts
    assert p["long P@L/2"] == pytest.approx(3 / 15)  # k = 15
    assert p["long P@L"] == pytest.approx(3 / 30)  # only 21 valid pairs: the missing 9 count as wrong
    assert p["short P@L"] == 0.0 and p["medium P@L/5"] == 0.0


def test_k_and_ranges():
    L = 10
    truth = np.zeros((L, L), np.int8)
    truth[0, 6] = truth[6, 0] = 1  # separation 6: short range
    scores = np.zeros((L, L))
    scores[0, 6] = scores[6, 0] = 1.0
    assert precision_at(scores, truth, 1, 6, 12) == 1.0
    assert precision_at(scores, truth, 2, 6, 12) == 0.5
    assert precision_at(scores, truth, 1, 12, 24) == 0.0
    # pairs closer than min_sep are never ranked, however high their score
    scores[0, 1] = 5.0
    truth[0, 1] = 1
    assert precision_at(scores, truth, 1, 6) == 1.0


def test_unobserved_pairs_are_never_ranked():
    scores, truth = _long_range_case()
    truth[0, 24] = truth[24, 0] = -1  # the top pair (a contact) becomes unobserved
    truth[1, 25] = truth[25, 1] = -1  # pairs[6] (no contact) is masked too
    p = contact_precisions(scores, truth)
    # top 6 of the rest: pairs[1..5] and pairs[7], holding the contacts pairs[2] and pairs[4]
    assert p["long P@L/5"] == pytest.approx(2 / 6)


def test_only_upper_triangle_counts():
    L = 30
    truth = np.zeros((L, L), np.int8)
    truth[0, 29] = 1  # lower triangle entry absent: upper triangle is what is read
    scores = np.zeros((L, L))
    scores[0, 29] = 1.0
    scores[29, 0] = 9.0
    assert precision_at(scores, truth, 1, 24) == 1.0


def test_shape_errors():
    with pytest.raises(ValueError, match="L, L"):
        precision_at(np.zeros((3, 3)), np.zeros((3, 4)), 1)
    with pytest.raises(ValueError, match="k must be positive"):
        precision_at(np.zeros((3, 3)), np.zeros((3, 3)), 0)


def test_table_mean_markdown_csv():
    scores, truth = _long_range_case()
    row = {"L": 30, **contact_precisions(scores, truth)}
    zero = {"L": 30, **contact_precisions(np.zeros((30, 30)), np.zeros((30, 30), np.int8))}
    t = PrecisionTable({"a": row, "b": zero})
    assert t.mean()["long P@L/5"] == pytest.approx(0.25)
    md = t.to_markdown()
    assert "| a | 30 |" in md and "**mean (2)**" in md and "0.250" in md
    csv = t.to_csv().splitlines()
    assert csv[0].startswith("protein,L,short P@L") and csv[-1].startswith("mean,,")
    assert len(csv) == 4
