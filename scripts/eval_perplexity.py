"""Held-out masked perplexity of a model vs the amino-acid frequency baseline (same positions).

    python scripts/eval_perplexity.py configs/protlm_small.toml --model protlm_small
    python scripts/eval_perplexity.py configs/protlm_small.toml --model runs/protlm_small/checkpoints/step_0000800

The held-out split, crops and masks come from the config's [data] section (record-ID hash,
data.valid_seed), so the figure is the one `protlm train` logs as valid_ppl.
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
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.set_grad_enabled(False)
    model, _ = protlm.load_model_and_alphabet(args.model)
    result = {"model": args.model, **model_perplexity(model.float(), cfg), **frequency_baseline(cfg)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
