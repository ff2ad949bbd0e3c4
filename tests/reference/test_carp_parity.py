"""CARP: protlm's ByteNet LM against sequence-models 1.8.0 on the same random weights.

Files are written in the published layout (a dict of config fields and the ByteNetLM state) and
read by both loaders: protlm's `load_model_and_alphabet` (weights_only=True) and the package's
`load_carp`. Logits and every layer's representation are compared on a right-padded batch of
real sequences of mixed lengths, at the carp_600k shape (full depth) and the carp_38M widths
(d_model 1024, blocks 512 wide; 4 blocks here, the full 16 under `slow`). Tolerance: max abs
difference over real positions <= 1e-5 times the largest magnitude of the reference tensor.
"""

from __future__ import annotations

import pytest
import torch

import _carp_ref as R
from protlm.data.fasta import load_fasta
from protlm.pretrained.load import load_model_and_alphabet

TOL = 1e-5


@pytest.fixture(scope="module")
def seqs(shared_data):
    """Four real sequences of mixed lengths (so the batch is padded), one over 300 residues."""
    recs = sorted(load_fasta(shared_data / "sequences" / "few_proteins.fasta"), key=lambda r: len(r.sequence))
    return [(r.id, r.sequence[:400]) for r in recs[:4]]


def relative_diffs(ref, model, tokens) -> dict[str, float]:
    """Per output: max |protlm - reference| / max |reference| over real (non-padding) positions."""
    n = model.num_layers
    keep = tokens.ne(model.padding_idx)
    with torch.no_grad():
        r = ref(tokens, repr_layers=list(range(1, n + 1)), logits=True)
        r["representations"][0] = ref.model.embedder._embed(tokens)  # the wrapper files layer 0 elsewhere
        o = model(tokens, repr_layers=range(n + 1))
    pairs = {"logits": (r["logits"], o["logits"]),
             **{f"layer{i}": (r["representations"][i], o["representations"][i]) for i in range(n + 1)}}
    return {k: float((a - b)[keep].abs().max() / a[keep].abs().max()) for k, (a, b) in pairs.items()}


def _check(tmp_path, seqs, name, **shape):
    ref_net, meta = R.reference_bytenet(**shape)
    path = R.write_published(ref_net, meta, tmp_path / f"{name}.pt", name)
    ref = R.load_reference(path)
    model, alphabet = load_model_and_alphabet(path)
    assert model.config.family == "carp" and not model.training
    tokens = alphabet.get_batch_converter()(seqs)[2]
    assert tokens.eq(alphabet.padding_idx).any()  # a padded batch
    d = relative_diffs(ref, model, tokens)
    assert len(d) == model.num_layers + 2
    print(f"\nCARP {name} protlm vs sequence-models, worst relative diff {max(d.values()):.3g} ({max(d, key=d.get)})")
    assert max(d.values()) <= TOL, d
    return model


def test_carp_600k_shape_full_depth(tmp_path, seqs):
    model = _check(tmp_path, seqs, "carp_600k", **R.SHAPES["carp_600k"])
    assert model.config.dilations[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 1]


def test_carp_38M_widths(tmp_path, seqs):
    model = _check(tmp_path, seqs, "carp_38M", **{**R.SHAPES["carp_38M"], "n_layers": 4})
    assert model.layers[0].conv.weight.shape == (512, 512, 5)
    assert model.layers[0].ff1.weight.shape == (512, 1024)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_full_width_blocks_and_activations(tmp_path, seqs, activation):
    """slim=False (carp_640M's blocks run at d_model) and both activations the package offers."""
    model = _check(tmp_path, seqs, "carp_640M", d_model=64, n_layers=3, slim=False, activation=activation)
    assert model.layers[0].conv.weight.shape == (64, 64, 5)


@pytest.mark.slow
def test_carp_38M_shape_full_depth(tmp_path, seqs):
    _check(tmp_path, seqs, "carp_38M", **R.SHAPES["carp_38M"])
