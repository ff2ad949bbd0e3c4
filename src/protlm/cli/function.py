"""`protlm function fit|predict`: a property predictor from whole-protein embeddings."""

from __future__ import annotations

import click

from protlm.tasks.heads import HEADS, TASKS
from protlm.tasks.pooling import POOLINGS



def _input_errors() -> tuple[type[Exception], ...]:
    """Errors about the user's input or options: reported as one line and exit status 1."""
    from protlm.data.fasta import FastaError
    from protlm.pretrained.load import CheckpointError

    return (FastaError, CheckpointError, FileNotFoundError, KeyError, ValueError)


def _fail(e: Exception):
    raise click.ClickException(str(e.args[0]) if isinstance(e, KeyError) else str(e)) from None


@click.group()
def command():
    """Function prediction: fit a head on embeddings, then predict with it."""


@command.command("fit")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", "model_name", required=True, help="published name or checkpoint path")
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
@click.option("--toks-per-batch", type=int, default=4096, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--progress/--no-progress", default=True, show_default=True)
def fit(data, model_name, target, label_from_header, task, head, output, group, group_from_header,
        id_column, sequence_column, layer, pooling, folds, seed, cache_dir, toks_per_batch, device, progress):
    """Cross-validate and fit a head on DATA (CSV/TSV, or FASTA with labels in headers)."""
    from protlm.tasks.function import FitConfig, fit_function

    try:
        cfg = FitConfig(model_name, target, task, head, label_from_header, group, group_from_header,
                        id_column, sequence_column, layer, pooling, folds, seed, toks_per_batch, device)
        meta = fit_function(data, cfg, output, cache_dir, progress=progress)
    except _input_errors() as e:  # LabelError, bad options and head/task mismatches are ValueErrors
        _fail(e)
    cv = meta["cv"]
    stats = ", ".join(f"{k} {v:.3f} ± {cv['std'][k]:.3f}" for k, v in cv["mean"].items())
    click.echo(f"{cv['folds']}-fold CV ({meta['n_train']} records): {stats}")
    click.echo(f"head saved to {output}", err=True)


@command.command("predict")
@click.argument("fasta", type=click.Path(exists=True, dir_okay=False))
@click.option("--head", "head_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="CSV: id,prediction")
@click.option("--model", "model_name", default=None, help="override the model recorded in the head")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
@click.option("--toks-per-batch", type=int, default=4096, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--progress/--no-progress", default=True, show_default=True)
def predict(fasta, head_dir, output, model_name, cache_dir, toks_per_batch, device, progress):
    """Apply a saved head to every record of FASTA."""
    from protlm.tasks.function import predict_function

    try:
        n = predict_function(fasta, head_dir, output, model_name, cache_dir, toks_per_batch, device,
                             progress=progress)
    except _input_errors() as e:
        _fail(e)
    click.echo(f"{n} predictions -> {output}", err=True)
