"""Inference speed and memory: protlm vs fair-esm 2.0.0 vs transformers (sdpa), same weights.

Weights cannot be downloaded here, so all three implementations get the same random weights
(seeded): a fair-esm model is built and its state dict is loaded into protlm (identical keys)
and into transformers' EsmForMaskedLM (protlm's key map, `protlm.pretrained.convert`).
Speed and memory do not depend on the weight values; outputs are checked to agree.

Scenarios
  single    one real sequence cropped to 371 residues, plain forward, last-layer representation
  mix       N real sequences (some_proteins.fasta + de-gapped MSA hits, fixed seed, cropped at
            1022); fair-esm as its scripts/extract.py (get_batch_indices(4096, extra_toks=1)),
            transformers on the same batches, protlm through `protlm.embed.extract`
  contacts  the single sequence with contacts; reported with its overhead over `single`

tokens/s = residues / wall time (median of --repeats, after one warm-up, runs interleaved
A,B,C,A,B,C). Peak memory: each (implementation, scenario) in a fresh subprocess; peak RSS
(VmHWM, reset through /proc/self/clear_refs after the weights are loaded) minus the RSS with
the weights loaded.

    python benchmarks/bench_inference.py --family esm1b --repeats 3 --out /tmp/bench.json
    python benchmarks/bench_inference.py --family esm1b --layers 4 --repeats 1   # quick check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

IMPLS = ("protlm", "fair-esm", "transformers")
SCENARIOS = ("single", "mix", "contacts")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SINGLE_LEN = 371
TOKS_PER_BATCH = 4096


# ---------------------------------------------------------------- inputs
def _read_a3m(path: Path) -> list[tuple[str, str]]:
    """A3M hits -> (id, own sequence): drop gaps, keep insertions (upper-cased)."""
    out, name, parts = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if name is not None:
                out.append((name, "".join(parts).replace("-", "").upper()))
            name, parts = line[1:].strip() or "hit", []
        elif line.strip():
            parts.append(line.strip())
    if name is not None:
        out.append((name, "".join(parts).replace("-", "").upper()))
    return out


def load_mix(n: int, seed: int = 0, data: Path = DATA) -> list[tuple[str, str]]:
    """n real sequences, sampled with a fixed seed, cropped at 1022 residues, unique ids."""
    from protlm.data.fasta import read_fasta

    pool = [(r.id, r.sequence) for r in read_fasta(data / "sequences" / "some_proteins.fasta")]
    for a3m in sorted((data / "msas").glob("*.a3m")):
        pool += [(f"{a3m.stem}_{i}", s) for i, (_, s) in enumerate(_read_a3m(a3m))]
    std = set("ACDEFGHIKLMNPQRSTVWYXBZUO")
    pool = [(i, s) for i, s in pool if s and set(s) <= std]
    picked = random.Random(seed).sample(pool, n)
    return [(f"s{k}_{i}", s[:1022]) for k, (i, s) in enumerate(picked)]


def single_sequence(data: Path = DATA) -> str:
    """The first sequence of some_proteins.fasta with >= 371 residues, cropped to 371."""
    from protlm.data.fasta import read_fasta

    for r in read_fasta(data / "sequences" / "some_proteins.fasta"):
        if len(r.sequence) >= SINGLE_LEN:
            return r.sequence[:SINGLE_LEN]
    raise RuntimeError("no sequence of 371 residues in some_proteins.fasta")


# ---------------------------------------------------------------- models
def protlm_config(family: str, layers: int | None):
    from protlm.models import esm1b_config, esm2_config

    cfg = esm1b_config() if family == "esm1b" else esm2_config(33, 1280, 20)
    return dataclasses.replace(cfg, num_layers=layers) if layers else cfg


def build_reference(cfg):
    """fair-esm's own class for the family, random weights (seeded by the caller)."""
    import esm
    from esm.model.esm1 import ProteinBertModel
    from esm.model.esm2 import ESM2

    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    if cfg.position_embedding == "learned":
        args = argparse.Namespace(
            arch="roberta_large", layers=cfg.num_layers, embed_dim=cfg.embed_dim,
            ffn_embed_dim=cfg.ffn_embed_dim, attention_heads=cfg.attention_heads,
            max_positions=cfg.max_positions, emb_layer_norm_before=True, token_dropout=True)
        return ProteinBertModel(args, alphabet).eval(), alphabet
    return ESM2(cfg.num_layers, cfg.embed_dim, cfg.attention_heads, alphabet, token_dropout=True).eval(), alphabet


def build_transformers(cfg, state=None):
    from transformers import EsmConfig, EsmForMaskedLM

    from protlm import Alphabet
    from protlm.pretrained.convert import protlm_config_to_hf, protlm_to_hf

    hf_cfg = EsmConfig(**protlm_config_to_hf(cfg, Alphabet()))
    hf_cfg._attn_implementation = "sdpa"
    model = EsmForMaskedLM(hf_cfg).eval()
    if state is not None:
        missing, unexpected = model.load_state_dict(protlm_to_hf(state), strict=False)
        assert not unexpected and all("decoder" in k or "inv_freq" in k for k in missing), (missing, unexpected)
    return model


def build(impl: str, cfg, seed: int = 0):
    """One implementation with the seeded reference weights."""
    from protlm import build_model

    torch.manual_seed(seed)
    ref, _ = build_reference(cfg)
    if impl == "fair-esm":
        return ref
    model = build_model(cfg).eval()
    model.load_state_dict(ref.state_dict())  # identical keys: strict
    del ref
    return model if impl == "protlm" else build_transformers(cfg, model.state_dict())


# ---------------------------------------------------------------- what each implementation runs
def _tokens(seqs: list[tuple[str, str]]) -> torch.Tensor:
    from protlm import Alphabet

    return Alphabet().get_batch_converter()(seqs)[2]


def run_forward(impl: str, model, tokens_BT: torch.Tensor, contacts: bool = False) -> dict:
    """One forward: last-layer representation (B, T, D), plus contacts (B, L, L) if asked."""
    n = model.config.num_hidden_layers if impl == "transformers" else model.num_layers
    if impl == "protlm":
        out = model(tokens_BT, repr_layers=[n], return_contacts=contacts, return_logits=False)
        return {"repr": out["representations"][n], "contacts": out.get("contacts")}
    if impl == "fair-esm":
        out = model(tokens_BT, repr_layers=[n], return_contacts=contacts)
        return {"repr": out["representations"][n], "contacts": out.get("contacts")}
    mask = tokens_BT.ne(1)
    if contacts:
        # transformers' sdpa attention cannot return maps: its contact path needs eager.
        model.esm.set_attn_implementation("eager")
        try:
            out = model.esm(input_ids=tokens_BT, attention_mask=mask, output_attentions=True)
            attn = torch.stack(out.attentions, 1)  # (B, layers, heads, T, T)
            c = model.esm.contact_head(tokens_BT, attn * mask[:, None, None, :, None] * mask[:, None, None, None, :])
        finally:
            model.esm.set_attn_implementation("sdpa")
        return {"repr": out.last_hidden_state, "contacts": c}
    return {"repr": model.esm(input_ids=tokens_BT, attention_mask=mask).last_hidden_state}


def run_mix(impl: str, model, seqs: list[tuple[str, str]], fasta: Path) -> dict[str, torch.Tensor]:
    """Per-sequence mean embedding of the last layer, each implementation's own pipeline."""
    if impl == "protlm":
        from protlm import Alphabet
        from protlm.embed import EmbedConfig, extract
        from protlm.runtime.options import InferenceOptions

        cfg, opts = EmbedConfig(repr_layers=(-1,), include=("mean",)), InferenceOptions(toks_per_batch=TOKS_PER_BATCH)
        return {r.id: r.mean[model.num_layers] for r in extract(model, Alphabet(), fasta, cfg, opts)}
    import esm

    # fair-esm scripts/extract.py: length-sorted batches under a padded-token budget
    ds = esm.FastaBatchedDataset([i for i, _ in seqs], [s for _, s in seqs])
    batches = ds.get_batch_indices(TOKS_PER_BATCH, extra_toks_per_seq=1)
    convert = esm.Alphabet.from_architecture("ESM-1b").get_batch_converter(1022)
    means = {}
    for idx in batches:
        labels, strs, tokens_BT = convert([ds[i] for i in idx])
        x_BTD = run_forward(impl, model, tokens_BT)["repr"]
        for b, (label, s) in enumerate(zip(labels, strs)):
            means[label] = x_BTD[b, 1 : len(s) + 1].mean(0).clone()
    return means


def scenario_fn(impl: str, model, scenario: str, inputs: dict):
    """A no-argument callable running one scenario once."""
    if scenario == "mix":
        return lambda: run_mix(impl, model, inputs["mix"], inputs["fasta"])
    tokens = _tokens([("single", inputs["single"])])
    return lambda: run_forward(impl, model, tokens, contacts=scenario == "contacts")


def make_inputs(n_mix: int, tmpdir: Path) -> dict:
    from protlm.data.fasta import write_fasta

    mix = load_mix(n_mix)
    fasta = tmpdir / "mix.fasta"
    write_fasta(mix, fasta)
    return {"single": single_sequence(), "mix": mix, "fasta": fasta}


def residues(scenario: str, inputs: dict) -> int:
    return sum(len(s) for _, s in inputs["mix"]) if scenario == "mix" else len(inputs["single"])


# ---------------------------------------------------------------- timing (interleaved)
def time_interleaved(fns: dict[str, callable], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Wall times per name: one warm-up each, then repeats rounds of A,B,C so that load from
    other processes on the machine hits every implementation alike."""
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values() if warmup else ():
            fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[k].append(time.perf_counter() - t0)
                # CPU seconds of this process (all threads): less sensitive than wall time to
                # other jobs on a shared machine, though still slowed by their cache/memory use
                times.setdefault(f"{k} cpu", []).append(time.process_time() - c0)
    return times


def agreement(models: dict, inputs: dict) -> dict[str, float]:
    """Max abs difference to fair-esm: last representation and contacts (single sequence)."""
    tokens = _tokens([("single", inputs["single"])])
    with torch.inference_mode():
        outs = {k: run_forward(k, m, tokens, contacts=True) for k, m in models.items()}
    ref = outs.get("fair-esm")
    if ref is None:
        return {}
    diffs = {}
    for k, o in outs.items():
        if k != "fair-esm":
            diffs[f"{k} repr"] = (o["repr"] - ref["repr"]).abs().max().item()
            diffs[f"{k} contacts"] = (o["contacts"] - ref["contacts"]).abs().max().item()
    return diffs


# ---------------------------------------------------------------- memory (fresh process each)
def _rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_worker(impl: str, scenario: str, family: str, layers: int | None, n_mix: int) -> dict:
    """Peak RSS of one scenario over the loaded-weights RSS, in MiB (runs in a fresh process)."""
    import gc

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(n_mix, Path(tmp))
        model = build(impl, protlm_config(family, layers))
        fn = scenario_fn(impl, model, scenario, inputs)
        gc.collect()
        base = _rss_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak) to the current RSS
        with torch.inference_mode():
            fn()
        peak = _rss_kb("VmHWM")
    return {"weights_mib": base / 1024, "peak_mib": peak / 1024, "delta_mib": (peak - base) / 1024}


def measure_memory(impl, scenario, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, scenario, "--family", args.family,
           "--n-mix", str(args.n_mix)] + (["--layers", str(args.layers)] if args.layers else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report
def report(res: dict) -> str:
    lines = [f"family={res['family']} layers={res['layers']} threads={res['threads']} "
             f"repeats={res['repeats']} load(1,5,15)={res['load_before']} -> {res['load_after']}"]
    for sc in res["times"]:
        lines += ["", f"### {sc} ({res['residues'][sc]} residues)", "",
                  "| implementation | median s | tokens/s | vs fair-esm | peak MiB over weights |",
                  "|---|---|---|---|---|"]
        ref = statistics.median(res["times"][sc]["fair-esm"]) if "fair-esm" in res["times"][sc] else None
        for impl, ts in res["times"][sc].items():
            if impl.endswith(" cpu"):
                ref_cpu = res["times"][sc].get("fair-esm cpu")
                ratio = f"{statistics.median(ref_cpu) / statistics.median(ts):.2f}x" if ref_cpu else "-"
                lines.append(f"| {impl} (CPU s) | {statistics.median(ts):.3f} | "
                             f"{res['residues'][sc] / statistics.median(ts):.0f} per CPU-s | {ratio} | |")
                continue
            med = statistics.median(ts)
            ratio = f"{ref / med:.2f}x" if ref else "-"
            mem = res["memory"].get(sc, {}).get(impl, {}).get("delta_mib")
            lines.append(f"| {impl} | {med:.3f} | {res['residues'][sc] / med:.0f} | {ratio} | "
                         f"{'-' if mem is None else f'{mem:.0f}'} |")
    if "single" in res["times"] and "contacts" in res["times"]:
        lines += ["", "contacts overhead over a plain forward (median times):"]
        for impl in res["times"]["contacts"]:
            c, p = (statistics.median(res["times"][s][impl]) for s in ("contacts", "single"))
            impl = impl.replace(" cpu", " (CPU time)")
            lines.append(f"- {impl}: +{100 * (c / p - 1):.0f}%")
    lines += ["", "max abs diff to fair-esm: " + ", ".join(f"{k} {v:.2e}" for k, v in res["agreement"].items())]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("esm1b", "esm2"), default="esm1b")
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run (default 33)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-mix", type=int, default=64)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="write the raw results as JSON")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "SCENARIO"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(memory_worker(*args.worker, args.family, args.layers, args.n_mix)))
        return
    torch.set_num_threads(2)
    impls, scenarios = args.impls.split(","), args.scenarios.split(",")
    res = {"family": args.family, "layers": args.layers or 33, "threads": torch.get_num_threads(),
           "repeats": args.repeats, "load_before": os.getloadavg(), "times": {}, "memory": {},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(args.n_mix, Path(tmp))
        res["residues"] = {sc: residues(sc, inputs) for sc in scenarios}
        cfg = protlm_config(args.family, args.layers)
        models = {impl: build(impl, cfg) for impl in impls}
        res["agreement"] = agreement(models, inputs)
        for sc in scenarios:
            fns = {impl: scenario_fn(impl, m, sc, inputs) for impl, m in models.items()}
            # mix is long; the warm-up of the single-sequence scenarios serves it too
            res["times"][sc] = time_interleaved(fns, args.repeats, warmup=sc != "mix" or len(scenarios) == 1)
            print(sc, {k: [round(t, 3) for t in v] for k, v in res["times"][sc].items()}, flush=True)
    del models
    if not args.no_memory:
        for sc in scenarios:
            res["memory"][sc] = {impl: measure_memory(impl, sc, args) for impl in impls}
    res["load_after"] = os.getloadavg()
    text = report(res)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
