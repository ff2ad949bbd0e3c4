"""Token ids from a checkpoint folder's own tokenizer files (ProtT5), without running code.

`tokenizer.json` (the `tokenizers` format) is JSON; `spiece.model` is a sentencepiece
`ModelProto`, a protobuf whose field 1 repeats `SentencePiece {piece = 1 (string), score = 2,
type = 3}` in id order. It is read here with a 30-line wire-format reader, so neither
sentencepiece nor protobuf is needed. T5Tokenizer then appends `extra_ids` sentinels
(tokenizer_config.json, default 100), `<extra_id_0>` last.
"""

from __future__ import annotations

import json
from pathlib import Path

SPIECE_FILE, TOKENIZER_JSON, TOKENIZER_CONFIG = "spiece.model", "tokenizer.json", "tokenizer_config.json"
DEFAULT_EXTRA_IDS = 100


class VocabFileError(ValueError):
    """A tokenizer file that cannot be read."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise VocabFileError("truncated varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message; value is bytes for wire 2."""
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise VocabFileError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise VocabFileError("truncated message")
        yield field, wire, value


def spiece_pieces(data: bytes) -> list[str]:
    """The pieces of a sentencepiece model, in id order."""
    pieces = []
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:
            piece = next((v for f, w, v in _fields(value) if f == 1 and w == 2), None)
            if piece is None:
                raise VocabFileError("a SentencePiece entry without its piece")
            pieces.append(piece.decode("utf-8"))
    if not pieces:
        raise VocabFileError("no pieces found (not a sentencepiece model?)")
    return pieces


def _extra_ids(folder: Path) -> int:
    cfg = folder / TOKENIZER_CONFIG
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("extra_ids", DEFAULT_EXTRA_IDS))
    return DEFAULT_EXTRA_IDS


def tokenizer_json_vocab(data: dict) -> list[str]:
    """Tokens in id order from a `tokenizer.json` (Unigram list or WordPiece/BPE dict, plus added tokens)."""
    vocab = data.get("model", {}).get("vocab")
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
        by_id = {i: entry[0] for i, entry in enumerate(vocab)}
    elif isinstance(vocab, dict):
        by_id = {i: t for t, i in vocab.items()}
    else:
        raise VocabFileError("tokenizer.json has no model.vocab")
    for tok in data.get("added_tokens", []):
        by_id[tok["id"]] = tok["content"]
    if sorted(by_id) != list(range(len(by_id))):
        raise VocabFileError("tokenizer.json ids are not contiguous from 0")
    return [by_id[i] for i in range(len(by_id))]


def read_folder_vocab(folder: str | Path) -> tuple[list[str], str] | None:
    """(tokens in id order, the file they came from) or None when the folder has neither file.

    tokenizer.json wins when both exist: it is what transformers' fast tokenizer reads.
    """
    folder = Path(folder)
    try:
        if (folder / TOKENIZER_JSON).is_file():
            return tokenizer_json_vocab(json.loads((folder / TOKENIZER_JSON).read_text())), TOKENIZER_JSON
        if (folder / SPIECE_FILE).is_file():
            pieces = spiece_pieces((folder / SPIECE_FILE).read_bytes())
            n = _extra_ids(folder)
            return pieces + [f"<extra_id_{i}>" for i in reversed(range(n))], SPIECE_FILE
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise VocabFileError(f"{folder}: cannot read the tokenizer files ({e})") from None
    return None
