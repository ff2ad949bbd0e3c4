"""Held-out masked perplexity of a model vs the amino-acid frequency baseline (same positions).

    python scripts/eval_perplexity.py configs/protlm_small.toml --model protlm_small
    python scripts/eval_perplexity.py configs/protlm_small.toml --model protlm_small --fasta runs/data/msa_eval.fasta
    python scripts/eval_perplexity.py configs/protlm_small.toml --model runs/protlm_small/checkpoints/step_0000800

The held-out split, crops and masks come from the config's [data] section (record-ID hash,
data.valid_seed), so the figure is the one `protlm train` logs as valid_ppl. With --fasta every
record of that file is evaluated instead (families never trained on); the baseline's residue
frequencies are always those of the config's training split.
"""

from __future__ import annotations

import argparse
import json

import torch

import protlm
from protlm.train.config import load_config
from protlm.train.evaluate import frequency_baseline, model_perplexity


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--model", default="protlm_small", help="published name or checkpoint folder")
    ap.add_argument("--fasta", default=None, help="evaluate every record of this FASTA instead of the held-out split")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.set_grad_enabled(False)
    model, _ = protlm.load_model_and_alphabet(args.model)
    result = {"model": args.model, "eval": args.fasta or "held-out split of " + cfg.data.train_fasta,
              **model_perplexity(model.float(), cfg, args.fasta), **frequency_baseline(cfg, args.fasta)}
    result["ratio_to_baseline"] = result["valid_ppl"] / result["baseline_ppl"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from protlm.cli.main import run_script

    run_script(main)
