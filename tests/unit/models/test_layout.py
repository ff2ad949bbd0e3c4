"""Layouts without a model: pack/unpack/repad, Packed and Padded, the varlen attention kernels."""

from __future__ import annotations

import pytest
import torch

from protlm import Alphabet
from protlm.models.layout import Packed, cu_seqlens_from_lengths, pack, repad, unpack
from protlm.models.varlen import select_backend, unusable_reason, varlen_attention

SEQS = [("a", "MKTAYIAKQRQISFVKSHF"), ("b", "M"), ("c", ""), ("d", "GSH<mask>LEDPV")]
PAD = Alphabet().padding_idx


def padded_tokens(seqs=SEQS):
    return Alphabet().get_batch_converter()(seqs)[2]


def test_pack_concatenates_rows_without_padding():
    t = padded_tokens()
    tokens_N, cu = pack(t, PAD)
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 21, 24, 26, 37]  # BOS + residues + EOS per sequence
    assert tokens_N.ndim == 1 and not tokens_N.eq(PAD).any()
    assert torch.equal(tokens_N, torch.cat([row[row.ne(PAD)] for row in t]))


def test_unpack_and_repad_invert_pack():
    t = padded_tokens()
    tokens_N, cu = pack(t, PAD)
    parts = unpack(tokens_N, cu)
    assert [len(p) for p in parts] == [21, 3, 2, 11]
    assert torch.equal(repad(tokens_N, cu, value=PAD), t)
    x_ND = torch.randn(len(tokens_N), 5)
    assert repad(x_ND, cu).shape == (4, 21, 5)
    assert torch.equal(repad(x_ND, cu)[1, :3], x_ND[21:24])


def test_cu_seqlens_from_lengths():
    assert cu_seqlens_from_lengths(torch.tensor([3, 1, 4])).tolist() == [0, 3, 4, 8]


def test_packing_positions_restart_per_sequence():
    p = Packed.from_cu_seqlens(torch.tensor([0, 3, 4, 4, 7], dtype=torch.int32), 7)
    assert p.positions_N.tolist() == [0, 1, 2, 0, 0, 1, 2]
    assert p.seq_id_N.tolist() == [0, 0, 0, 1, 3, 3, 3]  # sequence 2 is empty
    assert p.bounds == ((0, 3), (3, 4), (4, 4), (4, 7)) and p.max_seqlen == 3
    assert p.lengths_B.tolist() == [3, 1, 0, 3]
    assert p.sequence_sum(torch.arange(7)).tolist() == [3, 3, 0, 15]


@pytest.mark.parametrize("cu,n", [([0, 3, 2], 2), ([1, 3], 3), ([0, 3], 4), ([0], 0)])
def test_packing_rejects_bad_boundaries(cu, n):
    with pytest.raises(ValueError, match="cu_seqlens"):
        Packed.from_cu_seqlens(torch.tensor(cu, dtype=torch.int32), n)


def test_cpu_backend_is_the_sdpa_loop():
    cpu = torch.device("cpu")
    assert select_backend(cpu, torch.float32) == "sdpa_loop"
    assert select_backend(cpu, torch.bfloat16, dropout_p=0.1) == "sdpa_loop"
    assert unusable_reason("varlen_attn", cpu, torch.bfloat16, 0.0) is not None
    assert unusable_reason("flash_attn", cpu, torch.bfloat16, 0.0) is not None
    with pytest.raises(ValueError, match="cannot run here"):
        select_backend(cpu, torch.float32, requested="varlen_attn")
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend(cpu, torch.float32, requested="nope")


def test_varlen_attention_is_softmax_within_each_sequence():
    """Against the definition: each sequence's own softmax(q k^T) v, lengths 1 to 40, to fp32
    rounding (SDPA's fused kernel and the explicit softmax round differently: 1.2e-6 seen on AVX-512)."""
    torch.manual_seed(0)
    lengths = torch.tensor([5, 1, 40, 2, 17])
    cu = cu_seqlens_from_lengths(lengths)
    N, H, hd = int(lengths.sum()), 3, 8
    q, k, v = (torch.randn(N, H, hd) for _ in range(3))
    p = Packed.from_cu_seqlens(cu, N)
    out, backend = varlen_attention(q, k, v, p.cu_seqlens, p.max_seqlen, p.bounds)
    assert backend == "sdpa_loop" and out.shape == (N, H, hd)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))  # (H, L, hd)
        ref = torch.softmax(qs @ ks.transpose(-1, -2), -1) @ vs
        assert (out[s:e] - ref.transpose(0, 1)).abs().max() <= 1e-5


def test_padded_layout_positions_and_sums():
    from protlm.models.layout import Padded

    tokens = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]])  # right-padded with 1
    p = Padded.of(tokens, padding_idx=1)
    assert p.positions.tolist() == [0, 1, 2, 3] and p.max_seqlen == 4
    assert p.position_ids(1).tolist() == [[2, 3, 4, 5], [2, 3, 4, 1]]  # fairseq's offset, pad at 1
    assert p.lengths_B.tolist() == [4, 3]
    assert p.sequence_sum(torch.ones(2, 4)).tolist() == [4.0, 4.0]
    assert p.zero_padding(torch.ones(2, 4, 1))[:, :, 0].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert Padded.of(tokens[:1], padding_idx=1).key_mask_BT is None  # no padding: SDPA unmasked
    with pytest.raises(ValueError, match="batch, length"):
        Padded.of(tokens.flatten(), padding_idx=1)


def test_packed_and_padded_attention_agree():
    """The same sequences through both layouts' `attend`: one kernel choice per layout, one answer."""
    from protlm.models.layout import Padded

    torch.manual_seed(0)
    lengths = torch.tensor([3, 6, 2])
    cu = cu_seqlens_from_lengths(lengths)
    N, H, hd = int(lengths.sum()), 2, 4
    q, k, v = (torch.randn(N, H, hd) for _ in range(3))
    packed, _ = Packed.from_cu_seqlens(cu, N).attend(q, k, v, 0.0, need_weights=False)
    tokens = repad(torch.full((N,), 5), cu, value=1)
    layout = Padded.of(tokens, padding_idx=1)
    qp, kp, vp = (repad(x, cu) for x in (q, k, v))  # (B, T, H, hd)
    fast, _ = layout.attend(qp, kp, vp, 0.0, need_weights=False)
    slow, probs = layout.attend(qp, kp, vp, 0.0, need_weights=True)
    keep = tokens.ne(1)
    torch.testing.assert_close(fast[keep], packed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(slow[keep], packed, rtol=1e-5, atol=1e-6)
    assert probs.shape == (3, H, 6, 6) and float(probs[2, :, :, 2:].abs().max()) == 0.0  # padded keys
