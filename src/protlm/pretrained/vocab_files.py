"""Token ids from a checkpoint folder's own tokenizer files (ProtT5), without running code.

`tokenizer.json` (the `tokenizers` format) is JSON; `spiece.model` is a sentencepiece model,
read by the sentencepiece library. T5Tokenizer then appends `extra_ids` sentinels
(tokenizer_config.json, default 100), `<extra_id_0>` last.
"""

from __future__ import annotations

import json
from pathlib import Path

from protlm.pretrained.checkpoint import CheckpointError

SPIECE_FILE, TOKENIZER_JSON, TOKENIZER_CONFIG = "spiece.model", "tokenizer.json", "tokenizer_config.json"
DEFAULT_EXTRA_IDS = 100


class VocabFileError(CheckpointError):
    """A tokenizer file that cannot be read."""


def spiece_pieces(data: bytes) -> list[str]:
    """The pieces of a sentencepiece model, in id order (read by sentencepiece itself)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except (RuntimeError, OSError) as e:  # sentencepiece reports a bad proto as RuntimeError
        raise VocabFileError(f"not a sentencepiece model ({e})") from None
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


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
