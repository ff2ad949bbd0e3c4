"""CPU inference, protlm against its peers, side by side: the same weights, the same proteins, one run.

For each ESM-2 shape asked for (--models: 8M, 35M, 150M, 650M; random weights, seeded, with the
published architecture: speed does not depend on the values) this builds ONE set of weights
and gives it to every implementation:

  fair-esm 2.0.0   fp32, batched as its scripts/extract.py (length-sorted, 4096 padded tokens)
  protlm           fp32 / bf16 / int8 (protlm.runtime.precision.prepare_model), run by the
                   inference engine protlm.embed.Engine (packed 4096-token batches)
  transformers     EsmModel (sdpa) fp32 / bf16, loaded with from_pretrained from an HF folder
                   written by save_pretrained, on fair-esm's batches (attention mask)
  esm.cpp 0.2.1    fp32 and W8A8 int8, converted by esm.cpp's own converter
                   (`python -m esm_cpp.convert`) from that HF folder's model.safetensors; int8 as
                   its `esm-cpp-quantize --apply-smoothquant` does it (activation statistics from
                   forward_with_observer on 32 other records, SmoothQuant alpha 0.5, then
                   quantize_weights), saved to GGUF and loaded back

and times each on the same real proteins (--records records of --fasta, sampled with --seed,
cut at 1022 residues), in rounds (every implementation once per round, --repeats rounds after
a warm-up; medians reported), in one worker process per thread count (--threads; esm.cpp sizes
its thread pool once per process, from ESM_NUM_THREADS).

Two figures per row, in residues/s:
  e2e    sequences in, one mean embedding (last layer, residues only) per sequence out, each
         implementation's own path: tokenising, batching, the forwards, pooling
  model  the model calls alone (the time inside the model's forward, timed by hooks around the
         top-level module: no tokenising, batching or pooling)
esm.cpp's packed API (forward_scheduled: its length-bucketed, packed batches) returns LM logits
only, so its packed rows have a model-call figure and no embeddings (the LM head adds ~1/(12 L)
of a layer's work); its embeddings come from forward_with_hidden_states, one sequence per call.

Agreement: cosine of each sequence's mean embedding against fair-esm fp32's (min over the
sequences), and the largest |difference| of those embeddings (fp32 paths: the same weights
must give the same numbers). The esm.cpp packed rows compare their logits with the logits of
esm.cpp fp32's packed run instead (cosine per sequence of the flattened logits).

    python benchmarks/bench_cpu_peers.py --models 35M 150M --out benchmarks/results/cpu_peers.json
    python benchmarks/bench_cpu_peers.py --smoke          # 8M shape, 8 short records, one round: ~20 s

Needs the test extra (fair-esm, transformers) and, for the esm.cpp rows, the bench extra
(`pip install -e '.[test,bench]'`); without esm_cpp those rows are left out and said so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sequences"
# published ESM-2 shapes: layers, width, heads (FFN 4x width)
SHAPES = {"8M": (6, 320, 20), "35M": (12, 480, 20), "150M": (30, 640, 20), "650M": (33, 1280, 20)}
IMPLS = ("fair-esm", "protlm", "transformers", "esm.cpp")
MAX_RESIDUES = 1022
TOKS_PER_BATCH = 4096
CALIBRATION_RECORDS = 32
SMOOTHQUANT_ALPHA = 0.5


# ---------------------------------------------------------------- inputs and the machine
def cpu_info() -> dict:
    """CPU model, the flags that decide bf16/int8 speed, and what torch / esm.cpp dispatch to."""
    import torch

    from protlm.runtime.precision import FEATURES, cpu_features

    feats = cpu_features()
    info = {"cpu": feats["cpu"], "cores": len(os.sched_getaffinity(0)), "flags": {f: feats[f] for f in FEATURES},
            "torch": torch.__version__, "torch_kernels": feats["torch_capability"]}
    with contextlib.suppress(ImportError):
        import esm_cpp

        info["esm_cpp"] = {"version": esm_cpp.__version__, "isa": esm_cpp.current_isa()}
    return info


def describe(info: dict) -> str:
    have = " ".join(f.upper() for f, v in info["flags"].items() if v) or "-"
    lack = " ".join(f.upper() for f, v in info["flags"].items() if not v) or "-"
    ec = info.get("esm_cpp")
    esm_cpp = f"; esm.cpp {ec['version']} ISA {ec['isa']}" if ec else ""
    return (f"{info['cpu']}, {info['cores']} cores: {have}; no {lack} "
            f"(torch {info['torch']} kernels {info['torch_kernels']}{esm_cpp})")


def load_records(fasta: Path, n: int, seed: int, skip: frozenset[str] = frozenset(),
                 max_residues: int = MAX_RESIDUES) -> list[tuple[str, str]]:
    """n records sampled with `seed` (ids not in `skip`), cut at `max_residues`."""
    from protlm.data.fasta import read_fasta

    pool = [(r.id, r.sequence) for r in read_fasta(fasta) if r.id not in skip]
    picked = random.Random(seed).sample(pool, min(n, len(pool)))
    return [(i, s[:max_residues]) for i, s in picked]


# ---------------------------------------------------------------- one set of weights, four implementations
class Timer:
    """Seconds spent inside a module's forward (pre/post hooks on the top-level module)."""

    def __init__(self, module=None):
        self.seconds, self._t0 = 0.0, None
        if module is not None:
            module.register_forward_pre_hook(lambda *_: self.start())
            module.register_forward_hook(lambda *_: self.stop())

    def start(self):
        self._t0 = time.perf_counter()

    def stop(self):
        self.seconds += time.perf_counter() - self._t0


def build_weights(shape: str, seed: int):
    """(fair-esm ESM2, protlm fp32 ESM with the same state, protlm config)."""
    import torch

    from protlm import build_model
    from protlm.models import esm2_config

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_inference import build_reference

    cfg = esm2_config(*SHAPES[shape])
    torch.manual_seed(seed)
    ref, _ = build_reference(cfg)
    model = build_model(cfg).eval()
    model.load_state_dict(ref.state_dict())  # identical keys: strict
    return ref, model, cfg


def write_hf_folder(protlm_model, folder: Path) -> Path:
    """The weights as an HF EsmForMaskedLM folder (save_pretrained), its model.safetensors in the
    published checkpoints' key layout, which esm.cpp's loader reads: transformers 5 writes
    LayerNorm weights under their legacy names (gamma/beta) and no rotary inv_freq (a buffer it
    does not save), where the published facebook/esm2_* files hold weight/bias and one inv_freq
    per layer. Same tensors, re-keyed; transformers reads either layout."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_inference import build_transformers

    hf = build_transformers(protlm_model.config, protlm_model.state_dict())
    hf.save_pretrained(folder)
    state = {k: v.detach().contiguous().clone() for k, v in hf.state_dict().items()
             if k not in ("lm_head.decoder.weight", "esm.rotary_embeddings.inv_freq")}  # tied; per layer below
    inv_freq = hf.state_dict()["esm.rotary_embeddings.inv_freq"].float()
    for i in range(protlm_model.config.num_layers):
        state[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    for stale in folder.glob("model-*.safetensors*"):  # no shards beside the one file
        stale.unlink()
    with contextlib.suppress(FileNotFoundError):
        (folder / "model.safetensors.index.json").unlink()
    del hf
    torch.manual_seed(0)
    return folder


def esm_cpp_models(folder: Path, calibration: list[str]) -> dict:
    """{'fp32': model, 'int8': model} converted from the HF folder by esm.cpp's own tools."""
    import esm_cpp
    from esm_cpp.quantize import calibrate

    fp32_gguf, int8_gguf = folder / "esm_cpp_fp32.gguf", folder / "esm_cpp_int8.gguf"
    subprocess.run([sys.executable, "-m", "esm_cpp.convert", "--hf", str(folder / "model.safetensors"),
                    "--out", str(fp32_gguf)], check=True, capture_output=True, text=True)
    q = esm_cpp.Model.load_from_gguf(str(fp32_gguf))
    stats = calibrate(q, esm_cpp.Tokenizer(), calibration)  # its --calibrate (99.9th percentiles)
    q.apply_smoothquant(stats, SMOOTHQUANT_ALPHA)  # its --apply-smoothquant
    q.quantize_weights()
    q.save_to_gguf(str(int8_gguf))
    del q
    models = {"fp32": esm_cpp.Model.load_from_gguf(str(fp32_gguf)),
              "int8": esm_cpp.Model.load_from_gguf(str(int8_gguf))}
    assert not models["fp32"].config.weights_quantized and models["int8"].config.weights_quantized
    return models


# ---------------------------------------------------------------- what each implementation runs
def extract_batches(seqs: list[tuple[str, str]]):
    """fair-esm scripts/extract.py's batches: (labels, strings, tokens (B, T)) under 4096 padded tokens."""
    import esm

    ds = esm.FastaBatchedDataset([i for i, _ in seqs], [s for _, s in seqs])
    convert = esm.Alphabet.from_architecture("ESM-1b").get_batch_converter(MAX_RESIDUES)
    return [convert([ds[i] for i in idx]) for idx in ds.get_batch_indices(TOKS_PER_BATCH, extra_toks_per_seq=1)]


def fair_esm_runner(model, seqs):
    n = model.num_layers

    def run():
        means = {}
        for labels, strs, tokens in extract_batches(seqs):
            x = model(tokens, repr_layers=[n])["representations"][n]
            for b, (label, s) in enumerate(zip(labels, strs)):
                means[label] = x[b, 1: len(s) + 1].mean(0).clone()
        return means
    return run


def transformers_runner(model, seqs):
    import torch

    def run():
        means = {}
        for labels, strs, tokens in extract_batches(seqs):  # the same tokens: ESM-1b/ESM-2 alphabet
            x = model(input_ids=tokens, attention_mask=tokens.ne(1)).last_hidden_state
            for b, (label, s) in enumerate(zip(labels, strs)):
                means[label] = x[b, 1: len(s) + 1].to(torch.float32).mean(0)
        return means
    return run


def protlm_runner(model, seqs):
    from protlm.embed.engine import Engine

    engine = Engine(model, toks_per_batch=TOKS_PER_BATCH)
    ids, strs = [i for i, _ in seqs], [s for _, s in seqs]

    def run():
        return dict(zip(ids, engine.pooled(strs, "mean")[:, 0]))
    return run


def esm_cpp_hidden_runner(model, seqs, timer: Timer):
    """esm.cpp's embeddings: forward_with_hidden_states (one sequence per call), last = post final LN."""
    import esm_cpp
    import numpy as np
    import torch

    tok = esm_cpp.Tokenizer()

    def run():
        means = {}
        for label, s in seqs:
            ids = np.asarray(tok.encode(s), dtype=np.int32)
            timer.start()
            _, hidden = model.forward_with_hidden_states(ids)
            timer.stop()
            means[label] = torch.from_numpy(hidden[-1][1:-1].mean(0))
        return means
    return run


def esm_cpp_packed_runner(model, seqs, timer: Timer):
    """esm.cpp's packed, length-bucketed batches (forward_scheduled): logits per sequence."""
    import esm_cpp
    import numpy as np
    import torch

    tok = esm_cpp.Tokenizer()
    ids = [np.asarray(tok.encode(s), dtype=np.int32) for _, s in seqs]

    def run():
        timer.start()
        out = model.forward_scheduled(ids)
        timer.stop()
        return {label: torch.from_numpy(o) for (label, _), o in zip(seqs, out)}
    return run


def check_tokens(seqs):
    """esm.cpp's tokenizer gives the ESM alphabet's ids (so every implementation reads the same input)."""
    import esm_cpp

    from protlm import Alphabet

    a, tok = Alphabet(), esm_cpp.Tokenizer()
    for label, s in seqs:
        ours = [a.cls_idx, *(a.get_idx(c) for c in s), a.eos_idx]
        if tok.encode(s) != ours:
            raise SystemExit(f"esm.cpp tokenises {label} differently from the ESM alphabet")


# ---------------------------------------------------------------- one (shape, thread count): the worker
def worker(shape: str, threads: int, seqs, calibration, impls, protlm_dtypes, repeats: int, seed: int,
           workdir: Path) -> dict:
    import torch

    torch.set_num_threads(threads)
    from protlm.runtime.precision import prepare_model

    with contextlib.suppress(ImportError):  # its load reports and progress bars are noise here
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    load_before = os.getloadavg()

    t_setup = time.perf_counter()
    ref, base, cfg = build_weights(shape, seed)
    makers, timers, prep = {}, {}, {}  # name -> (sequences -> a no-argument run), its model-call timer

    def add(name, make, timer):
        makers[name], timers[name] = make, timer

    if "fair-esm" in impls:
        add("fair-esm fp32", lambda s: fair_esm_runner(ref, s), Timer(ref))
    hf_folder = None
    if "transformers" in impls or "esm.cpp" in impls:
        hf_folder = write_hf_folder(base, workdir / f"hf_{shape}")
    if "protlm" in impls:
        for dt in protlm_dtypes:
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            m = prepare_model(m, "cpu", dt, verbose=False)
            prep[f"protlm {dt}"] = time.perf_counter() - t0
            add(f"protlm {dt}", lambda s, m=m: protlm_runner(m, s), Timer(m))
    if "transformers" in impls:
        from transformers import EsmModel

        for dt, torch_dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            hf = EsmModel.from_pretrained(hf_folder, add_pooling_layer=False, attn_implementation="sdpa",
                                          dtype=torch_dt).eval()
            add(f"transformers {dt}", lambda s, m=hf: transformers_runner(m, s), Timer(hf))
    notes = []
    if "esm.cpp" in impls:
        try:
            import esm_cpp  # noqa: F401
        except ImportError:
            notes.append("esm.cpp: not installed (pip install -e '.[bench]'): its rows are left out")
        else:
            check_tokens(seqs)
            t0 = time.perf_counter()
            ec = esm_cpp_models(hf_folder, calibration)
            prep["esm.cpp int8"] = time.perf_counter() - t0
            for kind, runner in (("", esm_cpp_hidden_runner), (" packed", esm_cpp_packed_runner)):
                for dt, m in ec.items():
                    tm = Timer()
                    add(f"esm.cpp {dt}{kind}", lambda s, m=m, tm=tm, runner=runner: runner(m, s, tm), tm)
    del base
    setup_s = time.perf_counter() - t_setup

    with torch.inference_mode():
        for make in makers.values():  # warm-up on two sequences: packs weights, allocates, caches
            make(seqs[:2])()
        runners = {name: make(seqs) for name, make in makers.items()}
        e2e, model_s, outs = {k: [] for k in runners}, {k: [] for k in runners}, {}
        for rnd in range(repeats):
            for name, fn in runners.items():
                timers[name].seconds = 0.0
                t0 = time.perf_counter()
                outs[name] = fn()
                e2e[name].append(time.perf_counter() - t0)
                model_s[name].append(timers[name].seconds)
                print(f"  [{shape} x{threads}] round {rnd + 1} {name:24s} {e2e[name][-1]:7.2f} s "
                      f"(model {model_s[name][-1]:7.2f} s)", file=sys.stderr, flush=True)
    residues = sum(len(s) for _, s in seqs)
    rows = {}
    for name in runners:
        packed = name.endswith("packed")
        ref_out = outs.get("esm.cpp fp32 packed" if packed else "fair-esm fp32")
        row = {"e2e_s": e2e[name], "model_s": model_s[name],
               "model_res_per_s": residues / statistics.median(model_s[name]),
               "e2e_res_per_s": None if packed else residues / statistics.median(e2e[name]),
               "prepare_s": prep.get(name)}
        if packed:  # logits only: the packed API's output is (L + 2, vocab) per sequence
            row["e2e_s"] = None
        if ref_out is not None:
            row.update(agreement(ref_out, outs[name]))
        rows[name] = row
    return {"shape": shape, "layers": cfg.num_layers, "embed_dim": cfg.embed_dim, "threads": threads,
            "records": len(seqs), "residues": residues, "repeats": repeats, "setup_s": setup_s,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "notes": notes, "rows": rows}


def agreement(ref: dict, out: dict) -> dict:
    import torch

    cos = [torch.nn.functional.cosine_similarity(ref[k].flatten().float(), out[k].flatten().float(), dim=0).item()
           for k in ref]
    diff = [(ref[k].float() - out[k].float()).abs().max().item() for k in ref]
    return {"min_cosine": min(cos), "mean_cosine": statistics.fmean(cos), "max_abs_diff": max(diff)}


# ---------------------------------------------------------------- the table
def table(result: dict) -> str:
    lines = []
    for run in result["runs"]:
        rows = run["rows"]
        fair = rows.get("fair-esm fp32")
        load = "/".join(f"{x:.1f}" for x in (run["loadavg_before"][0], run["loadavg_after"][0]))
        lines.append(f"\nESM-2 {run['shape']} shape ({run['layers']} x {run['embed_dim']}), {run['threads']} "
                     f"thread(s), {run['records']} records / {run['residues']} residues, median of "
                     f"{run['repeats']} round(s); machine load average {load} (before/after)")
        for note in run["notes"]:
            lines.append(f"  note: {note}")
        lines.append(f"  {'implementation':24s} {'e2e res/s':>10s} {'x fair':>7s} {'model res/s':>12s} "
                     f"{'x fair':>7s} {'min cos':>9s} {'max |diff|':>10s}")
        for name, r in rows.items():
            e2e = "-" if r["e2e_res_per_s"] is None else f"{r['e2e_res_per_s']:10.0f}"
            xe = "-" if r["e2e_res_per_s"] is None or not fair else f"{r['e2e_res_per_s'] / fair['e2e_res_per_s']:6.2f}x"
            xm = "-" if not fair else f"{r['model_res_per_s'] / fair['model_res_per_s']:6.2f}x"
            cos = "-" if "min_cosine" not in r else f"{r['min_cosine']:9.6f}"
            diff = "-" if "max_abs_diff" not in r else f"{r['max_abs_diff']:10.2e}"
            lines.append(f"  {name:24s} {e2e:>10s} {xe:>7s} {r['model_res_per_s']:12.0f} {xm:>7s} {cos:>9s} {diff:>10s}")
        for line in targets(rows):
            lines.append(f"  {line}")
    lines.append("\ncosines: mean embeddings against fair-esm fp32's; '... packed' rows: logits against "
                 "esm.cpp fp32 packed's. e2e: sequences to mean embeddings; model: the forwards alone.")
    return "\n".join(lines)


def targets(rows: dict) -> list[str]:
    """Issue 27's targets, as ratios of this run's medians."""
    out = []
    fair, p8, pf = rows.get("fair-esm fp32"), rows.get("protlm int8"), rows.get("protlm fp32")
    if fair and p8:
        out.append(f"target int8 >= 3x fair-esm fp32: e2e {p8['e2e_res_per_s'] / fair['e2e_res_per_s']:.2f}x, "
                   f"model {p8['model_res_per_s'] / fair['model_res_per_s']:.2f}x")
    ec = [(rows[k]["model_res_per_s"], k) for k in ("esm.cpp int8", "esm.cpp int8 packed") if k in rows]
    if p8 and ec:
        best, name = max(ec)  # esm.cpp's faster int8 path in this run
        out.append(f"target int8 >= 1.0x esm.cpp int8 ({name!r}, its faster path, model calls): protlm int8 "
                   f"model calls {p8['model_res_per_s'] / best:.2f}x, protlm int8 e2e {p8['e2e_res_per_s'] / best:.2f}x")
    if fair and pf:
        out.append(f"target fp32 >= 1.5x fair-esm fp32: e2e {pf['e2e_res_per_s'] / fair['e2e_res_per_s']:.2f}x, "
                   f"model {pf['model_res_per_s'] / fair['model_res_per_s']:.2f}x")
    return out


# ---------------------------------------------------------------- driver
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["35M", "150M"], choices=list(SHAPES))
    p.add_argument("--fasta", type=Path, default=DATA / "cath_s40.fasta")
    p.add_argument("--records", type=int, default=300)
    p.add_argument("--max-residues", type=int, default=MAX_RESIDUES, help="records are cut at this length")
    p.add_argument("--seed", type=int, default=0, help="picks the records and the weights")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts, one worker process each (default: 1 and all cores)")
    p.add_argument("--repeats", type=int, default=3, help="rounds (medians are reported)")
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "int8"], choices=["fp32", "bf16", "int8"],
                   help="protlm's paths (fp32 always runs)")
    p.add_argument("--smoke", action="store_true",
                   help="a quick check: 8M shape, 8 records cut at 96 residues, one round, all cores only")
    p.add_argument("--out", type=Path, default=None, help="JSON results")
    p.add_argument("--table", type=Path, default=None, help="print the table of an earlier --out file and stop")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.table is not None:
        result = json.loads(args.table.read_text())
        print(f"CPU: {describe(result['cpu'])}\ncommand: {result['command']}{table(result)}")
        return

    if args.worker is not None:  # one (shape, threads) in this process; arguments and result in JSON
        job = json.loads(args.worker.read_text())
        res = worker(job["shape"], job["threads"], [tuple(s) for s in job["seqs"]], job["calibration"],
                     job["impls"], job["dtypes"], job["repeats"], job["seed"], Path(job["workdir"]))
        args.worker.with_suffix(".out.json").write_text(json.dumps(res))
        return

    cores = len(os.sched_getaffinity(0))
    if args.smoke:
        args.models, args.records, args.repeats, args.max_residues = ["8M"], 8, 1, 96
        args.threads = args.threads or [cores]
    threads = args.threads or sorted({1, cores})
    dtypes = ["fp32"] + [d for d in args.dtypes if d != "fp32"]
    seqs = load_records(args.fasta, args.records, args.seed, max_residues=args.max_residues)
    calibration = [s for _, s in load_records(args.fasta, CALIBRATION_RECORDS, args.seed + 1,
                                              frozenset(i for i, _ in seqs), args.max_residues)]
    info = cpu_info()
    print(f"CPU: {describe(info)}", flush=True)
    print(f"input: {len(seqs)} records of {args.fasta.name} (seed {args.seed}), "
          f"{sum(len(s) for _, s in seqs)} residues", flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "cpu": info, "fasta": str(args.fasta.name), "seed": args.seed, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_cpu_peers_") as tmp:
        for shape in args.models:
            for n in threads:
                job = Path(tmp) / f"{shape}_{n}.json"
                job.write_text(json.dumps({"shape": shape, "threads": n, "seqs": seqs, "calibration": calibration,
                                           "impls": args.impls, "dtypes": dtypes, "repeats": args.repeats,
                                           "seed": args.seed, "workdir": tmp}))
                env = {**os.environ, "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n),
                       "ESM_NUM_THREADS": str(n)}
                subprocess.run([sys.executable, __file__, "--worker", str(job)], check=True, env=env)
                run = json.loads(job.with_suffix(".out.json").read_text())
                result["runs"].append(run)
                print(table({"runs": [run]}), flush=True)
                for d in Path(tmp).glob("hf_*"):
                    shutil.rmtree(d, ignore_errors=True)
                if args.out:
                    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
