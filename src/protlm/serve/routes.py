"""The /v1 routes: check a request, queue its work, shape the reply.

Embeddings and contacts go record by record through the batcher, so records of concurrent
requests share the engine's batches. Variant scoring runs `score_mutants` in chunks of about
one batch (masked-marginal: by set of masked positions), so a landscape neither holds the model
for minutes nor outlives its client; perplexity runs one job per record.
"""

from __future__ import annotations

import math

import torch
from fastapi import APIRouter, Request
from starlette.responses import Response

from protlm.serve import encode
from protlm.serve.backend import STANDARD_AAS, RequestError
from protlm.serve.schemas import (
    ContactsReply,
    ContactsRequest,
    EmbeddingsReply,
    EmbeddingsRequest,
    ErrorReply,
    PerplexityReply,
    PerplexityRequest,
    VariantsReply,
    VariantsRequest,
)
from protlm.serve.service import Service, TooLarge

router = APIRouter(prefix="/v1", tags=["models"])
ERRORS = {code: {"model": ErrorReply} for code in (401, 404, 406, 413, 422, 503)}
BINARY = {encode.NPY: {}, encode.SAFETENSORS: {}}


def _service(request: Request) -> Service:
    return request.app.state.service


def _media(request: Request, npy_refusal: str | None = None, json_only: bool = False) -> str:
    """The negotiated reply type, refused (406) before any compute when it cannot be given."""
    media = encode.negotiate(request.headers.get("accept"))
    if json_only and media != encode.JSON:
        raise encode.NotAcceptable(f"this endpoint replies in {encode.JSON} only")
    if media == encode.NPY and npy_refusal:
        raise encode.npy_refused(npy_refusal)
    return media


@router.get("/models")
async def models(request: Request) -> dict:
    """The served model (OpenAI-style list of one): layers, width, limits, what it can do."""
    svc = _service(request)
    info = svc.backend.info() if svc.backend is not None else {"id": svc.cfg.model, "object": "model"}
    return {"object": "list", "data": [{**info, "ready": svc.state == "ready"}]}


@router.post("/embeddings", response_model=None,
             responses={200: {"model": EmbeddingsReply, "content": BINARY}, **ERRORS})
async def embeddings(req: EmbeddingsRequest, request: Request) -> Response:
    """Mean / BOS / per-residue vectors of the chosen layers, per record, as `protlm embed`
    computes them. Accept: application/x-npy (mean or bos alone: (N, layers, D); per_tok of
    one record: (layers, L, D)) or application/x-safetensors (anything) for large replies."""
    svc = _service(request)
    backend = svc.ready_backend(req.model)
    include = [i for i in ("mean", "bos", "per_tok") if i in req.include]
    layers = backend.layers(req.layers)
    backend.check_embeddings(include)
    recs = svc.records(req.sequences, req.unknown_to_x)
    one = len(include) == 1 and (include[0] != "per_tok" or len(recs) == 1)
    media = _media(request, None if one else "npy holds one array: include mean or bos alone, or "
                   "per_tok of one sequence")
    spans = [backend.spans(rid, len(seq), req.long) for rid, seq in recs]
    key, want = (layers, req.long, False), frozenset(include)
    outs = await svc.run(request, [(backend.cost(len(seq), req.long), key, (seq, want)) for _, seq in recs])
    ids, lengths = [rid for rid, _ in recs], [len(seq) for _, seq in recs]
    pooled = [k for k in include if k != "per_tok"]

    def body():
        data = []
        for (rid, seq), sp, out in zip(recs, spans, outs):
            item = {"id": rid, "length": len(seq)}
            if sp[-1][1] < len(seq):
                item["truncated_from"] = len(seq)
                item["length"] = sp[-1][1]
            item.update({k: encode.layer_dict(out[k], list(layers)) for k in include})
            data.append(item)
        return {"model": backend.name, "layers": list(layers), "data": data}

    def tensors():
        t = {k: torch.stack([o[k] for o in outs]) for k in pooled}
        if "per_tok" in include:
            t.update({f"per_tok.{i}": o["per_tok"] for i, o in enumerate(outs)})
        return t

    def array():
        return outs[0]["per_tok"] if include == ["per_tok"] else torch.stack([o[include[0]] for o in outs])

    meta = {"model": backend.name, "layers": list(layers), "ids": ids, "lengths": lengths}
    return encode.reply(media, body, tensors, array, meta)


@router.post("/contacts", response_model=None,
             responses={200: {"model": ContactsReply, "content": BINARY}, **ERRORS})
async def contacts(req: ContactsRequest, request: Request) -> Response:
    """(L, L) contact probabilities per record from the model's contact head, as `protlm
    contacts predict` (long proteins in overlapping windows). npy: one record only."""
    svc = _service(request)
    backend = svc.ready_backend(req.model)
    backend.check_contacts()
    recs = svc.records(req.sequences, req.unknown_to_x)
    media = _media(request, None if len(recs) == 1 else "npy holds one array: send one sequence")
    key = (backend.layers([-1]), "window", True)
    outs = await svc.run(request, [(backend.cost(len(seq), "window"), key, (seq, frozenset({"contacts"})))
                                   for _, seq in recs])
    maps = [o["contacts"] for o in outs]

    def body():
        return {"model": backend.name, "calibrated": backend.contacts_calibrated,
                "data": [{"id": rid, "length": len(seq), "contacts": m.tolist()} for (rid, seq), m in zip(recs, maps)]}

    meta = {"model": backend.name, "ids": [rid for rid, _ in recs], "calibrated": backend.contacts_calibrated}
    return encode.reply(media, body, lambda: {f"contacts.{i}": m for i, m in enumerate(maps)}, lambda: maps[0], meta)


def landscape_mutants(rid: str, wt: str, offset: int) -> list[str]:
    """Every single substitution to the 20 standard amino acids, position by position."""
    for i, c in enumerate(wt):
        if not c.isalpha():
            raise RequestError(f"{rid}: the wild type has a gap {c!r} at position {i + offset}; "
                               "remove gaps to score its landscape")
    return [f"{c}{i + offset}{aa}" for i, c in enumerate(wt) for aa in STANDARD_AAS if aa != c]


def position_chunks(parsed, per_chunk: int) -> list[list[int]]:
    """Mutant indices grouped by their set of mutated positions (one masked forward each, in
    masked-marginal), `per_chunk` sets per chunk, in order of first appearance."""
    by_set: dict[tuple, list[int]] = {}
    for i, ms in enumerate(parsed):
        by_set.setdefault(tuple(m.pos for m in ms), []).append(i)
    sets = list(by_set.values())
    return [[i for s in sets[k : k + per_chunk] for i in s] for k in range(0, len(sets), per_chunk)]


@router.post("/variants", response_model=None,
             responses={200: {"model": VariantsReply, "content": BINARY}, **ERRORS})
async def variants(req: VariantsRequest, request: Request) -> Response:
    """Zero-shot scores of mutants against the wild type (the three methods of `protlm variants
    score`); without `mutations`, the landscape: every single substitution, as an (L, 20) matrix."""
    svc = _service(request)
    backend = svc.ready_backend(req.model)
    backend.check_mlm("variant scoring")
    media = _media(request)
    wt = backend.clean(req.id, req.sequence, req.unknown_to_x)
    if len(wt) > svc.cfg.max_residues:
        raise TooLarge(f"{req.id}: {len(wt)} residues, over the limit of {svc.cfg.max_residues} per request")
    landscape = req.mutations is None
    mutants = landscape_mutants(req.id, wt, req.offset) if landscape else req.mutations
    if not mutants:
        raise RequestError("mutations: an empty list (omit the field for the whole landscape)")
    parsed = backend.mutants(req.id, wt, mutants, req.offset)
    w = min(len(wt), backend.max_residues) + backend.alphabet.num_specials
    if req.method == "masked-marginal":
        chunks = position_chunks(parsed, max(1, svc.cfg.max_batch_tokens // w))
    else:
        chunks = [list(range(len(mutants)))]
    items = [(backend.variant_cost(len(wt), [parsed[i] for i in c], req.method), None,
              svc.call(backend.run_scores, wt, [mutants[i] for i in c], req.method, req.offset, residues=len(wt)))
             for c in chunks]
    scores = [0.0] * len(mutants)
    for chunk, got in zip(chunks, await svc.run(request, items)):
        for i, s in zip(chunk, got):
            scores[i] = s
    meta = {"model": backend.name, "method": req.method, "id": req.id}
    if landscape:
        matrix = torch.zeros(len(wt), len(STANDARD_AAS))
        for ms, s in zip(parsed, scores):
            matrix[ms[0].pos, STANDARD_AAS.index(ms[0].mt)] = s
        body = {**meta, "wild_type": wt, "amino_acids": STANDARD_AAS, "matrix": matrix.tolist()}
        return encode.reply(media, lambda: body, lambda: {"matrix": matrix}, lambda: matrix,
                            {**meta, "amino_acids": STANDARD_AAS})
    t = torch.tensor(scores, dtype=torch.float64)
    body = {**meta, "scores": [{"mutant": m, "score": s} for m, s in zip(mutants, scores)]}
    return encode.reply(media, lambda: body, lambda: {"scores": t}, lambda: t, {**meta, "mutants": list(mutants)})


@router.post("/perplexity", response_model=PerplexityReply, responses=ERRORS)
async def perplexity(req: PerplexityRequest, request: Request) -> dict:
    """Masked perplexity per record and over all (15% of residues, 80/10/10, masks seeded by
    (seed, sequence): the figures `protlm evaluate` gives). JSON only."""
    svc = _service(request)
    backend = svc.ready_backend(req.model)
    backend.check_mlm("masked perplexity")
    _media(request, json_only=True)
    recs = svc.records(req.sequences, req.unknown_to_x)
    items = [(backend.perplexity_cost(len(seq)), None,
              svc.call(backend.run_perplexity, seq, req.seed, req.mask_prob, residues=len(seq))) for _, seq in recs]
    outs = await svc.run(request, items)
    n = sum(o["masked_tokens"] for o in outs)
    # each record's cross-entropy is a mean over its masked positions: weighted back to a sum
    ce = math.fsum(o["cross_entropy"] * o["masked_tokens"] for o in outs if o["masked_tokens"]) / n if n else None
    data = [{"id": rid, "perplexity": _finite(o["perplexity"]), "cross_entropy": _finite(o["cross_entropy"]),
             "masked_tokens": o["masked_tokens"]} for (rid, _), o in zip(recs, outs)]
    return {"model": backend.name, "perplexity": math.exp(ce) if ce is not None else None,
            "cross_entropy": ce, "masked_tokens": n, "data": data}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # a record too short to mask any residue: NaN -> null
