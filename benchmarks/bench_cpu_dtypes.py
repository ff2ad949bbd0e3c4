"""CPU inference in fp32, bf16 and int8 against fair-esm fp32: speed and agreement, same run.

Prints the CPU's features first (AVX2, AVX-512 VNNI / BF16, AMX: what decides whether bf16 and
int8 pay off), then for each model shape (ESM-1b and ESM-2 650M, 33 layers, d=1280, random
weights with the published architecture, the same weights everywhere): fair-esm 2.0.0 fp32 as
its scripts/extract.py batches (bench_inference.run_mix), and protlm.embed.extract (packed
token-budget batches of 4096, last layer, mean + per_tok) with --dtype fp32, bf16 and int8.
Input: the RESULTS.md length mix (bench_inference.load_mix, fixed seed), the first --n-mix
sequences. Runs are interleaved (one of each, then again), residues/s from the best of
--repeats, after a one-sequence warm-up. Agreement with protlm fp32: min cosine of the mean
embeddings, and max |error| of the per-residue representations over max |fp32| (and over their
RMS).

    OMP_NUM_THREADS=2 python benchmarks/bench_cpu_dtypes.py --n-mix 8 --repeats 2 --out r.json
    python benchmarks/bench_cpu_dtypes.py --layers 2 --n-mix 4 --repeats 1     # quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import build, load_mix, protlm_config, run_mix  # noqa: E402

DTYPES = ("fp32", "bf16", "int8")


def protlm_outputs(model, fasta: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{id: {'mean': (D,), 'per_tok': (L, D)}} of the last layer, float32."""
    from protlm import Alphabet
    from protlm.embed import EmbedConfig, extract
    from protlm.runtime.options import InferenceOptions

    cfg = EmbedConfig(repr_layers=(-1,), include=("mean", "per_tok"))
    n = model.num_layers
    return {r.id: {"mean": r.mean[n], "per_tok": r.per_tok[n]}
            for r in extract(model, Alphabet(), fasta, cfg, InferenceOptions(toks_per_batch=4096))}


def agreement(ref: dict, out: dict) -> dict[str, float]:
    cos = [torch.nn.functional.cosine_similarity(ref[i]["mean"], out[i]["mean"], dim=0).item() for i in ref]
    err = [(ref[i]["per_tok"] - out[i]["per_tok"]).abs().max().item() for i in ref]
    peak = [ref[i]["per_tok"].abs().max().item() for i in ref]
    rms = [ref[i]["per_tok"].pow(2).mean().sqrt().item() for i in ref]
    return {"min_cosine_mean": min(cos), "max_abs_err_over_max_abs": max(e / p for e, p in zip(err, peak)),
            "max_abs_err_over_rms": max(e / r for e, r in zip(err, rms))}


def bench_family(family: str, layers: int | None, seqs, fasta: Path, repeats: int, dtypes=DTYPES) -> dict:
    from protlm.runtime.precision import prepare_model

    cfg = protlm_config(family, layers)
    models = {"fair-esm fp32": build("fair-esm", cfg)}
    base = build("protlm", cfg)
    state = base.state_dict()
    for dt in dtypes:
        m = build("protlm", cfg) if dt != "fp32" else base
        m.load_state_dict(state)
        t0 = time.perf_counter()
        models[f"protlm {dt}"] = prepare_model(m, "cpu", dt, verbose=False)
        print(f"  prepared protlm {dt} in {time.perf_counter() - t0:.1f} s", flush=True)
    runs = {name: (lambda m=m: run_mix("fair-esm", m, seqs, fasta)) if name.startswith("fair")
            else (lambda m=m: protlm_outputs(m, fasta)) for name, m in models.items()}
    with tempfile.TemporaryDirectory() as d:  # warm-up: one short sequence each
        short = Path(d) / "w.fasta"
        short.write_text(f">w\n{seqs[0][1][:64]}\n")
        for name, m in models.items():
            run_mix("fair-esm", m, seqs[:1], short) if name.startswith("fair") else protlm_outputs(m, short)
    times, outs = {k: [] for k in runs}, {}
    with torch.inference_mode():
        for r in range(repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t0)
                print(f"  round {r + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    n = sum(len(s) for _, s in seqs)
    fair = n / min(times["fair-esm fp32"])
    rows = {}
    for name, ts in times.items():
        rate = n / min(ts)
        rows[name] = {"seconds": ts, "residues_per_s": rate, "vs_fair_esm": rate / fair}
        if name.startswith("protlm") and name != "protlm fp32":
            rows[name].update(agreement(outs["protlm fp32"], outs[name]))
    return {"layers": cfg.num_layers, "residues": n, "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["esm1b", "esm2"], choices=["esm1b", "esm2"])
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run (default 33)")
    p.add_argument("--n-mix", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES,
                   help="protlm paths to run (fp32 is always run: the others are compared with it)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from protlm.runtime.precision import cpu_features, describe_features, probe
    from protlm.models.int8 import PACK_ENGINE, QMAX

    torch.set_num_threads(args.threads)
    feats = cpu_features()
    print(f"CPU: {describe_features(feats)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, int8 kernels "
          f"{PACK_ENGINE or torch.backends.quantized.engine} (activations 8-bit per token, weights [-{QMAX}, {QMAX}] per channel)")
    t = probe()
    print("probe (one 256 x 1280 -> 5120 Linear), GFLOP/s: "
          + ", ".join(f"{k} {2 * 256 * 1280 * 5120 / v / 1e9:.0f}" for k, v in t.items()), flush=True)
    seqs = load_mix(16)[: args.n_mix]  # the RESULTS.md mix, first n (same seed)
    result = {"cpu": feats, "probe_seconds": t, "n_mix": args.n_mix, "families": {}}
    with tempfile.TemporaryDirectory() as d:
        fasta = Path(d) / "mix.fasta"
        fasta.write_text("".join(f">{i}\n{s}\n" for i, s in seqs))
        for fam in args.families:
            print(f"{fam}: {len(seqs)} sequences, {sum(len(s) for _, s in seqs)} residues", flush=True)
            dtypes = [d for d in DTYPES if d in args.dtypes or d == "fp32"]
            res = result["families"][fam] = bench_family(fam, args.layers, seqs, fasta, args.repeats, dtypes)
            for name, row in res["rows"].items():
                acc = "" if "min_cosine_mean" not in row else (
                    f"  cos(mean) {row['min_cosine_mean']:.6f}  max|err|/max|fp32| "
                    f"{row['max_abs_err_over_max_abs']:.2e}  /rms {row['max_abs_err_over_rms']:.2e}")
                print(f"  {name:14s} {row['residues_per_s']:7.1f} res/s  {row['vs_fair_esm']:.2f}x fair-esm{acc}",
                      flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
