"""`protlm variants score`: zero-shot mutation effects from a masked language model."""

from __future__ import annotations

import click

from protlm.cli import options
from protlm.cli.options import unknown_arg, unknown_to_x
from protlm.tasks.variants import METHODS


@click.group()
def command():
    """Zero-shot variant effect prediction (no labels needed)."""


@command.command("score")
@click.option("--model", "model_name", required=True, help="published name or checkpoint path")
@click.option("--sequence", "wt_fasta", required=True, type=click.Path(exists=True, dir_okay=False),
              help="FASTA with the one wild-type sequence")
@click.option("--mutations", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV/TSV with a 'mutant' column: H24C, or H24C:A42G for multiple mutants")
@click.option("--method", type=click.Choice(METHODS), default="masked-marginal", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False))
@click.option("--column", default=None, help="name of the added score column (default: the method)")
@click.option("--offset", type=int, default=1, show_default=True,
              help="number of the first residue of --sequence in the mutant strings")
@click.option("--batch-size", type=int, default=8, show_default=True, help="sequences per forward pass")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@options.dtype
@click.option("--progress/--no-progress", default=True, show_default=True)
@unknown_to_x
def score(model_name, wt_fasta, mutations, method, output, column, offset, batch_size, device, dtype,
          progress, unknown_to_x):
    """Score every mutant of MUTATIONS against the wild type; writes the rows plus a score."""
    from protlm.tasks.variants import score_file

    n = score_file(model_name, wt_fasta, mutations, output, method, column, offset,
                   batch_size, device, progress, unknown=unknown_arg(unknown_to_x), dtype=dtype)
    click.echo(f"{n} mutants scored ({method}) -> {output}", err=True)
