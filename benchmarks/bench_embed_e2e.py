"""`protlm embed` end to end against the inference engine alone, on the same records and model.

The engine issue's target: the command, start-up and model loading excluded, within 10% of the
engine's in-process throughput. Both sides get one already built model (random weights of the
chosen shape, prepared once for the device and dtype):
  engine   protlm.embed.extract_batches over the FASTA (reading, tokenising, packed batches,
           host copies of the mean embeddings), results dropped
  command  protlm.embed.embed_to_file into a fresh HDF5 output (FASTA validation pass, lock,
           engine, background writer, consolidation), as `protlm embed` runs it
Runs alternate (engine, command, engine, command, ...) after one warm-up of each; residues/s
is over real residues, best and median of --repeats.

    python benchmarks/bench_embed_e2e.py --device cuda --dtype bf16          # ESM-2 650M shape, 3,000 CATH records
    python benchmarks/bench_embed_e2e.py --layers 6 --dim 320 --heads 20 --records 400   # CPU, ESM-2 8M shape
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from protlm.alphabet import Alphabet
from protlm.data.fasta import read_fasta, write_fasta
from protlm.embed import EmbedConfig, embed_to_file, extract_batches
from protlm.runtime.options import InferenceOptions
from protlm.runtime.precision import prepare_model
from protlm.models.config import esm2_config
from protlm.models.esm import build_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sequences" / "cath_s40.fasta"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fasta", type=Path, default=DATA)
    ap.add_argument("--records", type=int, default=3000, help="the first N records of --fasta")
    ap.add_argument("--layers", type=int, default=33)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--toks-per-batch", type=int, default=16384)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the layers (default: the engine's: on for CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")

    alphabet = Alphabet()
    torch.manual_seed(0)
    model = build_model(esm2_config(args.layers, args.dim, args.heads), alphabet).eval()
    model = prepare_model(model, args.device, dtype, verbose=False)
    cfg = EmbedConfig(repr_layers=(-1,), include=("mean",), compile=args.compile)
    opts = InferenceOptions(model="bench", device=args.device, dtype=dtype, toks_per_batch=args.toks_per_batch,
                            progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fasta = tmp / "in.fasta"
        recs = list(itertools.islice(read_fasta(args.fasta), args.records))
        write_fasta([(r.id, r.sequence) for r in recs], fasta)
        residues = sum(min(len(r.sequence), 1022) for r in recs)

        def engine() -> None:
            for _ in extract_batches(model, alphabet, fasta, cfg, opts):
                pass

        runs = iter(range(10**6))

        def command() -> None:
            out = tmp / f"out{next(runs)}.h5"
            embed_to_file(fasta, out, opts, cfg, model_loader=lambda _: (model, alphabet))
            out.unlink()

        times: dict[str, list[float]] = {"engine": [], "command": []}
        for i in range(args.repeats + 1):  # the first round warms up (and compiles)
            for name, fn in (("engine", engine), ("command", command)):
                sync(args.device)
                t0 = time.perf_counter()
                fn()
                sync(args.device)
                if i:
                    times[name].append(time.perf_counter() - t0)

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{dev}; ESM-2 shape {args.layers} x {args.dim}, {dtype}; {len(recs)} records, {residues:,} residues "
          f"(cropped at 1022), toks_per_batch {args.toks_per_batch}, compile {'auto' if cfg.compile is None else cfg.compile}")
    rate = {}
    for name, ts in times.items():
        rate[name] = residues / min(ts)
        print(f"  {name:8s} best {rate[name]:>10,.0f} res/s   median {residues / statistics.median(ts):>10,.0f} res/s"
              f"   ({', '.join(f'{t:.2f}' for t in ts)} s)")
    print(f"  command / engine: {rate['command'] / rate['engine']:.3f} (target >= 0.90)")


if __name__ == "__main__":
    main()
