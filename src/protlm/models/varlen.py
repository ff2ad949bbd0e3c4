"""Attention over a packed batch: each token attends only within its own sequence.

Three kernels, picked automatically per call (the first that can run wins) and reported:
- "flash_attn": flash-attn's `flash_attn_varlen_func`, when the optional package is installed
  (CUDA, fp16/bf16). Never required: it builds from source only.
- "varlen_attn": PyTorch's own `torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16). It
  hard-codes attention dropout to 0, so it is skipped when dropout is active.
- "sdpa_loop": one `scaled_dot_product_attention` call per sequence. Runs anywhere, in any dtype;
  the CPU choice, measured against FlexAttention with a document mask and a block-diagonal mask
  (benchmarks/bench_packed_cpu.py --compare-attention): it was the fastest of the exact ones,
  needs no compilation, and a sequence's result cannot depend on its batch neighbours.

Layout: q, k, v and the output are (N, H, hd); the query is already scaled (softmax scale 1).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

BACKENDS = ("flash_attn", "varlen_attn", "sdpa_loop")
_HALF = (torch.float16, torch.bfloat16)


def _find_varlen_attn() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


# Looked up once at import, not per call: torch.compile then reads two constants when it traces
# a layer, rather than tracing import machinery in every attention call.
_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
_HAS_VARLEN_ATTN = _find_varlen_attn()


def unusable_reason(backend: str, device: torch.device, dtype: torch.dtype, dropout_p: float) -> str | None:
    """Why `backend` cannot run these inputs, or None when it can."""
    if backend == "sdpa_loop":
        return None
    if backend not in BACKENDS:
        return f"unknown attention backend {backend!r}; known: {', '.join(BACKENDS)}"
    if backend == "flash_attn" and not _HAS_FLASH_ATTN:
        return "flash_attn is not installed"
    if backend == "varlen_attn" and not _HAS_VARLEN_ATTN:
        return "this torch has no torch.nn.attention.varlen"
    if backend == "varlen_attn" and dropout_p > 0:
        return "varlen_attn has no attention dropout"
    if device.type != "cuda":
        return f"{backend} runs on CUDA only, not {device.type}"
    if dtype not in _HALF:
        return f"{backend} needs fp16 or bf16, not {dtype}"
    return None


@torch.compiler.disable  # host-side choice: under torch.compile it stays out of the graph
def select_backend(device: torch.device, dtype: torch.dtype, dropout_p: float = 0.0,
                   requested: str | None = None) -> str:
    """The kernel `varlen_attention` runs for inputs on `device` in `dtype`.

    `requested=None` picks the first usable of BACKENDS; a named one that cannot run raises.
    """
    if requested is not None:
        reason = unusable_reason(requested, device, dtype, dropout_p)
        if reason:
            raise ValueError(f"attention backend {requested!r} cannot run here: {reason}")
        return requested
    for b in BACKENDS:  # a loop, not next(generator): torch.compile traces it without a break
        if unusable_reason(b, device, dtype, dropout_p) is None:
            return b
    raise AssertionError("sdpa_loop always runs")


# Left out of torch.compile graphs: traced, the loop would unroll over this batch's boundaries and
# recompile for every new batch; as it is, a compiled layer breaks its graph here and runs it eagerly.
@torch.compiler.disable
def _sdpa_loop(q_NHd, k_NHd, v_NHd, cu, max_seqlen: int, bounds, dropout_p: float) -> torch.Tensor:
    outs = []
    for s, e in bounds:
        if e == s:
            continue
        # (1, H, L, hd): CPU's fused SDPA kernel takes only 4-D inputs (3-D falls back to math).
        q, k, v = (t[s:e].transpose(0, 1).unsqueeze(0) for t in (q_NHd, k_NHd, v_NHd))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=1.0)
        outs.append(out[0].transpose(0, 1))  # (L, H, hd)
    return torch.cat(outs) if outs else torch.empty_like(q_NHd)


def _flash_attn(q_NHd, k_NHd, v_NHd, cu, m: int, bounds, dropout_p: float) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(q_NHd, k_NHd, v_NHd, cu, cu, m, m, dropout_p=dropout_p, softmax_scale=1.0)


def _varlen_attn(q_NHd, k_NHd, v_NHd, cu, m: int, bounds, dropout_p: float) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(q_NHd, k_NHd, v_NHd, cu, cu, m, m, scale=1.0)


_KERNELS = {"flash_attn": _flash_attn, "varlen_attn": _varlen_attn, "sdpa_loop": _sdpa_loop}


def varlen_attention(q_NHd: torch.Tensor, k_NHd: torch.Tensor, v_NHd: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, bounds: tuple[tuple[int, int], ...], dropout_p: float = 0.0,
                     backend: str | None = None) -> tuple[torch.Tensor, str]:
    """Attention confined to each sequence of a packed batch -> (out (N, H, hd), backend that ran).

    cu_seqlens (B+1,) int32 and max_seqlen for the CUDA kernels; bounds, the same boundaries on
    the host as (start, end) pairs, for the per-sequence loop (protlm.models.layout.Packed)."""
    # A backend named by the caller was already checked when the forward chose it (once, outside
    # the layers): looking it up again here would put a graph break in every compiled layer.
    name = backend if backend is not None else select_backend(q_NHd.device, q_NHd.dtype, dropout_p)
    return _KERNELS[name](q_NHd, k_NHd, v_NHd, cu_seqlens, max_seqlen, bounds, dropout_p), name


__all__ = ["BACKENDS", "select_backend", "unusable_reason", "varlen_attention"]
