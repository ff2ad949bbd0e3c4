"""Model families and published models. A new checkpoint is one entry; a new architecture is
one model file plus one `Family` (config class, builder, HF key map and config map, tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from protlm.alphabet import Alphabet
from protlm.errors import ProtlmError
from protlm.models.carp import CARPConfig, build_carp, carp_config
from protlm.models.config import ESMConfig, T5Config, esm1b_config, esm2_config, prot_t5_xl_config
from protlm.models.esm import build_model
from protlm.models.t5 import build_t5
from protlm.pretrained import convert, convert_t5
from protlm.pretrained.vocab_files import read_folder_vocab

FAIR_ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm"
# sequence_models.pretrained.CARP_URL; its loader fetches `<name>.pt?download=1` with torch.hub,
# which caches it as <torch hub dir>/checkpoints/<name>.pt, where protlm looks first too.
CARP_URL = "https://zenodo.org/record/6564798/files"


def _esm_tokenizer(folder: Path | None) -> Alphabet:
    return Alphabet()  # ESM's vocabulary is fixed; HF folders' vocab.txt is fair-esm's order


def _t5_tokenizer(folder: Path | None) -> Alphabet:
    """ProtT5's ids from the folder's spiece.model / tokenizer.json when present, else built in."""
    found = read_folder_vocab(folder) if folder is not None else None
    return Alphabet.prot_t5(found[0] if found else None)


@dataclass(frozen=True)
class Family:
    """What loading and writing need to know about one architecture."""

    name: str
    config_cls: type
    build: Callable  # (config, alphabet | None) -> model
    hf_model_type: str | None  # config.json `model_type`; None: no Hugging Face layout (CARP)
    hf_config: Callable[[dict], Any] | None  # HF config.json dict -> config
    hf_to_protlm: Callable | None  # (HF state, config) -> protlm state
    tokenizer: Callable[[Path | None], Alphabet]  # checkpoint folder (or None) -> Alphabet


FAMILIES: dict[str, Family] = {
    "esm": Family("esm", ESMConfig, build_model, "esm",
                  lambda hf: convert.hf_config_to_protlm(hf, Alphabet()),
                  lambda state, cfg: convert.hf_to_protlm(state, cfg.num_layers), _esm_tokenizer),
    "t5": Family("t5", T5Config, build_t5, "t5", convert_t5.hf_config_to_protlm,
                 convert_t5.hf_to_protlm, _t5_tokenizer),
    # CARP: published as sequence-models .pt files only (protlm.pretrained.convert_carp)
    "carp": Family("carp", CARPConfig, build_carp, None, None, None, lambda folder: Alphabet.carp()),
}


def family_of(config_or_name) -> Family:
    """The Family of a config object or a family/config name ('esm1b' and 'esm2' are 'esm')."""
    name = getattr(config_or_name, "family", config_or_name)
    name = "esm" if name in ("esm1b", "esm2") else name
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_for_hf(model_type: str | None) -> Family:
    for fam in FAMILIES.values():
        if fam.hf_model_type is not None and fam.hf_model_type == model_type:
            return fam
    known = ", ".join(repr(f.hf_model_type) for f in FAMILIES.values() if f.hf_model_type)
    raise ValueError(f"config.json has model_type {model_type!r}; supported: {known}")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ESMConfig | T5Config | CARPConfig
    has_regression: bool = True  # a published -contact-regression.pt exists
    hf_repo: str | None = None  # Hugging Face hub repo (EsmForMaskedLM or T5 layout)
    packaged: str | None = None  # weights shipped inside protlm (file stem under protlm/weights)
    fair_esm: bool = True  # published on dl.fbaipublicfiles.com too
    weights_url: str | None = None  # a single-file download elsewhere (CARP on Zenodo)

    @property
    def family(self) -> Family:
        return family_of(self.config)

    @property
    def url(self) -> str | None:
        if self.weights_url:
            return self.weights_url
        return f"{FAIR_ESM_URL}/models/{self.name}.pt" if self.fair_esm else None

    @property
    def regression_url(self) -> str | None:
        has = self.has_regression and self.fair_esm
        return f"{FAIR_ESM_URL}/regression/{self.name}-contact-regression.pt" if has else None


def _esm2(name: str, layers: int, dim: int, heads: int) -> ModelEntry:
    return ModelEntry(name, esm2_config(layers, dim, heads), hf_repo=f"facebook/{name}")


_ENTRIES = [
    ModelEntry("esm1b_t33_650M_UR50S", esm1b_config(), hf_repo="facebook/esm1b_t33_650M_UR50S"),
    *(
        ModelEntry(f"esm1v_t33_650M_UR90S_{i}", esm1b_config(), has_regression=False,
                   hf_repo=f"facebook/esm1v_t33_650M_UR90S_{i}")
        for i in range(1, 6)
    ),
    _esm2("esm2_t6_8M_UR50D", 6, 320, 20),
    _esm2("esm2_t12_35M_UR50D", 12, 480, 20),
    _esm2("esm2_t30_150M_UR50D", 30, 640, 20),
    _esm2("esm2_t33_650M_UR50D", 33, 1280, 20),
    _esm2("esm2_t36_3B_UR50D", 36, 2560, 40),
    _esm2("esm2_t48_15B_UR50D", 48, 5120, 40),
    # ProtT5-XL-U50 (Elnaggar et al. 2021): the full encoder-decoder (only the encoder is kept)
    # and Rostlab's encoder-only fp16 copy. No published contact head: fit one on structures.
    ModelEntry("prot_t5_xl_uniref50", prot_t5_xl_config(), has_regression=False,
               hf_repo="Rostlab/prot_t5_xl_uniref50", fair_esm=False),
    ModelEntry("prot_t5_xl_half_uniref50-enc", prot_t5_xl_config(), has_regression=False,
               hf_repo="Rostlab/prot_t5_xl_half_uniref50-enc", fair_esm=False),
    # ProtT5-XL-BFD: the same encoder trained on BFD (Rostlab/prot_t5_xl_bfd config.json: 24
    # layers, d_model 1024, 32 heads x d_kv 128, d_ff 16384, ReLU, 128 tokens), full T5 file.
    ModelEntry("prot_t5_xl_bfd", prot_t5_xl_config(), has_regression=False,
               hf_repo="Rostlab/prot_t5_xl_bfd", fair_esm=False),
    # CARP (Yang et al. 2022): ByteNet dilated CNNs, sequence-models' published .pt files.
    *(ModelEntry(name, carp_config(name), has_regression=False, fair_esm=False,
                 weights_url=f"{CARP_URL}/{name}.pt?download=1")
      for name in ("carp_600k", "carp_38M", "carp_76M", "carp_640M")),
]

REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}

# Tiny flavours of each family, used by every test (never downloaded).
DEBUG_CONFIGS: dict[str, ESMConfig | T5Config | CARPConfig] = {
    "esm1b_debug": esm1b_config(num_layers=2, embed_dim=64, ffn_embed_dim=128, attention_heads=4),
    "esm2_debug": esm2_config(2, 64, 4),
    "prot_t5_debug": prot_t5_xl_config(num_layers=2, d_model=64, num_heads=4, d_kv=16, d_ff=128),
    "carp_debug": carp_config("carp_600k", d_model=32, n_layers=3, r=4),
}


def build_debug(name: str):
    """A debug flavour's model (random weights) with its family's builder."""
    config = DEBUG_CONFIGS[name]
    return family_of(config).build(config, None)


def register(entry: ModelEntry) -> None:
    REGISTRY[entry.name] = entry


class UnknownModelError(ProtlmError, KeyError):
    """A model name that is neither published nor a path; the message lists the published names."""


def get(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownModelError(f"unknown model {name!r}; {guess}published names: "
                                f"{', '.join(sorted(REGISTRY))}") from None


def by_hf_repo(repo_id: str) -> ModelEntry | None:
    """The entry whose Hugging Face repository is `repo_id` (e.g. 'facebook/esm2_t6_8M_UR50D')."""
    return next((e for e in REGISTRY.values() if e.hf_repo and e.hf_repo == repo_id), None)


# The default model shipped inside protlm: ESM-2 architecture (esm2_t6_8M shape) trained by
# `protlm train configs/protlm_small.toml` on ../shared/data (see docs/training.md).
register(ModelEntry("protlm_small", esm2_config(6, 320, 20), has_regression=False, packaged="protlm_small"))
