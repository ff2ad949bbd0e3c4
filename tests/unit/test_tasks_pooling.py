"""Pooling functions (pure) and the batched embedding forward."""

import numpy as np
import pytest
import torch

from protlm.alphabet import pad_tokens
from protlm.tasks.pooling import bos_pool, embed_sequences, max_pool, mean_pool, pool, resolve_layer


def _batch():
    # two sequences of 2 and 3 residues: T = 5 (BOS, residues, EOS, padding)
    x_BTD = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    x_BTD[0, 3:] = 1000.0  # EOS and padding of row 0 must never count
    x_BTD[1, 4] = 1000.0  # EOS of row 1
    return x_BTD, torch.tensor([2, 3])


def test_mean_pool_uses_residues_only():
    x, lens = _batch()
    out = mean_pool(x, lens)
    assert torch.equal(out[0], x[0, 1:3].mean(0))
    assert torch.equal(out[1], x[1, 1:4].mean(0))


def test_bos_and_max_pool():
    x, lens = _batch()
    assert torch.equal(bos_pool(x, lens), x[:, 0])
    x[1, 2, 0] = 500.0  # a residue maximum is kept
    x[1, 0, 1] = 900.0  # a BOS maximum is ignored
    out = max_pool(x, lens)
    assert torch.equal(out[0], x[0, 1:3].amax(0))
    assert out[1, 0] == 500.0 and torch.equal(out[1, 1:], x[1, 1:4, 1:].amax(0))


def test_pool_rejects_unknown():
    x, lens = _batch()
    with pytest.raises(ValueError, match="pooling"):
        pool(x, lens, "sum")


def test_resolve_layer():
    assert resolve_layer(-1, 6) == 6 and resolve_layer(0, 6) == 0 and resolve_layer(-7, 6) == 0
    with pytest.raises(ValueError):
        resolve_layer(7, 6)


@pytest.mark.parametrize("how", ["mean", "bos", "max"])
def test_embed_sequences_matches_unbatched_forward(debug_model, how):
    model = debug_model("esm2_debug")
    a = model.alphabet
    seqs = ["MKTAYIAKQR", "GSH", "MKVLAAGIVALLLAAGCSS"]
    got = embed_sequences(model, a, seqs, layer=-1, pooling=how, toks_per_batch=30)
    for i, s in enumerate(seqs):
        toks = pad_tokens([a.encode(s)], a)
        with torch.no_grad():
            rep = model(toks, repr_layers=[2])["representations"][2]
        want = pool(rep, torch.tensor([len(s)]), how)[0].numpy()
        np.testing.assert_allclose(got[i], want, atol=1e-5)
