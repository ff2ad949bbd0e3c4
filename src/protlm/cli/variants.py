"""`protlm variants score`: zero-shot mutation effects from a masked language model."""

from __future__ import annotations

import click

from protlm.cli.options import inference_options
from protlm.variants.scoring import METHODS


@click.group()
def command():
    """Zero-shot variant effect prediction (no labels needed)."""


@command.command("score")
@click.option("--sequence", "wt_fasta", required=True, type=click.Path(exists=True, dir_okay=False),
              help="FASTA with the one wild-type sequence")
@click.option("--mutations", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV/TSV with a 'mutant' column: H24C, or H24C:A42G for multiple mutants")
@click.option("--method", type=click.Choice(METHODS), default="masked-marginal", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False))
@click.option("--column", default=None, help="name of the added score column (default: the method)")
@click.option("--offset", type=int, default=1, show_default=True,
              help="number of the first residue of --sequence in the mutant strings")
@inference_options(long=False)
def score(wt_fasta, mutations, method, output, column, offset, opts):
    """Score every mutant of MUTATIONS against the wild type; writes the rows plus a score.

    A wild type over the model's limit is scored in a window of the limit centred on each
    mutant's positions (wt-marginal: overlapping windows, averaged)."""
    from protlm.variants.pipeline import score_file

    n = score_file(wt_fasta, mutations, output, opts, method=method, column=column, offset=offset)
    click.echo(f"{n} mutants scored ({method}) -> {output}", err=True)
