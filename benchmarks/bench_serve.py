"""`protlm serve` under concurrent clients against `protlm embed`, on the same records and model.

The issue's goal: served throughput >= 90% of `protlm embed`'s under 32 concurrent clients.
  embed    protlm.embed.embed_to_file over a FASTA of the records into a fresh HDF5 file (the
           command's library call: validation pass, engine, background writer), the model loaded
           once beforehand and handed in, as `protlm embed` would load it
  serve    `python -m protlm.cli.main serve --model MODEL` as a process (warmed up), then
           --clients concurrent HTTP clients on loopback, each posting --per-request records at a
           time (JSON, mean of the last layer) until every record is served; wall time from the
           first request to the last reply. The clients run in this process on the same CPU.
  engine   protlm.embed.extract_batches alone (no validation pass, no file): the compute ceiling,
           shown to judge the machine's noise
Rounds alternate (engine, embed, serve, engine, ...); residues/s over real residues; every served
vector is compared with the one `protlm embed` wrote (max abs diff). Latency p50 / p99 per request.

    python benchmarks/bench_serve.py --model protlm_small --records 300 --rounds 3 \\
        --out benchmarks/results/serve_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import protlm
from protlm.data.fasta import load_fasta, write_fasta
from protlm.embed import embed_to_file, extract_batches
from protlm.runtime.options import InferenceOptions
from protlm.embed import read_h5

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sequences" / "cath_s40.fasta"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, log_path: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "protlm.cli.main", "serve", "--model", args.model, "--port", str(port),
           "--max-batch-tokens", str(args.toks_per_batch), "--log-level", "warning",
           "--batch-wait-ms", str(args.batch_wait_ms)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not become ready: {log_path.read_text()}")
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def run_embed(fasta: Path, model, alphabet, args, out_dir: Path, k: int) -> dict:
    out = out_dir / f"embed{k}.h5"
    opts = InferenceOptions(model=args.model, device="cpu", toks_per_batch=args.toks_per_batch, progress=False)
    t0 = time.perf_counter()
    embed_to_file(fasta, out, opts, model_loader=lambda _: (model, alphabet))
    return {"seconds": time.perf_counter() - t0, "output": out}


def run_engine(fasta: Path, model, alphabet, args) -> float:
    t0 = time.perf_counter()
    for _ in extract_batches(model, alphabet, fasta, opts=InferenceOptions(toks_per_batch=args.toks_per_batch)):
        pass
    return time.perf_counter() - t0


async def _serve_round(url: str, records, args) -> dict:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for i in range(0, len(records), args.per_request):
        queue.put_nowait(records[i : i + args.per_request])
    latencies, got, errors = [], {}, []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

    async def client(http):
        while not queue.empty():
            chunk = queue.get_nowait()
            body = {"sequences": [{"id": r.id, "sequence": r.sequence} for r in chunk]}
            t0 = time.perf_counter()
            reply = await http.post("/v1/embeddings", json=body)
            latencies.append(time.perf_counter() - t0)
            if reply.status_code != 200:
                errors.append(f"{reply.status_code} {reply.text[:200]}")
                continue
            for d in reply.json()["data"]:
                got[d["id"]] = np.asarray(next(iter(d["mean"].values())), dtype=np.float32)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(args.clients)))
        seconds = time.perf_counter() - t0
    lat = sorted(latencies)
    return {"seconds": seconds, "got": got, "errors": errors, "requests": len(lat),
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="protlm_small")
    ap.add_argument("--fasta", type=Path, default=DATA)
    ap.add_argument("--records", type=int, default=300, help="the first N records of --fasta")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--per-request", type=int, default=1, help="records per HTTP request")
    ap.add_argument("--toks-per-batch", type=int, default=4096, help="embed --toks-per-batch = serve --max-batch-tokens")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON of every round")
    args = ap.parse_args(argv)

    records = load_fasta(args.fasta)[: args.records]
    residues = sum(len(r.sequence) for r in records)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    fasta = tmp / "records.fasta"
    write_fasta([(r.id, r.sequence) for r in records], fasta)
    model, alphabet = protlm.load_model_and_alphabet(args.model)
    print(f"{len(records)} records, {residues} residues; {args.model}; CPU {cpu_name()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}",
          flush=True)
    proc, url = start_server(args, tmp / "server.log")
    rounds = []
    try:
        asyncio.run(_serve_round(url, records[: args.clients], args))  # warm the connections and the server
        for k in range(args.rounds):
            load = os.getloadavg()[0]  # other work on the machine shows here (and in the engine figure)
            engine_s = run_engine(fasta, model, alphabet, args)
            e = run_embed(fasta, model, alphabet, args, tmp, k)
            s = asyncio.run(_serve_round(url, records, args))
            ref = read_h5(e["output"])
            diff = max(float(np.abs(s["got"][rid] - ref[rid]["mean"][0]).max()) for rid in ref)
            row = {"engine_res_s": residues / engine_s, "embed_res_s": residues / e["seconds"], "serve_res_s": residues / s["seconds"],
                   "ratio": e["seconds"] / s["seconds"], "requests": s["requests"], "p50_ms": s["p50_ms"],
                   "p99_ms": s["p99_ms"], "errors": len(s["errors"]), "missing": len(ref) - len(s["got"]),
                   "max_abs_diff": diff, "load_average": load}
            rounds.append(row)
            print(f"round {k + 1}: engine {row['engine_res_s']:.0f}, embed {row['embed_res_s']:.0f} residues/s, serve {row['serve_res_s']:.0f} "
                  f"residues/s ({row['ratio']:.1%} of embed), {row['requests']} requests, p50 "
                  f"{row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, errors {row['errors']}, missing "
                  f"{row['missing']}, max abs diff to embed {diff:.1e}; load average {load:.2f}", flush=True)
            for err in s["errors"][:3]:
                print("  error:", err)
    finally:
        proc.terminate()
        proc.wait(60)
    ratios = [r["ratio"] for r in rounds]
    print(f"median over {len(rounds)} rounds: serve at {statistics.median(ratios):.1%} of protlm embed "
          f"(min {min(ratios):.1%}, max {max(ratios):.1%}); goal >= 90%")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_name(),
                                        "torch": torch.__version__, "records": len(records), "residues": residues,
                                        "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
