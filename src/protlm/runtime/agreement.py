"""`--dtype auto` on a named model: each precision measured on the model itself, for speed and
for agreement with fp32.

For fp32, bf16 and int8 in turn the model is loaded, prepared as `prepare_model` prepares it on
the CPU, and run on three real proteins packed into one forward (ubiquitin, protein G's B1
domain, GFP: 373 tokens): the forward's time (best of a few) and the smallest cosine between
each protein's mean embedding and fp32's. auto takes the fastest precision whose cosine is at
least precision.MIN_COSINE (0.999). This ranks what the model's whole forward costs (per-token
quantization, attention, GELU, not only the GEMMs), which a one-Linear probe cannot: on an
AVX-512 BF16 CPU bf16 beat int8 on ESM-2 35M while int8 won the Linear.

Measured once per weights, precision, CPU (model and flags), thread count and torch version, and
remembered in protlm's cache folder under `auto/` (keyed like the int8 cache: the weight files'
names, sizes and modification times). A first run costs one load per precision, int8's first
quantization and a few forwards; later runs read the file.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from protlm.io import atomic_path
from protlm.models.layout import cu_seqlens_from_lengths
from protlm.runtime.int8_cache import cache_root, source_files, source_key
from protlm.runtime.precision import cpu_features, prepare_model

VERSION = "2"  # 2: speed measured on the model, not only agreement
DTYPES = ("fp32", "bf16", "int8")
REPEATS = 3

# Real proteins of three sizes: human ubiquitin, protein G's B1 domain, GFP.
PROTEINS = (
    ("ubiquitin", "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"),
    ("gb1", "MTYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"),
    ("gfp", "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTFSYGVQCFSRYPDHMKQHDFF"
            "KSAMPEGYVQERTIFFKDDGNYKTRAEVKFEGDTLVNRIELKGIDFKEDGNILGHKLEYNYNSHNVYIMADKQKNGIKVNFKIRHN"
            "IEDGSVQLADHYQQNTPIGDGPVLLPDNHYLSTQSALSKDPNEKRDHMVLLEFVTAAGITHGMDELYK"),
)


def packed_proteins(alphabet) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N,), cu_seqlens (3+1,)): PROTEINS with their BOS/EOS, one after another."""
    convert = alphabet.get_batch_converter()
    pieces = [convert([(name, seq)])[2][0] for name, seq in PROTEINS]
    return torch.cat(pieces), cu_seqlens_from_lengths(torch.tensor([len(p) for p in pieces]))


def timed_mean_embeddings(model, repeats: int = REPEATS) -> tuple[torch.Tensor, float]:
    """((len(PROTEINS), D) float32 mean last-layer representation per protein, best seconds of
    `repeats` runs after a warm-up). One packed forward; one forward per protein for models
    without a packed forward (`supports_packing` False: ProtT5)."""
    tokens, cu = packed_proteins(model.alphabet)
    spans = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    packed = getattr(model, "supports_packing", True)

    def run() -> list[torch.Tensor]:
        if packed:
            reps = model(tokens, repr_layers=[-1], return_logits=False, cu_seqlens=cu)["representations"]
            x = next(iter(reps.values()))
            return [x[a:b] for a, b in spans]
        return [next(iter(model(tokens[None, a:b], repr_layers=[-1], return_logits=False)
                          ["representations"].values()))[0] for a, b in spans]

    best, pieces = float("inf"), None
    with torch.inference_mode():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            pieces = run()
            if i:  # the first call warms up (packs weights, allocates)
                best = min(best, time.perf_counter() - t0)
    return torch.stack([p.float().mean(0) for p in pieces]), best


def _cache_file(name_or_path: str) -> Path | None:
    files = source_files(name_or_path)
    if not files:
        return None
    key = json.dumps([VERSION, source_key(files), cpu_features(), torch.get_num_threads(), torch.__version__])
    return cache_root() / "auto" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def measure(name_or_path: str, loader=None) -> dict[str, dict[str, float]]:
    """{dtype: {"seconds": forward time, "cosine": smallest cosine against fp32}} for DTYPES on
    the CPU, read from the cache when measured before. `loader(name)` -> (model, alphabet)."""
    from protlm.pretrained.load import load_model_and_alphabet

    path = _cache_file(str(name_or_path))
    if path is not None:
        try:
            return json.loads(path.read_text())["measured"]
        except (OSError, ValueError, KeyError):
            pass
    out, ref = {}, None
    for dtype in DTYPES:  # one model in memory at a time
        model, _ = (loader or load_model_and_alphabet)(name_or_path)
        model = prepare_model(model, "cpu", dtype, source=str(name_or_path), verbose=False)
        means, seconds = timed_mean_embeddings(model)
        del model
        ref = means if ref is None else ref  # fp32 comes first
        out[dtype] = {"seconds": seconds, "cosine": F.cosine_similarity(means, ref, dim=1).min().item()}
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({"model": str(name_or_path), "measured": out}, indent=1))
        except OSError:  # not remembered: measured again next time, nothing else
            pass
    return out
