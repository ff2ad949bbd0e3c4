"""Embeddings of FASTA files: `protlm embed` and the inference engine every command runs.

    pipeline.py   embed_to_file / extract: plan -> batches -> engine -> writer, top to bottom
    plan.py       the FASTA validated, what is done, what changed, which rank embeds what
    engine.py     Engine: token-budget batches (packed), windows, pooling, contacts, log-probs
    writers.py    resumable HDF5 (parts + live index, rank shards, merge) and .pt outputs
    h5.py         the HDF5 format: columns, EmbeddingsFile (read by ID, even while running)
    progress.py   records and residues written, across ranks
"""

from protlm.embed.engine import Engine
from protlm.embed.h5 import EmbeddingsFile, read as read_h5
from protlm.embed.pipeline import EmbedConfig, EmbedResult, embed_to_file, extract, extract_batches
from protlm.embed.plan import INCLUDES, EmbedError, scan_fasta

__all__ = ["Engine", "EmbeddingsFile", "read_h5", "EmbedConfig", "EmbedResult", "embed_to_file", "extract",
           "extract_batches", "INCLUDES", "EmbedError", "scan_fasta"]
