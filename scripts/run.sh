#!/usr/bin/env bash
# The README's main job: install protlm (torch 2.13.0 CPU first), then embed the example
# proteins offline with the shipped protlm_small model and print a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
mkdir -p out
protlm embed "${1:-examples/few_proteins.fasta}" --model protlm_small \
    --output out/embeddings.h5 --repr-layers -1 --include mean per_tok contacts
python3 scripts/summarize_embeddings.py out/embeddings.h5
