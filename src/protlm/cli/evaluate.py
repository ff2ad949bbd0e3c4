"""`protlm evaluate`: a thin wrapper over protlm.evaluate.run."""

from __future__ import annotations

from pathlib import Path

import click

from protlm.cli.options import inference_options
from protlm.evaluate.contacts import DEFAULT_C
from protlm.evaluate.perplexity import DEFAULT_SEED

FORMATS = {".md": "md", ".markdown": "md", ".csv": "csv"}


@click.command()
@click.option("--models", "models", required=True, multiple=True,
              help="published name or checkpoint path; repeat the option or separate names with commas")
@click.option("--perplexity", "perplexity_fasta", type=click.Path(exists=True, dir_okay=False), default=None,
              help="held-out FASTA for the masked perplexity")
@click.option("--structures", type=click.Path(exists=True, file_okay=False), default=None,
              help="folder of structures for contact precision (every 3rd chain scored, the rest fit heads)")
@click.option("--heads", type=click.Path(exists=True, file_okay=False), default=None,
              help="folder of pre-fitted attention heads, <model>.safetensors or .pt (an earlier OUTPUT.parts works)")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="table.md or table.csv; finished models are kept in OUTPUT.parts/ (resume)")
@click.option("--max-sequences", type=click.IntRange(min=1), default=None,
              help="evaluate perplexity on this many sequences (a fixed sample by sequence hash)")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="masks and crops")
@click.option("--C", "C", type=float, default=DEFAULT_C, show_default=True,
              help="inverse L1 strength of heads fitted here")
@inference_options(model="none", long=False)
def command(models, perplexity_fasta, structures, heads, output, max_sequences, seed, C, opts):
    """Compare models: parameters, validation perplexity, contact precision, beside published figures."""
    from protlm.errors import InputError
    from protlm.evaluate.run import EvalSettings, run_evaluation

    fmt = FORMATS.get(Path(output).suffix.lower())
    if fmt is None:
        raise InputError(f"--output must end in .md or .csv, got {output}")
    names = [n.strip() for arg in models for n in arg.split(",") if n.strip()]
    settings = EvalSettings(perplexity_fasta, structures, heads, seed, max_sequences, C=C)
    table = run_evaluation(names, settings, output, opts, fmt, echo=lambda m: click.echo(m, err=True))
    click.echo(table, nl=False)
