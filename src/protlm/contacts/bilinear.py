"""The representation contact head of the ESM-1b paper: sigmoid(<P h_i, Q h_j> + b).

Trained with the language model frozen on precomputed representations; saved as safetensors
plus a JSON config naming the model and layer it reads, beside the model or anywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from protlm.errors import InputError, NotFoundError
from protlm.pretrained.checkpoint import CheckpointError, load_safetensors
from protlm.pretrained.contact_regression import BILINEAR_CONFIG_FILE
from protlm.io import atomic_path, atomic_write

WEIGHTS_FILE = "bilinear_contact.safetensors"
CONFIG_FILE = BILINEAR_CONFIG_FILE
MIN_SEP = 6  # pairs closer in sequence are trivially in contact; neither trained nor scored


@dataclass(frozen=True)
class BilinearConfig:
    embed_dim: int
    proj_dim: int = 128  # k in the paper's f(h_i, h_j) = sigmoid(<P h_i, Q h_j> + b)
    layer: int = -1  # representation layer read (after the final LayerNorm when last)
    model: str = ""  # name or path of the language model it was trained on


class BilinearContactHead(nn.Module):
    def __init__(self, config: BilinearConfig):
        super().__init__()
        self.config = config
        self.P = nn.Linear(config.embed_dim, config.proj_dim, bias=False)
        self.Q = nn.Linear(config.embed_dim, config.proj_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(()))

    def logits(self, h_BLD: torch.Tensor) -> torch.Tensor:
        """(B, L, D) residue representations -> (B, L, L) asymmetric logits."""
        return self.P(h_BLD) @ self.Q(h_BLD).transpose(1, 2) + self.bias

    def forward(self, h_BLD: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, L) contact probabilities, symmetrized (contacts are symmetric)."""
        z_BLL = self.logits(h_BLD)
        return torch.sigmoid(0.5 * (z_BLL + z_BLL.transpose(1, 2)))


@dataclass(frozen=True)
class BilinearTrainConfig:
    proj_dim: int = 128
    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0

    def __post_init__(self):
        if self.proj_dim <= 0 or self.epochs < 0:
            raise InputError(f"--proj-dim must be positive and --epochs not negative, got "
                             f"{self.proj_dim} and {self.epochs}")


def _pair_targets(contacts_LL: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask) over pairs with |i-j| >= MIN_SEP and both residues observed."""
    c = torch.as_tensor(contacts_LL).long()
    L = c.shape[0]
    idx = torch.arange(L)
    mask = ((idx[:, None] - idx[None, :]).abs() >= MIN_SEP) & (c >= 0)
    return c.clamp(min=0).float(), mask


def train_bilinear(reps: list[torch.Tensor], contacts: list[np.ndarray], cfg: BilinearTrainConfig,
                   layer: int = -1, model_name: str = "") -> BilinearContactHead:
    """Fit P, Q, b by full-batch BCE over all proteins' valid pairs.

    `reps[n]` (L_n, D) frozen representations; `contacts[n]` (L_n, L_n) with -1 = unobserved.
    Contacts are ~2-5% of pairs, so positives are up-weighted by the negative/positive ratio
    (class balance) so the head does not learn to predict "no contact" everywhere; the bias is
    corrected for that weighting at the end, so predictions are calibrated to the contact rate.
    """
    torch.manual_seed(cfg.seed)
    head = BilinearContactHead(BilinearConfig(reps[0].shape[-1], cfg.proj_dim, layer, model_name))
    data = [(h.float()[None], *_pair_targets(c)) for h, c in zip(reps, contacts)]
    pos = sum(float(t[m].sum()) for _, t, m in data)
    neg = sum(float(m.sum()) for _, _, m in data) - pos
    pos_weight = torch.tensor(neg / max(pos, 1.0))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = 0.0
        for h_1LD, t_LL, m_LL in data:
            z_LL = head.logits(h_1LD)[0]
            z_LL = 0.5 * (z_LL + z_LL.T)
            loss = loss + nn.functional.binary_cross_entropy_with_logits(
                z_LL[m_LL], t_LL[m_LL], pos_weight=pos_weight)
        (loss / len(data)).backward()
        opt.step()
    # The balanced loss shifts every logit up by about log(pos_weight) (prior correction of a
    # weighted logistic regression): undo it so that outputs are probabilities at the training
    # contact rate rather than mostly above 0.5. A constant shift leaves rankings, so P@L, as is.
    with torch.no_grad():
        head.bias -= torch.log(pos_weight)
    return head.eval()


def save_bilinear(head: BilinearContactHead, folder: str | Path) -> Path:
    """Write `bilinear_contact.safetensors` + `bilinear_contact.json` into `folder` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, tmp)
    atomic_write(folder / CONFIG_FILE,
                 json.dumps({"format": "protlm-bilinear-contact", "version": 1, **asdict(head.config)}, indent=2))
    return folder


def load_bilinear(folder: str | Path) -> BilinearContactHead:
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise NotFoundError(f"{folder}: no {CONFIG_FILE} (train one with `protlm contacts fit --head bilinear`)")
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
        head = BilinearContactHead(BilinearConfig(**{k: meta[k] for k in BilinearConfig.__dataclass_fields__
                                                     if k in meta}))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a bilinear head config ({e})") from None
    state = load_safetensors(folder / WEIGHTS_FILE)
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:  # torch's message lists the missing, unexpected and misshapen keys
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: does not match {CONFIG_FILE}: {e}") from None
    return head.eval()
