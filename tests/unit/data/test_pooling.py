"""Pooling (pure functions over residue rows) and the engine's pooled vectors."""

import numpy as np
import pytest
import torch

from protlm.alphabet import pad_tokens
from protlm.data.pooling import max_pool, mean_pool, pool, residue_rows
from protlm.embed import Engine
from protlm.errors import InputError


def _rows():
    # two sequences of 2 and 3 residues as 5 rows of width 3, rows 0-1 -> seq 0, rows 2-4 -> seq 1
    x_RD = torch.arange(15, dtype=torch.float32).reshape(5, 3)
    return x_RD, torch.tensor([0, 0, 1, 1, 1]), torch.tensor([2, 3])


def test_mean_pool_is_the_mean_of_each_sequences_rows():
    x, seq, lens = _rows()
    out = mean_pool(x, seq, lens)
    assert torch.equal(out[0], x[0:2].mean(0)) and torch.equal(out[1], x[2:5].mean(0))
    # leading (layer) axes are kept
    stacked = mean_pool(torch.stack([x, 2 * x]), seq, lens)
    assert stacked.shape == (2, 2, 3) and torch.equal(stacked[1], 2 * out)


def test_max_pool_takes_the_per_feature_max():
    x, seq, lens = _rows()
    x[3, 0] = -50.0
    x[2, 1] = 500.0
    out = max_pool(x, seq, 2)
    assert torch.equal(out[0], x[0:2].amax(0))
    assert out[1, 1] == 500.0 and torch.equal(out[1], x[2:5].amax(0))
    assert torch.equal(pool(x, seq, lens, "max"), out)


def test_pool_rejects_unknown():
    x, seq, lens = _rows()
    with pytest.raises(InputError, match="pooling"):
        pool(x, seq, lens, "sum")


def test_residue_rows_skip_bos_eos_and_neighbours():
    # packed tokens: [BOS a a EOS][BOS b b b EOS] -> residues start at 1 and 5
    rows, seq = residue_rows(torch.tensor([2, 3]), torch.tensor([1, 5]), 9)
    assert rows.tolist() == [1, 2, 5, 6, 7] and seq.tolist() == [0, 0, 1, 1, 1]
    rows, seq = residue_rows(torch.tensor([0, 1]), torch.tensor([1, 3]), 5)
    assert rows.tolist() == [3] and seq.tolist() == [1]


@pytest.mark.parametrize("how", ["mean", "bos", "max"])
def test_engine_pooled_matches_unbatched_forward(debug_model, how):
    model = debug_model("esm2_debug")
    a = model.alphabet
    seqs = ["MKTAYIAKQR", "GSH", "MKVLAAGIVALLLAAGCSS"]
    got = Engine(model, a, toks_per_batch=30).pooled(seqs, how)
    for i, s in enumerate(seqs):
        toks = pad_tokens([a.encode(s)], a)
        with torch.no_grad():
            rep = model(toks, repr_layers=[2])["representations"][2][0]
        want = rep[0] if how == "bos" else getattr(rep[1:len(s) + 1], "amax" if how == "max" else "mean")(0)
        np.testing.assert_allclose(got[i, 0].numpy(), want.numpy(), atol=1e-5)
