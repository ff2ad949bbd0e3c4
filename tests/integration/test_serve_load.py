"""`protlm serve` as a process: 32 concurrent clients on loopback for a few seconds, every reply
checked against `protlm embed`'s numbers for its records; then SIGTERM with work in flight.

The server is the real command (`python -m protlm.cli.main serve`) on a debug model saved as a
protlm folder; the reference is the library engine `protlm embed` runs, on the same folder.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

import protlm
from protlm.data.fasta import load_fasta
from protlm.embed import EmbedConfig
from protlm.embed.pipeline import make_engine
from protlm.runtime.options import InferenceOptions
from protlm.models.layers import init_weights
from protlm.pretrained.protlm_format import save_protlm
from protlm.pretrained.registry import build_debug

CLIENTS, SECONDS, TOL = 32, 10.0, 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = build_debug("esm2_debug")
    init_weights(m)  # realistic magnitudes, so 1e-5 means something
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("serve") / "debug_model"
    save_protlm(m.eval(), path)
    return path


@pytest.fixture(scope="module")
def pool(shared_data):
    """Mixed lengths: real proteins (71-935 residues) and pieces of them (8-200)."""
    seqs = [r.sequence for r in load_fasta(shared_data / "sequences" / "some_proteins.fasta")]
    rng = random.Random(0)
    pieces = []
    for _ in range(25):
        s = rng.choice(seqs)
        n = rng.randint(8, min(200, len(s)))
        start = rng.randint(0, len(s) - n)
        pieces.append(s[start : start + n])
    return seqs + pieces


@pytest.fixture(scope="module")
def reference(model_dir, pool):
    """Mean of the last layer per pool sequence, as `protlm embed` computes it."""
    model, alphabet = protlm.load_model_and_alphabet(model_dir)
    engine = make_engine(model, alphabet, EmbedConfig(), InferenceOptions())
    out = [None] * len(pool)
    for idx, recs in engine.run(pool, {"mean"}):
        for i, r in zip(idx, recs):
            out[i] = r["mean"][0]
    return out


@pytest.fixture(scope="module")
def server(model_dir):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "protlm.cli.main", "serve", "--model", str(model_dir),
                             "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "server not ready in 60 s"
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def _client(k, http, pool, reference, stop_at, stats):
    rng = random.Random(k)
    while time.monotonic() < stop_at:
        picks = rng.sample(range(len(pool)), rng.randint(1, 3))
        body = {"sequences": [{"id": f"c{k}-{i}", "sequence": pool[i]} for i in picks]}
        t0 = time.monotonic()
        r = await http.post("/v1/embeddings", json=body)
        stats["latency"].append(time.monotonic() - t0)
        if r.status_code != 200:
            stats["failed"].append(f"{r.status_code}: {r.text[:200]}")
            continue
        for i, d in zip(picks, r.json()["data"]):
            diff = (torch.tensor(d["mean"]["2"]) - reference[i]).abs().max().item()
            if d["id"] != f"c{k}-{i}" or diff > TOL:
                stats["wrong"].append((d["id"], diff))
        stats["residues"] += sum(len(pool[i]) for i in picks)


async def _load(url, pool, reference):
    stats = {"latency": [], "failed": [], "wrong": [], "residues": 0}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        t0 = time.monotonic()
        await asyncio.gather(*(_client(k, http, pool, reference, t0 + SECONDS, stats) for k in range(CLIENTS)))
        stats["seconds"] = time.monotonic() - t0
    return stats


def test_32_clients_lose_nothing_and_get_protlm_embeds_numbers(server, pool, reference, capsys):
    _, url = server
    stats = asyncio.run(_load(url, pool, reference))
    lat = sorted(stats["latency"])
    n = len(lat)
    assert n >= CLIENTS and not stats["failed"] and not stats["wrong"], (stats["failed"][:3], stats["wrong"][:3])
    metrics = httpx.get(url + "/metrics").text
    served = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('protlm_requests_total{endpoint="/v1/embeddings",status="200"}'))
    assert served >= n  # every request the clients sent was answered by the server
    with capsys.disabled():
        print(f"\nserve load test: {CLIENTS} clients, {stats['seconds']:.1f} s, {n} requests, "
              f"{n / stats['seconds']:.0f} requests/s, {stats['residues'] / stats['seconds']:.0f} residues/s, "
              f"latency p50 {lat[n // 2] * 1000:.0f} ms, p99 {lat[min(n - 1, int(n * 0.99))] * 1000:.0f} ms")


def test_sigterm_answers_the_requests_in_flight_then_exits_0(server):
    proc, url = server
    wt = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV" * 2

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            replies = [asyncio.ensure_future(http.post("/v1/variants", json={"id": f"v{k}", "sequence": wt}))
                       for k in range(4)]
            while True:  # wait until all four are queued, then ask the server to stop
                if "protlm_requests_in_flight 4\n" in (await http.get("/metrics")).text:
                    break
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*replies)

    replies = asyncio.run(main())
    assert [r.status_code for r in replies] == [200] * 4
    assert all(len(r.json()["matrix"]) == len(wt) for r in replies)
    assert proc.wait(timeout=60) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/healthz")
