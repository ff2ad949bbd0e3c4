"""Contact maps for any length: per-window model runs merged over overlapping windows.

Every map here is over residues only (BOS/EOS stripped), as in fair-esm: (L, L) for an
L-residue sequence. Proteins longer than the model's limit are cut into windows of
`max_sequence_length` residues overlapping by half; pairs seen in several windows are averaged
(`protlm.data.windows`), pairs never seen together get 0.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from protlm.alphabet import Alphabet
from protlm.contacts.bilinear import BilinearContactHead
from protlm.embed.engine import Engine
from protlm.models.esm import ESM
from protlm.models.heads import UNFITTED_MESSAGE, UncalibratedContactsWarning
from protlm.data.windows import merge_2d, window_spans


def _tokens(alphabet: Alphabet, seq: str, device: torch.device) -> torch.Tensor:
    return alphabet.get_batch_converter()([("x", seq)])[2].to(device)  # (1, L + 2)


def _device(model: ESM) -> torch.device:
    return next(model.parameters()).device


def _windowed(model: ESM, seq: str, window: int | None, fn: Callable[[str], torch.Tensor],
              merge: Callable) -> torch.Tensor:
    window = window or model.config.max_sequence_length
    spans = window_spans(len(seq), window)
    parts = [fn(seq[s:e]) for s, e in spans]
    return parts[0] if len(spans) == 1 else merge(parts, spans, len(seq))


def _merge_channels(parts: list[torch.Tensor], spans, length: int) -> torch.Tensor:
    """merge_2d for (X, l, l) stacks of pairwise maps."""
    return torch.stack([merge_2d([p[x] for p in parts], spans, length) for x in range(parts[0].shape[0])])


def attention_contacts(model: ESM, alphabet: Alphabet, seq: str, window: int | None = None) -> np.ndarray:
    """(L, L) contact probabilities from the model's attention contact head."""
    engine = Engine(model, alphabet, long="window", window=window)
    [(_, [r])] = engine.run([seq], {"contacts"})
    return r["contacts"].numpy()


@torch.no_grad()
def attention_features(model: ESM, alphabet: Alphabet, seq: str, window: int | None = None) -> torch.Tensor:
    """(layers*heads, L, L) symmetrized, APC-corrected attention maps: the head's input features."""
    def run(s: str) -> torch.Tensor:
        tokens = _tokens(alphabet, s, _device(model))
        attn_1NHTT = model(tokens, need_head_weights=True, return_logits=False)["attentions"]
        B, N, H, T, _ = attn_1NHTT.shape
        return model.contact_head._features(tokens, attn_1NHTT.reshape(B, N * H, T, T))[0].float().cpu()
    return _windowed(model, seq, window, run, _merge_channels)


def representations(model: ESM, alphabet: Alphabet, seq: str, layer: int = -1,
                    window: int | None = None) -> torch.Tensor:
    """(L, D) residue representations of `layer` (BOS/EOS stripped), packed forward."""
    engine = Engine(model, alphabet, [layer], long="window", window=window)
    [(_, [r])] = engine.run([seq], {"per_tok"})
    return r["per_tok"][0]


@torch.no_grad()
def bilinear_contacts(model: ESM, alphabet: Alphabet, head: BilinearContactHead, seq: str,
                      window: int | None = None) -> np.ndarray:
    """(L, L) contact probabilities from a bilinear head on the model's representations.

    The head is applied per window (the representations it was trained on), then merged.
    """
    def run(s: str) -> torch.Tensor:
        h_LD = representations(model, alphabet, s, head.config.layer, window=len(s))
        return head(h_LD[None].to(head.bias))[0].float().cpu()
    return _windowed(model, seq, window, run, merge_2d).numpy()


def predict_contacts(model: ESM, alphabet: Alphabet, seq: str, head: BilinearContactHead | None = None,
                     window: int | None = None) -> np.ndarray:
    """(L, L) map with the attention head (head=None) or a bilinear head."""
    if head is None:
        return attention_contacts(model, alphabet, seq, window)
    return bilinear_contacts(model, alphabet, head, seq, window)


def warn_if_uncalibrated(model: ESM, head: BilinearContactHead | None) -> None:
    """Say that the attention head was never fitted: once per run, before its first map."""
    if head is None and not getattr(getattr(model, "contact_head", None), "fitted", True):
        warnings.warn(UNFITTED_MESSAGE, UncalibratedContactsWarning, stacklevel=2)


@contextlib.contextmanager
def quiet_uncalibrated() -> Iterator[None]:
    """Around a loop of maps after one warn_if_uncalibrated: the contact head's own warning is
    ignored, as the CLI's "once" filter forgets what it showed whenever a library changes the
    warning filters (matplotlib on first use), so it came back. One filter change per loop, not
    per map: each change makes other warnings show again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncalibratedContactsWarning)
        yield
