"""Padded vs packed forward on CPU: a real length mix, ESM-2 shapes, random weights.

Input: every sequence of ../shared/data/sequences/some_proteins.fasta (15 real proteins, 71 to
935 residues). Three ways to run the same sequences through the same model (last-layer
representation, no LM head, as embedding extraction does):

  padded-1     one padded batch in file order, the padding a naive caller pays (--unsorted only:
               it computes 2.7x the real tokens and would double the run time)
  padded-sort  length-sorted padded batches of <= --toks tokens, padding included (fair-esm's
               scripts/extract.py batching)
  packed       file order, packed batches of <= --toks real tokens (`ESM.forward(tokens_N, cu_seqlens=...)`)

residues/s = residues / wall time: best of --repeats after one warm-up on a short batch, runs
interleaved; padded-1 is timed once. Outputs are checked to agree. With --compare-attention, the
attention kernels alone are timed on the whole mix packed (ESM-2 8M head shape, 20 x 16): the
per-sequence SDPA loop the packed path runs on CPU, a block-diagonal mask over the whole pack,
FlexAttention with a document mask (compiled; compile and block-mask build reported apart), and
padded SDPA with a key mask.

    python benchmarks/bench_packed_cpu.py                            # < 3 minutes on 2 busy cores
    python benchmarks/bench_packed_cpu.py --compare-attention --shapes   # attention kernels only
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from protlm import Alphabet, build_model
from protlm.data.fasta import load_fasta
from protlm.models.config import esm2_config
from protlm.models.layers import init_weights
from protlm.models.layout import Packed, cu_seqlens_from_lengths, pack, repad
from protlm.models.varlen import varlen_attention

FASTA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sequences" / "some_proteins.fasta"


def token_batches(seqs: list[str], toks: int, sort: bool) -> list[list[str]]:
    """Greedy batches whose padded (sort=True) or real (sort=False) token count stays <= toks."""
    order = sorted(seqs, key=len) if sort else seqs
    batches, cur = [], []
    for s in order:
        n = len(s) + 2
        # sorted: the longest is the newest, so padded size = count x n
        size = (len(cur) + 1) * n if sort else sum(len(c) + 2 for c in cur) + n
        if cur and size > toks:
            batches.append(cur)
            cur = []
        cur.append(s)
    return batches + [cur] if cur else batches


def make_runs(model, seqs: list[str], toks: int, unsorted: bool):
    """name -> (callable returning {sequence index in `seqs`: (L, D) last layer}, tokens it computes)."""
    conv, n, pad = Alphabet().get_batch_converter(), model.num_layers, model.padding_idx
    index = {s: i for i, s in enumerate(seqs)}

    def padded(batches):
        tensors = [conv([(str(index[s]), s) for s in b])[2] for b in batches]

        def run():
            out = {}
            for b, t in zip(batches, tensors):
                x = model(t, repr_layers=[n], return_logits=False)["representations"][n]
                out.update({index[s]: x[j, : len(s) + 2] for j, s in enumerate(b)})
            return out
        return run, sum(t.numel() for t in tensors)

    def packed(batches):
        packs = [pack(conv([(str(index[s]), s) for s in b])[2], pad) for b in batches]

        def run():
            out = {}
            for b, (t, cu) in zip(batches, packs):
                x = model(t, repr_layers=[n], return_logits=False, cu_seqlens=cu)["representations"][n]
                out.update({index[s]: x[cu[j]: cu[j + 1]] for j, s in enumerate(b)})
            return out
        return run, sum(t.numel() for t, _ in packs)

    runs = {"padded-1": padded([seqs])} if unsorted else {}
    runs["padded-sort"] = padded(token_batches(seqs, toks, sort=True))
    runs["packed"] = packed(token_batches(seqs, toks, sort=False))
    return runs


def bench_model(layers: int, dim: int, seqs: list[str], toks: int, repeats: int, unsorted: bool) -> None:
    torch.manual_seed(0)
    model = build_model(esm2_config(layers, dim, 20)).eval()
    init_weights(model)
    runs = make_runs(model, seqs, toks, unsorted)
    residues = sum(len(s) for s in seqs)
    best, outs = {k: float("inf") for k in runs}, {}
    with torch.inference_mode():
        t, cu = pack(Alphabet().get_batch_converter()([("w", seqs[0][:100])])[2], model.padding_idx)
        backend = model(t, return_logits=False, cu_seqlens=cu)["attention_backend"]  # warm-up
        for rep in range(repeats):
            for name, (run, _) in runs.items():
                if name == "padded-1" and rep:
                    continue
                t0 = time.perf_counter()
                outs[name] = run()
                best[name] = min(best[name], time.perf_counter() - t0)
    diff = max((outs["packed"][i] - outs[k][i]).abs().max().item() for k in runs for i in outs[k])
    print(f"\nESM-2 shape {layers} layers d={dim} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"params), {len(seqs)} sequences, {residues} residues; packed attention backend: {backend}")
    for name, (_, computed) in runs.items():
        print(f"  {name:12s} {residues / best[name]:8.0f} residues/s  ({best[name]:6.2f} s, "
              f"{computed} tokens computed)")
    print(f"  packed vs padded-sort: {best['padded-sort'] / best['packed']:.2f}x; "
          f"max abs diff of the last layer between runs {diff:.2g}")


def compare_attention(seqs: list[str], heads: int = 20, head_dim: int = 16, repeats: int = 3) -> None:
    """The CPU candidates for packed attention on the whole mix as one pack (q, k, v random)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch.manual_seed(0)
    lengths = torch.tensor([len(s) + 2 for s in seqs])
    cu = cu_seqlens_from_lengths(lengths)
    N = int(lengths.sum())
    packing = Packed.from_cu_seqlens(cu, N)
    q, k, v = (torch.randn(N, heads, head_dim) for _ in range(3))
    h = lambda x: x.transpose(0, 1).unsqueeze(0)  # noqa: E731  (N, H, hd) -> (1, H, N, hd)
    seq_id = packing.seq_id_N
    t0 = time.perf_counter()
    block_mask = create_block_mask(lambda b, hh, i, j: seq_id[i] == seq_id[j], None, None, N, N, device="cpu")
    mask_s = time.perf_counter() - t0  # paid again for every new batch
    flex = torch.compile(flex_attention)
    B, T = len(seqs), int(lengths.max())
    qp, kp, vp = (repad(x, cu).transpose(1, 2) for x in (q, k, v))  # (B, H, T, hd)
    key_ok = torch.arange(T)[None, :] < lengths[:, None]
    cands = {
        "sdpa_loop": lambda: varlen_attention(q, k, v, packing.cu_seqlens, packing.max_seqlen, packing.bounds)[0],
        "block-diagonal mask": lambda: F.scaled_dot_product_attention(
            h(q), h(k), h(v), attn_mask=seq_id[:, None] == seq_id[None, :], scale=1.0)[0].transpose(0, 1),
        "flex (compiled)": lambda: flex(h(q), h(k), h(v), block_mask=block_mask, scale=1.0)[0].transpose(0, 1),
        "padded + key mask": lambda: F.scaled_dot_product_attention(
            qp, kp, vp, attn_mask=key_ok[:, None, None, :], scale=1.0),
    }
    t0 = time.perf_counter()
    cands["flex (compiled)"]()
    compile_s = time.perf_counter() - t0
    ref = cands["sdpa_loop"]()
    best = {name: float("inf") for name in cands}
    for _ in range(repeats):
        for name, f in cands.items():
            t0 = time.perf_counter()
            out = f()
            best[name] = min(best[name], time.perf_counter() - t0)
            if out.shape == ref.shape:
                assert (out - ref).abs().max() <= 1e-5, name
    print(f"\nattention only, {N} packed tokens ({B} x {T} = {B * T} padded), {heads} heads x {head_dim}, fp32:")
    for name, s in best.items():
        extra = (f"  (+ {mask_s * 1e3:.0f} ms to build the batch's block mask; first call incl. "
                 f"compile {compile_s:.1f} s)") if name.startswith("flex") else ""
        print(f"  {name:20s} {s * 1e3:8.1f} ms{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="*", default=["6x320", "12x480"], help="LAYERSxDIM, 20 heads")
    ap.add_argument("--toks", type=int, default=4096, help="tokens per batch (padded-sort, packed)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--unsorted", action="store_true", help="also time padded-1")
    ap.add_argument("--compare-attention", action="store_true")
    args = ap.parse_args()
    seqs = [r.sequence for r in load_fasta(FASTA)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    if args.compare_attention:
        compare_attention(seqs)
    for shape in args.shapes:
        layers, dim = map(int, shape.split("x"))
        bench_model(layers, dim, seqs, args.toks, args.repeats, args.unsorted)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
