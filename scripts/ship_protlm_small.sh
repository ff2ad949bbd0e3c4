#!/usr/bin/env bash
# Ship and evaluate protlm_small after its five training stages (configs/protlm_small.toml, then
# configs/protlm_small_stage2.toml, _stage3.toml, _stage4.toml and _stage5.toml; issue: a shipped
# model that has seen every fold). Run from the repository root:
#     bash scripts/ship_protlm_small.sh [CHECKPOINT ...]   # default: the fifth stage's last checkpoint
# 1. exports the checkpoint (several: the average of their parameters) as fp16 safetensors into
#    the package (rotary buffers stay fp32);
# 2. fits both contact heads (attention and bilinear) with `protlm contacts fit` on the training
#    chains of ../shared/data/structures (every 3rd chain by PDB id is held out, as
#    scripts/contacts_eval.py) and ships them beside the weights;
# 3. writes every evaluation figure under runs/eval/ (perplexities, contacts, function, variants).
# It replaces the packaged weights and runs/eval/ in place: to evaluate a candidate that may not
# ship, copy runs/eval/ aside first; `git checkout src/protlm/weights/protlm_small` restores the
# shipped weights and heads. Compare the contact heads of two runs chain by chain with
# scripts/compare_contacts.py (a change of the mean alone can be noise).
set -euo pipefail
cd "$(dirname "$0")/.."
if (($#)); then ckpts=("$@"); else
    ckpts=("runs/protlm_small_stage5/checkpoints/$(cat runs/protlm_small_stage5/checkpoints/latest)"); fi
dest=src/protlm/weights/protlm_small
structs=../shared/data/structures
mkdir -p runs/eval
for f in runs/data/cath_train.fasta runs/data/cath_valid.fasta runs/data/msa_eval.fasta; do
    [[ -f $f ]] || { echo "missing $f: run python scripts/prepare_pretraining_data.py --data ../shared/data --out runs/data" >&2; exit 1; }
done

python -m protlm.train.export "${ckpts[@]}" "$dest" --dtype fp16
train_files=$(python - "$structs" <<'PY'
import sys
from protlm.alphabet import Alphabet
from protlm.contacts.pipeline import protein_chains, split_chains
from protlm.contacts.structures import structure_files
train, _ = split_chains(protein_chains(structure_files(sys.argv[1]), Alphabet()))
print(" ".join(f"--structures {c.source}:{c.chain}" for c in train))
PY
)
# shellcheck disable=SC2086
protlm contacts fit --model "$dest" --head attention $train_files --output "$dest" | tee runs/eval/contact_fit.txt
# shellcheck disable=SC2086
protlm contacts fit --model protlm_small --head bilinear $train_files --output "$dest" | tee -a runs/eval/contact_fit.txt

python scripts/eval_perplexity.py configs/protlm_small.toml --model protlm_small | tee runs/eval/ppl_cath.json
python scripts/eval_perplexity.py configs/protlm_small.toml --model protlm_small \
    --fasta runs/data/msa_eval.fasta | tee runs/eval/ppl_msa.json
python scripts/contacts_eval.py --model protlm_small --structures "$structs" | tee runs/eval/contacts.md
protlm evaluate --models protlm_small --perplexity runs/data/cath_valid.fasta --structures "$structs" \
    --output runs/eval/compare.md
python scripts/function_eval.py --model protlm_small --cache-dir runs/eval/cache --out runs/eval/function.json | tee runs/eval/function.txt
python scripts/variants_eval.py --model protlm_small --methods masked-marginal wt-marginal \
    --out runs/eval/variants.json \
    | tee runs/eval/variants.txt   # pseudo-ll: add --methods pseudo-ll --pll-subset 48 (about 15 min)
