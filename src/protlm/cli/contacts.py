"""`protlm contacts predict | fit | eval`: thin wrappers over protlm.contacts.pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from protlm.cli.options import inference_options

HEADS = ["attention", "bilinear"]
SUFFIX_FORMATS = {".md": "markdown", ".markdown": "markdown", ".csv": "csv"}  # as `protlm evaluate`


@click.group()
def command():
    """Contact maps: predict, fit a head on structures, evaluate precision."""


# long proteins are cut into overlapping windows of the model's limit and their maps merged
_inference = inference_options(long=False, batch=False)
_head = click.option("--head", type=click.Choice(HEADS), default="attention", show_default=True)
_weights = click.option("--head-weights", type=click.Path(exists=True), default=None,
                        help="regression file (.pt/.safetensors) or bilinear head folder; "
                             "default: the one inside the model folder")


@command.command()
@click.argument("fasta", type=click.Path(exists=True, dir_okay=False))
@_head
@_weights
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="folder for <id>.npy and <id>.png")
@click.option("--structure", default=None, help="FILE[:CHAIN]: draw its true contacts over the prediction")
@click.option("--overwrite-changed", is_flag=True,
              help="recompute records already in OUTPUT whose sequence changed (default: refuse)")
@_inference
def predict(fasta, head, head_weights, output, structure, overwrite_changed, opts):
    """Write an L x L map (<id>.npy) and a picture (<id>.png) per FASTA record."""
    from protlm.contacts import pipeline
    from protlm.data.fasta import load_fasta
    from protlm.pretrained.identity import model_identity
    from protlm.runtime import precision

    opts = opts.resolved()  # auto: says what it picked
    model, alphabet, bilinear = pipeline.load_for_contacts(opts, head, head_weights)
    # validated before any output is written
    records = load_fasta(fasta, alphabet=alphabet, unknown=opts.unknown)
    truth = pipeline.load_structures([structure], alphabet)[0] if structure else None
    settings = {"model": precision.keyed(model_identity(opts.model), opts.dtype), "head": head,
                "structure": structure, "head_weights": model_identity(head_weights) if head_weights else None}
    skipped = 0
    for path, computed in pipeline.predict_fasta(model, alphabet, records, Path(output), bilinear,
                                                 truth, settings, overwrite_changed):
        if computed:
            click.echo(str(path))
        skipped += not computed
    if skipped:
        click.echo(f"{skipped} records already in {output} (resumed)")


@command.command()
@_head
@click.option("--structures", required=True, multiple=True,
              help="folder of structures, or FILE[:CHAIN] (repeatable)")
@click.option("--output", "-o", required=True, type=click.Path(),
              help="attention: .pt/.safetensors file or model folder; bilinear: folder")
@click.option("--C", "C", type=float, default=0.15, show_default=True, help="attention: inverse L1 strength")
@click.option("--proj-dim", type=int, default=128, show_default=True, help="bilinear: k")
@click.option("--epochs", type=int, default=200, show_default=True, help="bilinear: full-batch steps")
@_inference
def fit(head, structures, output, C, proj_dim, epochs, opts):
    """Train a contact head on structures with the language model frozen (in fp32 unless --dtype)."""
    from protlm.contacts import pipeline
    from protlm.contacts.bilinear import BilinearTrainConfig, save_bilinear
    from protlm.pretrained.contact_regression import save_regression

    model, alphabet, _ = pipeline.load_for_contacts(opts.resolved())
    chains = pipeline.chains_from_specs(structures, alphabet)
    if head == "attention":
        path = save_regression(*pipeline.fit_attention_head(model, alphabet, chains, C=C), output)
    else:
        cfg = BilinearTrainConfig(proj_dim=proj_dim, epochs=epochs)
        path = save_bilinear(pipeline.fit_bilinear_head(model, alphabet, chains, cfg, opts.model), output)
    click.echo(f"fitted {head} head on {len(chains)} chains -> {path}")


@command.command(name="eval")
@_head
@_weights
@click.option("--structures", required=True, multiple=True,
              help="folder of structures, or FILE[:CHAIN] (repeatable)")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv"]), default=None,
              help="default: from --output's suffix (.md, .csv), markdown on stdout")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="table.md or table.csv; default: stdout")
@_inference
def evaluate(head, head_weights, structures, fmt, output, opts):
    """Precision at L, L/2, L/5 for short, medium and long range, per protein and averaged."""
    from protlm.contacts import pipeline
    from protlm.io import atomic_write

    fmt = table_format(fmt, output)  # before the model loads: a wrong name fails at once
    model, alphabet, bilinear = pipeline.load_for_contacts(opts.resolved(), head, head_weights)
    chains = pipeline.chains_from_specs(structures, alphabet)
    table = pipeline.evaluate(model, alphabet, chains, bilinear, progress=opts.progress)
    text = table.to_markdown() if fmt == "markdown" else table.to_csv()
    if output:
        atomic_write(output, text)
    else:
        click.echo(text, nl=False)


def table_format(fmt: str | None, output: str | None) -> str:
    """The format --output's suffix names (as `protlm evaluate`), else --format, else markdown;
    an unknown suffix, or one that contradicts --format, is refused."""
    from protlm.errors import InputError

    if output is None:
        return fmt or "markdown"
    implied = SUFFIX_FORMATS.get(Path(output).suffix.lower())
    if implied is None:
        raise InputError(f"--output must end in .md or .csv, got {output}")
    if fmt is not None and fmt != implied:
        raise InputError(f"--format {fmt} contradicts --output {output} (a {implied} file name)")
    return implied
