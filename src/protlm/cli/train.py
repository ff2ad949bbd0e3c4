"""`protlm train CONFIG [--set key=value ...] [--resume]`: masked-LM pretraining."""

from __future__ import annotations

import click


@click.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set optim.lr=1e-3 (repeatable).")
@click.option("--resume", is_flag=True,
              help="Continue from the latest checkpoint in output.dir (needed once it holds one).")
def command(config, overrides, resume):
    """Train a masked language model as CONFIG (TOML) describes; run under torchrun for DDP/FSDP."""
    from protlm.train.config import load_config
    from protlm.train.loop import train

    cfg = load_config(config, list(overrides))  # a bad config is a ConfigError: exit status 2
    metrics = train(cfg, resume=resume)
    if metrics:
        click.echo(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
