"""`protlm embed` on CPU in fp32 and bf16: speed and how far bf16 mean embeddings move.

Same input as the `mix` scenario of bench_inference.py (16 real sequences, fixed seed) and the
same random ESM-1b weights; `protlm.embed.extract` with the last layer's mean, 4096 tokens per
batch. bf16 is outside the issue's fp32 targets: it is reported as an option, with its error.

    python benchmarks/embed_dtype_cpu.py                 # ESM-1b, 33 layers
    python benchmarks/embed_dtype_cpu.py --layers 4      # quick check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build, load_mix, protlm_config  # noqa: E402


def timed_means(model, alphabet, fasta: str, layer: int) -> tuple[float, dict[str, torch.Tensor]]:
    from protlm.embed import EmbedConfig, extract
    from protlm.runtime.options import InferenceOptions

    cfg = EmbedConfig(repr_layers=(-1,), include=("mean",))
    t0 = time.perf_counter()
    out = {r.id: r.mean[layer] for r in extract(model, alphabet, fasta, cfg, InferenceOptions(toks_per_batch=4096))}
    return time.perf_counter() - t0, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run (default 33)")
    p.add_argument("--n-mix", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    from protlm import Alphabet
    from protlm.runtime.precision import prepare_model

    torch.set_num_threads(2)
    seqs = load_mix(args.n_mix)
    with tempfile.NamedTemporaryFile("w", suffix=".fasta", delete=False) as fh:
        fh.write("".join(f">{i}\n{s}\n" for i, s in seqs))
    cfg = protlm_config("esm1b", args.layers)
    alphabet = Alphabet.from_architecture("ESM-1b")
    models = {"fp32": build("protlm", cfg).eval()}
    bf16 = build("protlm", cfg)
    bf16.load_state_dict(models["fp32"].state_dict())
    models["bf16"] = prepare_model(bf16, "cpu", "bf16")

    for m in models.values():  # warm-up
        timed_means(m, alphabet, fh.name, cfg.num_layers)
    times, outs = {k: [] for k in models}, {}
    for _ in range(args.repeats):  # interleaved
        for k, m in models.items():
            t, outs[k] = timed_means(m, alphabet, fh.name, cfg.num_layers)
            times[k].append(t)
    n = sum(len(s) for _, s in seqs)
    print(f"ESM-1b {cfg.num_layers} layers, {len(seqs)} sequences, {n} residues, 2 threads")
    for k, ts in times.items():
        print(f"  {k}: best {min(ts):.2f} s  ({n / min(ts):.0f} residues/s)  all {[round(t, 2) for t in ts]}")
    cos = [torch.nn.functional.cosine_similarity(outs["fp32"][i], outs["bf16"][i].float(), dim=0).item()
           for i in outs["fp32"]]
    rel = [((outs["fp32"][i] - outs["bf16"][i].float()).norm() / outs["fp32"][i].norm()).item()
           for i in outs["fp32"]]
    print(f"  bf16 vs fp32 mean embeddings: min cosine {min(cos):.6f}, max relative L2 error {max(rel):.2e}")
    Path(fh.name).unlink()


if __name__ == "__main__":
    main()
