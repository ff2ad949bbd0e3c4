"""Parity of the packed path with fair-esm 2.0.0: the reference runs its padded batch, protlm the
same sequences packed, from the same published-format file; fp32 max abs diff <= 1e-5.
"""

from __future__ import annotations

import pytest
import torch

import _writers as W
from protlm.data.fasta import load_fasta
from protlm.models.layout import pack
from protlm.pretrained.load import load_model_and_alphabet

TOL = 1e-5


def real_batch(shared_data, max_len):
    """Short, middle and long real sequences, <mask> in two (per-row token-dropout rescale)."""
    recs = sorted(load_fasta(shared_data / "sequences" / "some_proteins.fasta"), key=lambda r: len(r.sequence))
    seqs = [recs[i].sequence[:max_len] for i in (0, 1, len(recs) // 2, -1)] + ["M"]
    seqs[0] = seqs[0][:10] + "<mask>" + seqs[0][11:]
    seqs[2] = "<mask>" + seqs[2][1:30] + "<mask>" + seqs[2][31:]
    return [(str(i), s) for i, s in enumerate(seqs)]


@pytest.mark.parametrize("family,kw", W.FAIR_ESM_SHAPES)
def test_packed_matches_fair_esm(tmp_path, shared_data, family, kw):
    ref, meta = W.reference_esm1b(**kw) if family == "esm1b" else W.reference_esm2(**kw)
    model, alphabet = load_model_and_alphabet(W.write_fair_esm(ref, meta, tmp_path / f"{family}_t.pt"))
    tokens_BT = alphabet.get_batch_converter()(real_batch(shared_data, max_len=400))[2]
    keep = tokens_BT.ne(alphabet.padding_idx)
    tokens_N, cu = pack(tokens_BT, alphabet.padding_idx)
    n = kw["layers"]
    layers = [0, 1, n // 2, n]
    with torch.no_grad():
        r = ref(tokens_BT, repr_layers=layers)
        o = model(tokens_N, repr_layers=layers, cu_seqlens=cu)
    d = {"logits": (r["logits"][keep] - o["logits"]).abs().max().item()}
    for i in layers:
        d[f"repr{i}"] = (r["representations"][i][keep] - o["representations"][i]).abs().max().item()
    print(f"\n{family} t{n} d={kw['embed_dim']} packed ({o['attention_backend']}): "
          f"max abs diff {max(d.values()):.3g} (worst: {max(d, key=d.get)})")
    assert max(d.values()) <= TOL, d
