"""Peak memory of contact prediction on a 1022-residue sequence, ESM-1b configuration.

protlm reduces each layer's attention maps into the contact logits as it goes
(`ESM.forward(return_contacts=True)`), so it never holds all 33 layers x 20 heads of
(1024 x 1024) maps; fair-esm stacks them all first. Each (implementation, mode) runs in a fresh
process: RSS after the weights are loaded is the baseline, VmHWM (reset through
/proc/self/clear_refs) is the peak of one forward. Random weights (memory does not depend on them).

    python benchmarks/bench_contacts_memory.py            # ESM-1b, 33 layers, 1022 residues
    python benchmarks/bench_contacts_memory.py --layers 4 --length 300   # quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import _rss_kb, _tokens, build, protlm_config, run_forward  # noqa: E402

IMPLS = ("protlm", "fair-esm")
MODES = ("plain", "contacts")


def worker(impl: str, mode: str, layers: int | None, length: int) -> dict:
    """Peak RSS of one forward over the loaded-weights RSS (MiB), and its wall time."""
    import gc

    torch.set_num_threads(2)
    model = build(impl, protlm_config("esm1b", layers))
    seq = ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAG"
           * 20)[:length]
    tokens = _tokens([("x", seq)])
    gc.collect()
    base = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM (the peak) to the current RSS
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = run_forward(impl, model, tokens, contacts=mode == "contacts")
    wall = time.perf_counter() - t0
    peak = _rss_kb("VmHWM")
    shape = tuple(out["contacts"].shape) if out.get("contacts") is not None else None
    return {"impl": impl, "mode": mode, "weights_mib": base / 1024, "peak_mib": peak / 1024,
            "delta_mib": (peak - base) / 1024, "seconds": wall, "contacts_shape": shape}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=None, help="default: ESM-1b's 33")
    p.add_argument("--length", type=int, default=1022)
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    extra = ["--layers", str(args.layers)] if args.layers else []
    if args.worker:
        print(json.dumps(worker(*args.worker, args.layers, args.length)))
        return
    rows = []
    for impl in args.impls.split(","):
        for mode in MODES:
            cmd = [sys.executable, __file__, "--worker", impl, mode, "--length", str(args.length)] + extra
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\nESM-1b, {args.layers or 33} layers, {args.length} residues, fp32, 2 threads\n")
    print("| implementation | mode | weights MiB | peak MiB | peak over weights MiB | "
          "peak / plain peak | over-weights / plain | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        plain = next(x for x in rows if x["impl"] == r["impl"] and x["mode"] == "plain")
        print(f"| {r['impl']} | {r['mode']} | {r['weights_mib']:.0f} | {r['peak_mib']:.0f} | "
              f"{r['delta_mib']:.0f} | {r['peak_mib'] / plain['peak_mib']:.2f}x | "
              f"{r['delta_mib'] / plain['delta_mib']:.2f}x | {r['seconds']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
