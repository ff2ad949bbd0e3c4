"""`protlm function fit|predict`: a property predictor from whole-protein embeddings."""

from __future__ import annotations

import click

from protlm.cli.options import inference_options
from protlm.data.pooling import POOLINGS
from protlm.function.heads import HEADS, TASKS

LONG_HELP = ("sequences over the model limit: keep the first 1022 residues (fair-esm's extract.py), "
             "pool over overlapping windows, or stop")


@click.group()
def command():
    """Function prediction: fit a head on embeddings, then predict with it."""


@command.command("fit")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--target", default=None, help="label column of a CSV/TSV")
@click.option("--label-from-header", type=int, default=None,
              help="FASTA: 0-based index of the '|'-separated header field holding the label")
@click.option("--task", type=click.Choice(TASKS), required=True)
@click.option("--head", type=click.Choice(HEADS), default=None,
              help="default: ridge for regression, logistic for classification")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="head dir")
@click.option("--group", default=None, help="CSV column: rows sharing a value stay in one CV fold")
@click.option("--group-from-header", type=int, default=None, help="FASTA header field used as --group")
@click.option("--id-column", default="id", show_default=True)
@click.option("--sequence-column", default="sequence", show_default=True)
@click.option("--layer", type=int, default=-1, show_default=True, help="-1 = last layer")
@click.option("--pooling", type=click.Choice(POOLINGS), default="mean", show_default=True)
@click.option("--folds", type=int, default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="embedding cache (default: OUTPUT/embedding_cache)")
@inference_options(long_help=LONG_HELP)
def fit(data, output, cache_dir, opts, **fields):
    """Cross-validate and fit a head on DATA (CSV/TSV, or FASTA with labels in headers)."""
    from protlm.function.pipeline import FitConfig, fit_function

    meta = fit_function(data, FitConfig(**fields), opts, output, cache_dir=cache_dir)
    cv = meta["cv"]
    stats = ", ".join(f"{k} {v:.3f} ± {cv['std'][k]:.3f}" for k, v in cv["mean"].items())
    click.echo(f"{cv['folds']}-fold CV ({meta['n_train']} records): {stats}")
    if any(v != v for v in cv["mean"].values()):  # NaN: a rank correlation of constant values
        click.echo("  (nan: some fold's predictions or labels were all equal, so a correlation is "
                   "undefined there; head.json stores it as null)", err=True)
    click.echo(f"head saved to {output}", err=True)


@command.command("predict")
@click.argument("fasta", type=click.Path(exists=True, dir_okay=False))
@click.option("--head", "head_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="CSV: id,prediction")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
@inference_options(model="optional", long_help=LONG_HELP)
def predict(fasta, head_dir, output, cache_dir, opts):
    """Apply a saved head to every record of FASTA."""
    from protlm.function.pipeline import predict_function

    n = predict_function(fasta, head_dir, output, opts, cache_dir=cache_dir)
    click.echo(f"{n} predictions -> {output}", err=True)
