#!/usr/bin/env bash
# The README's main job: install protlm (torch 2.13.0 CPU first), then embed the example
# proteins offline with the shipped protlm_small model and print a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
mkdir -p out
fasta="${1:-examples/few_proteins.fasta}"
output=out/embeddings.h5  # your own file gets its own output: out/<its name>.h5
if [ $# -ge 1 ]; then
    name=$(basename "$fasta"); name=${name%.gz}; name=${name%.*}
    output="out/$name.h5"
fi
protlm embed "$fasta" --model protlm_small \
    --output "$output" --repr-layers -1 --include mean per_tok contacts
python3 scripts/summarize_embeddings.py "$output"
