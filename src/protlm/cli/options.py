"""Options shared by the subcommands that read sequences."""

from __future__ import annotations

import click

from protlm.dtypes import CHOICES as DTYPE_CHOICES

unknown_to_x = click.option(
    "--unknown-to-x", "unknown_to_x", is_flag=True,
    help="map characters outside the residue alphabet to X instead of stopping at the first one")


def unknown_arg(unknown_to_x: bool) -> str | None:
    """The library's `unknown=` argument for the flag."""
    return "X" if unknown_to_x else None

dtype = click.option(
    "--dtype", type=click.Choice(DTYPE_CHOICES), default="fp32", show_default=True,
    help="inference precision: fp32 (fair-esm's numbers), bf16, fp16; int8 (CPU: Linear weights "
    "int8 per channel, activations quantized per call, the rest fp32; cached after the first "
    "run); auto (the fastest measured on this CPU, printed)")
