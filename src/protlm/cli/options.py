"""Options shared by the subcommands that read sequences."""

from __future__ import annotations

import click

unknown_to_x = click.option(
    "--unknown-to-x", "unknown_to_x", is_flag=True,
    help="map characters outside the residue alphabet to X instead of stopping at the first one")


def unknown_arg(unknown_to_x: bool) -> str | None:
    """The library's `unknown=` argument for the flag."""
    return "X" if unknown_to_x else None
