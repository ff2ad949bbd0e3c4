"""`protlm` command line: a thin group; each subcommand lives in its own module."""

from __future__ import annotations

import importlib
import sys

import click

from protlm.errors import ProtlmError

# subcommand -> module exposing `command` (a click.Command or Group). Imported lazily so
# `protlm --help` stays fast and one subcommand's heavy imports never slow another.
SUBCOMMANDS = {
    "embed": "protlm.cli.embed",
    "convert": "protlm.cli.convert",
    "train": "protlm.cli.train",
    "contacts": "protlm.cli.contacts",
    "function": "protlm.cli.function",
    "variants": "protlm.cli.variants",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        return importlib.import_module(SUBCOMMANDS[name]).command


@click.group(cls=LazyGroup)
@click.version_option(package_name="protlm")
def cli():
    """protlm: protein language models (ESM-1b, ESM-2) from pretraining to downstream use."""


def main(argv=None):
    """Entry point: user errors (ProtlmError) print one line and exit 1; bugs keep their traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except ProtlmError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
