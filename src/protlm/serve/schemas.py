"""Request and reply models of the HTTP API (pydantic; they make the OpenAPI page at /docs).

Requests are validated here for shape and types; content rules (residues, lengths, mutants,
limits) are checked by the app with messages naming the record and position. Replies are
serialised by protlm.serve.encode (JSON, npy or safetensors); the reply models below document
the JSON form.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from protlm.serve.backend import DEFAULT_SEED

Include = Literal["mean", "per_tok", "bos"]
Long = Literal["truncate", "window", "error"]
Method = Literal["masked-marginal", "wt-marginal", "pseudo-ll"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class SequenceIn(_Strict):
    id: str = Field(min_length=1, max_length=1000, description="record ID, unique within the request")
    sequence: str = Field(description="residues; upper-cased, whitespace and one trailing '*' dropped")


class _Records(_Strict):
    model: Optional[str] = Field(None, description="the served model's id (optional; checked when given)")
    sequences: list[SequenceIn] = Field(min_length=1)
    unknown_to_x: bool = Field(False, description="map residues outside the alphabet to X instead of refusing")


class EmbeddingsRequest(_Records):
    layers: list[int] = Field([-1], min_length=1, description="fair-esm numbering: 0 embeddings, -1 the last")
    include: list[Include] = Field(["mean"], min_length=1, description="outputs per record")
    long: Long = Field("truncate", description="sequences over the model's limit, as `protlm embed --long`")


class ContactsRequest(_Records):
    pass


class PerplexityRequest(_Records):
    seed: int = Field(DEFAULT_SEED, description="masks are drawn from (seed, SHA-256 of the sequence)")
    mask_prob: float = Field(0.15, gt=0, lt=1)


class VariantsRequest(_Strict):
    model: Optional[str] = None
    id: str = Field("wild_type", min_length=1, max_length=1000)
    sequence: str = Field(description="the wild type")
    mutations: Optional[list[str]] = Field(
        None, description="mutants such as 'H24C' or 'H24C:A42G'; omitted: every single substitution "
        "to the 20 standard amino acids (the variant landscape, returned as a matrix)")
    method: Method = "masked-marginal"
    offset: int = Field(1, description="number of the first residue in the mutant strings")
    unknown_to_x: bool = False


# ---- replies (JSON) ----
class Embedding(BaseModel):
    id: str
    length: int
    truncated_from: Optional[int] = None
    mean: Optional[dict[str, list[float]]] = Field(None, description="layer -> (D,)")
    bos: Optional[dict[str, list[float]]] = None
    per_tok: Optional[dict[str, list[list[float]]]] = Field(None, description="layer -> (L, D)")


class EmbeddingsReply(BaseModel):
    model: str
    layers: list[int]
    data: list[Embedding]


class ContactMap(BaseModel):
    id: str
    length: int
    contacts: list[list[float]] = Field(description="(L, L) probabilities, BOS/EOS stripped")


class ContactsReply(BaseModel):
    model: str
    calibrated: bool = Field(description="false: the model's contact head was never fitted")
    data: list[ContactMap]


class Score(BaseModel):
    mutant: str
    score: float


class VariantsReply(BaseModel):
    model: str
    method: Method
    id: str
    scores: Optional[list[Score]] = Field(None, description="with `mutations`: one per mutant, in order")
    amino_acids: Optional[str] = Field(None, description="landscape columns")
    wild_type: Optional[str] = None
    matrix: Optional[list[list[float]]] = Field(
        None, description="landscape: (L, 20) scores, row = position, column = amino_acids; 0 at the wild type")


class Perplexity(BaseModel):
    id: str
    perplexity: Optional[float]
    cross_entropy: Optional[float]
    masked_tokens: int


class PerplexityReply(BaseModel):
    model: str
    perplexity: Optional[float] = Field(description="exp(mean cross-entropy) over all masked positions")
    cross_entropy: Optional[float]
    masked_tokens: int
    data: list[Perplexity]


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorReply(BaseModel):
    error: ErrorBody
