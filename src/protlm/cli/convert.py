"""`protlm convert SRC DST --to {protlm,hf}`: rewrite a checkpoint in another layout."""

from __future__ import annotations

import click

from protlm.dtypes import STORAGE_CHOICES


@click.command("convert")
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--to", "to", type=click.Choice(["protlm", "hf"]), default="protlm", show_default=True,
              help="protlm: config.json + model.safetensors; hf: a transformers folder "
                   "(EsmForMaskedLM; T5EncoderModel for ProtT5).")
@click.option("--dtype", type=click.Choice(STORAGE_CHOICES), default=None,
              help="Store the parameters in this dtype (default: as loaded, fp32); buffers stay fp32.")
def command(src: str, dst: str, to: str, dtype: str | None) -> None:
    """Convert SRC (published name, fair-esm .pt, HF folder or protlm folder) into folder DST."""
    from protlm.pretrained.writers import convert_checkpoint

    out = convert_checkpoint(src, dst, to=to, dtype=dtype)
    click.echo(f"wrote {to} checkpoint to {out}")
