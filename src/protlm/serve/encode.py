"""Reply bodies: JSON by default, `application/x-npy` or safetensors for large replies.

The client picks with its Accept header. npy holds one array, so it is offered where a reply is
one array (mean vectors of all records, one record's per-residue vectors or contact map, the
variant scores or landscape); safetensors holds any reply, as named tensors plus string
metadata (ids, layers). Both carry float32 exactly; JSON writes each float32 as the shortest
decimal that reads back to the same float64.
"""

from __future__ import annotations

import io
import json
from typing import Callable

import numpy as np
import torch
from starlette.responses import Response

from protlm.errors import ProtlmError

JSON = "application/json"
NPY = "application/x-npy"
SAFETENSORS = "application/x-safetensors"
MEDIA = (JSON, NPY, SAFETENSORS)
NPY_HEADERS = ("layers", "amino_acids")  # short metadata sent as X-Protlm-* headers with npy (ids are not:
# a thousand of them would overflow clients' header limits; npy rows follow the request's order)


class NotAcceptable(ProtlmError):
    """The Accept header asks for a form this reply cannot take (HTTP 406)."""


def npy_refused(why: str) -> NotAcceptable:
    return NotAcceptable(f"{why}; ask for {SAFETENSORS} or {JSON}")


def negotiate(accept: str | None) -> str:
    """The reply's media type: the first of MEDIA the Accept header names (q-values ignored);
    JSON when it names none of them (or */*)."""
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in MEDIA:
            return media
        if media in ("application/vnd.safetensors", "application/safetensors"):
            return SAFETENSORS
        if media in ("application/npy", "application/x-numpy"):
            return NPY
    return JSON


def json_bytes(body: dict) -> bytes:
    """Compact JSON; NaN or infinity (not JSON) raises ValueError rather than writing bad JSON."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def npy_bytes(array: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array.detach().cpu().numpy()), allow_pickle=False)
    return buf.getvalue()


def safetensors_bytes(tensors: dict[str, torch.Tensor], meta: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={k: json.dumps(v) for k, v in meta.items()})


def reply(media: str, body: Callable[[], dict], tensors: Callable[[], dict[str, torch.Tensor]],
          array: Callable[[], torch.Tensor | str], meta: dict) -> Response:
    """The reply in `media`. `array()` gives the one npy array, or a message saying why there
    is none (then 406); `meta` goes into safetensors metadata (NPY_HEADERS of it into npy headers)."""
    if media == NPY:
        arr = array()
        if isinstance(arr, str):
            raise npy_refused(arr)
        headers = {f"X-Protlm-{k.replace('_', '-').title()}": json.dumps(meta[k], ensure_ascii=True)
                   for k in NPY_HEADERS if k in meta}
        return Response(npy_bytes(arr), media_type=NPY, headers=headers)
    if media == SAFETENSORS:
        return Response(safetensors_bytes(tensors(), meta), media_type=SAFETENSORS)
    return Response(json_bytes(body()), media_type=JSON)


def layer_dict(x_LD: torch.Tensor, layers: list[int]) -> dict[str, list]:
    """(nl, ...) per-layer values -> {"6": [...]} for JSON."""
    return {str(layer): x_LD[j].tolist() for j, layer in enumerate(layers)}
