"""CARP (Yang et al. 2022, "Convolutions are competitive with transformers for protein sequence
pretraining"): the ByteNet masked language model of Microsoft's `sequence-models` package.

    embedding (n_tokens -> d_embedding) -> pointwise up-projection (-> d_model)
    -> n_layers ByteNet blocks, block i dilated by 2 ** (i % (log2(r) + 1))
    -> LM head: LayerNorm, pointwise projection to the 30 tokens

A block (residual, pre-norm; d_h = d_model // 2 when `slim`, else d_model):
    x + ff2(act(ln3(conv(mask * act(ln2(ff1(act(ln1(x)))))))))
with `conv` a dilated 1-D convolution over positions (d_h -> d_h, `kernel_size` wide, zero
"same" padding). Padding positions are zeroed before every convolution, as the package's
MaskedConv1d does, so a right-padded batch computes each sequence exactly as alone (the conv's
own zero padding equals the zeroed pad tokens). No attention (no attention maps or attention
contact head), no BOS/EOS, no position embedding: any length runs.

The package's pointwise layers are 1x1 Conv1d's; here they are nn.Linear (the same numbers, in
(B, T, D) layout), which also lets `--dtype int8` quantize them (protlm.models.int8).

representations[i], as the package's `CARP` wrapper returns them: 0 = the up-projected
embedding, i = output of block i. The last one is the block output before the LM head's
LayerNorm (unlike ESM, where it is after the final norm): the published extraction recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from protlm.alphabet import Alphabet
from protlm.errors import InputError
from protlm.models.config import _DictConfig
from protlm.models.encoder import resolve_layers

NO_ATTENTION = ("CARP is a convolutional model: it has no attention maps and no attention contact "
                "head; use the bilinear head on its representations (`protlm contacts fit --head "
                "bilinear`, then `--head bilinear`)")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}  # nn.GELU's default: the erf form


@dataclass(frozen=True)
class CARPConfig(_DictConfig):
    """ByteNetLM hyperparameters, named as in `sequence_models.convolutional.ByteNetLM` (the
    published .pt files spell d_embedding `d_embed`). Defaults: carp_640M."""

    n_tokens: int = 30
    d_embedding: int = 8
    d_model: int = 1280
    n_layers: int = 56
    kernel_size: int = 5
    r: int = 128  # largest dilation; rates cycle 1, 2, 4, ..., r
    slim: bool = False  # True: blocks run at d_model // 2 inside
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5  # nn.LayerNorm's default, as the package uses
    # Convolutions set no hard limit; this is protlm's choice of where `--long` starts to window
    # or truncate (memory grows linearly with length), not a published number.
    max_residues: int = 16384

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.activation!r}; supported: {sorted(ACTIVATIONS)}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {self.kernel_size}")
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")

    family = "carp"

    @property
    def d_h(self) -> int:
        return self.d_model // 2 if self.slim else self.d_model

    @property
    def dilations(self) -> list[int]:
        """Per block, as the package computes them: 2 ** (i % (int(log2(r)) + 1))."""
        cycle = int(math.log2(self.r)) + 1
        return [2 ** (i % cycle) for i in range(self.n_layers)]

    # the attribute names the engine, heads and loaders read
    @property
    def num_layers(self) -> int:
        return self.n_layers

    @property
    def embed_dim(self) -> int:
        return self.d_model

    @property
    def max_sequence_length(self) -> int:
        return self.max_residues


def carp_config(name: str = "carp_640M", **overrides) -> CARPConfig:
    """The published sizes (Yang et al. 2022; the .pt files on Zenodo record 6564798)."""
    sizes = {  # (d_model, n_layers, slim): slim blocks for all but the largest model
        "carp_600k": (128, 16, True), "carp_38M": (1024, 16, True),
        "carp_76M": (1024, 32, True), "carp_640M": (1280, 56, False),
    }
    d_model, n_layers, slim = sizes[name]
    return CARPConfig(**{"d_model": d_model, "n_layers": n_layers, "slim": slim, **overrides})


class ByteNetBlock(nn.Module):
    """One residual block (see the module docstring); x (B, T, d_model), keep (B, T, 1)."""

    def __init__(self, cfg: CARPConfig, dilation: int):
        super().__init__()
        d, h, eps = cfg.d_model, cfg.d_h, cfg.layer_norm_eps
        self.ln1, self.ff1 = nn.LayerNorm(d, eps=eps), nn.Linear(d, h)
        self.ln2 = nn.LayerNorm(h, eps=eps)
        self.conv = nn.Conv1d(h, h, cfg.kernel_size, dilation=dilation,
                              padding=dilation * (cfg.kernel_size - 1) // 2)
        self.ln3, self.ff2 = nn.LayerNorm(h, eps=eps), nn.Linear(h, d)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x_BTD: torch.Tensor, keep_BT1: torch.Tensor) -> torch.Tensor:
        h_BTH = self.act(self.ln2(self.ff1(self.act(self.ln1(x_BTD)))))
        h_BTH = h_BTH * keep_BT1  # padding is zero before the convolution
        h_BTH = self.conv(h_BTH.transpose(1, 2)).transpose(1, 2)  # conv1d wants (B, H, T)
        return x_BTD + self.ff2(self.act(self.ln3(h_BTH)))


class CARPLMHead(nn.Module):
    """The package's `last_norm` and `decoder`: LayerNorm, then (d_model -> n_tokens)."""

    def __init__(self, cfg: CARPConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.n_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(x))


class CARP(nn.Module):
    """forward(tokens (B, T)) -> {'logits' (B, T, 30), 'representations' {layer: (B, T, d_model)}}.

    Tokens are residues only, right-padded with '-' (Alphabet.carp()). A packed batch
    (`cu_seqlens`, as `protlm evaluate` and MLM code pass them) is run as the padded batch of its
    sequences and returned packed: a convolution would mix neighbouring sequences.
    """

    supports_packing = False  # the engine runs CARP on its padded path

    def __init__(self, config: CARPConfig, alphabet: Alphabet | None = None):
        super().__init__()
        self.config = cfg = config
        self.alphabet = alphabet = alphabet or Alphabet.carp()
        if len(alphabet) != cfg.n_tokens:
            raise ValueError(f"alphabet has {len(alphabet)} tokens, config expects {cfg.n_tokens}")
        self.padding_idx, self.mask_idx = alphabet.padding_idx, alphabet.mask_idx
        # The package passes the MASK index as the embedding's padding_idx (a zero row at init).
        self.embed_tokens = nn.Embedding(cfg.n_tokens, cfg.d_embedding, padding_idx=self.mask_idx)
        self.up_embedder = nn.Linear(cfg.d_embedding, cfg.d_model)
        self.layers = nn.ModuleList(ByteNetBlock(cfg, d) for d in cfg.dilations)
        self.lm_head = CARPLMHead(cfg)

    @property
    def num_layers(self) -> int:
        return self.config.n_layers

    @property
    def embed_dim(self) -> int:
        return self.config.d_model

    def resolve_layers(self, repr_layers: Iterable[int]) -> list[int]:
        return resolve_layers(repr_layers, self.num_layers)

    def forward(self, tokens: torch.Tensor, repr_layers: Iterable[int] = (), need_head_weights: bool = False,
                return_contacts: bool = False, return_logits: bool = True,
                cu_seqlens: torch.Tensor | None = None, logits_at: torch.Tensor | None = None) -> dict:
        """Padded tokens (B, T); or packed tokens (N,) with `cu_seqlens` (B+1,), outputs (N, ...)
        (logits only at `logits_at` when given)."""
        if need_head_weights or return_contacts:
            raise InputError(NO_ATTENTION)
        if cu_seqlens is not None:
            return self._forward_packed(tokens, cu_seqlens, repr_layers, return_logits, logits_at)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
        layers = set(self.resolve_layers(repr_layers))
        x_BTD = self.up_embedder(self.embed_tokens(tokens))
        keep_BT1 = tokens.ne(self.padding_idx).unsqueeze(-1).to(x_BTD.dtype)
        reps = {0: x_BTD} if 0 in layers else {}
        for i, layer in enumerate(self.layers):
            x_BTD = layer(x_BTD, keep_BT1)
            if i + 1 in layers:
                reps[i + 1] = x_BTD
        result = {"logits": self.lm_head(x_BTD)} if return_logits else {}
        result["representations"] = reps
        return result

    def _forward_packed(self, tokens_N: torch.Tensor, cu_seqlens: torch.Tensor, repr_layers,
                        return_logits: bool, logits_at: torch.Tensor | None) -> dict:
        if tokens_N.ndim != 1:
            raise ValueError(f"packed tokens must be 1-D (N,), got shape {tuple(tokens_N.shape)}")
        cu = cu_seqlens.to(tokens_N.device).long()
        lengths_B = torch.diff(cu)
        B, T, N = lengths_B.numel(), int(lengths_B.max()), tokens_N.numel()
        seq_N = torch.repeat_interleave(torch.arange(B, device=tokens_N.device), lengths_B, output_size=N)
        pos_N = torch.arange(N, device=tokens_N.device) - cu[seq_N]
        tokens_BT = tokens_N.new_full((B, T), self.padding_idx)
        tokens_BT[seq_N, pos_N] = tokens_N
        out = self.forward(tokens_BT, repr_layers, return_logits=return_logits)
        result = {"representations": {k: v[seq_N, pos_N] for k, v in out["representations"].items()}}
        if return_logits:
            logits_ND = out["logits"][seq_N, pos_N]
            result["logits"] = logits_ND if logits_at is None else logits_ND[logits_at]
        return result


def build_carp(config: CARPConfig, alphabet: Alphabet | None = None) -> CARP:
    return CARP(config, alphabet)


__all__ = ["CARP", "CARPConfig", "build_carp", "carp_config"]
