"""The `protlm embed` writer alone: records/s with no model, so it is never what limits a run.

50,000 small records (one 1280-d mean vector each, the ESM-2 650M width, float32) in batches of
64, made before the clock starts, then written through the same path `embed_to_file` uses:
`BackgroundWriter(many=True)` (the batches waiting when the writer comes back are written as
one piece) -> H5Output or PtOutput `write_batch` (one atomic, fsynced shard per piece, resume
bookkeeping included), then `write_index` + `finish` (consolidation), timed apart. A GPU run
puts batches no faster than it computes them; here they are put as fast as the writer takes
them, so the pieces are as large as the queue allows (depth 4: up to 5 batches).

    python benchmarks/bench_writer.py                  # h5, 50k records
    python benchmarks/bench_writer.py --format pt --records 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from protlm.embed import EmbedResult
from protlm.embed.writers import H5Output, PtOutput
from protlm.embed.engine import BackgroundWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--format", choices=["h5", "pt"], default="h5")
    args = ap.parse_args()
    vec = torch.randn(args.dim)
    meta = {"model": "bench", "layers": [33], "include": ["mean"], "long": "truncate", "dtype": "fp32",
            "protlm_version": "bench"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("out.h5" if args.format == "h5" else "out")
        out = H5Output(path, meta) if args.format == "h5" else PtOutput(path, meta)
        out.begin()
        batches = [[EmbedResult(f"r{i}", f"r{i} bench", 100, "0" * 64, mean={33: vec.clone()})
                    for i in range(s, min(s + args.batch, args.records))]
                   for s in range(0, args.records, args.batch)]
        pieces = []

        def write(items):  # as protlm.embed.write_records does
            pieces.append(len(items))
            out.write_batch([r for batch in items for r in batch])

        t0 = time.perf_counter()
        with BackgroundWriter(write, depth=4, many=True) as w:
            for batch in batches:
                w.put(batch)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        out.write_index()
        out.finish()
        t_finish = time.perf_counter() - t0
    n = args.records
    print(f"{args.format}: {n} records x {args.dim} floats, batches of {args.batch}")
    print(f"  write_batch (background writer): {t_write:.2f} s = {n / t_write:,.0f} records/s "
          f"({len(pieces)} shards for {len(batches)} batches)")
    print(f"  write_index + finish:             {t_finish:.2f} s")
    print(f"  end to end:                       {n / (t_write + t_finish):,.0f} records/s")


if __name__ == "__main__":
    main()
