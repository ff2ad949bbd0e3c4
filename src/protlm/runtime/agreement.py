"""`--dtype auto`'s accuracy rule: a faster precision is taken only if, on the model at hand, it
keeps the mean embeddings of a few real proteins within cosine 0.999 (precision.MIN_COSINE) of fp32.

Measured once per model weights and precision, and remembered in protlm's cache folder under
`auto/`, keyed like the int8 cache (the weight files' names, sizes and modification times), so
later runs cost nothing. A first run costs a load of the model and two forwards over ~370
residues per precision checked. Checked on the CPU, where auto chooses among precisions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from protlm.io import atomic_path
from protlm.runtime.int8_cache import cache_root, source_files, source_key
from protlm.runtime.precision import prepare_model

VERSION = "1"

# Real proteins of three sizes: human ubiquitin, protein G's B1 domain, GFP.
PROTEINS = (
    ("ubiquitin", "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"),
    ("gb1", "MTYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"),
    ("gfp", "MSKGEELFTGVVPILVELDGDVNGHKFSVSGEGEGDATYGKLTLKFICTTGKLPVPWPTLVTTFSYGVQCFSRYPDHMKQHDFF"
            "KSAMPEGYVQERTIFFKDDGNYKTRAEVKFEGDTLVNRIELKGIDFKEDGNILGHKLEYNYNSHNVYIMADKQKNGIKVNFKIRHN"
            "IEDGSVQLADHYQQNTPIGDGPVLLPDNHYLSTQSALSKDPNEKRDHMVLLEFVTAAGITHGMDELYK"),
)


def mean_embeddings(model) -> torch.Tensor:
    """(len(PROTEINS), D) float32: each protein's last-layer representation averaged over its tokens."""
    convert = model.alphabet.get_batch_converter()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for name, seq in PROTEINS:
            tokens = convert([(name, seq)])[2].to(device)
            reps = model(tokens, repr_layers=[-1], return_logits=False)["representations"]
            out.append(next(iter(reps.values()))[0].float().mean(0).cpu())
    return torch.stack(out)


def _cache_file(name_or_path: str, dtype: str) -> Path | None:
    files = source_files(name_or_path)
    if not files:
        return None
    key = json.dumps([VERSION, source_key(files), dtype, torch.__version__])
    return cache_root() / "auto" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def cosine_to_fp32(name_or_path: str, dtype: str, loader=None) -> float:
    """The smallest cosine, over PROTEINS, between the mean embeddings of the model in `dtype` (as
    prepare_model makes it on the CPU) and in fp32; auto takes `dtype` if it is >= MIN_COSINE. `loader(name)` -> (model, alphabet)."""
    from protlm.pretrained.load import load_model_and_alphabet

    path = _cache_file(str(name_or_path), dtype)
    if path is not None:
        try:
            return float(json.loads(path.read_text())["cosine"])
        except (OSError, ValueError, KeyError):
            pass
    model, _ = (loader or load_model_and_alphabet)(name_or_path)
    model = model.to("cpu").eval()
    ref = mean_embeddings(model)
    model = prepare_model(model, "cpu", dtype, source=str(name_or_path), verbose=False)  # in place: one copy in memory
    cos = F.cosine_similarity(mean_embeddings(model), ref, dim=1).min().item()
    del model
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps({"model": str(name_or_path), "dtype": dtype, "cosine": cos}))
        except OSError:  # not remembered: measured again next time, nothing else
            pass
    return cos
