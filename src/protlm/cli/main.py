"""`protlm` command line: a thin group; each subcommand lives in its own module."""

from __future__ import annotations

import importlib
import sys
import warnings

import click

from protlm.errors import ProtlmError, ProtlmWarning

# subcommand -> module exposing `command` (a click.Command or Group). Imported lazily so
# `protlm --help` stays fast and one subcommand's heavy imports never slow another.
SUBCOMMANDS = {
    "embed": "protlm.cli.embed",
    "convert": "protlm.cli.convert",
    "train": "protlm.cli.train",
    "contacts": "protlm.cli.contacts",
    "function": "protlm.cli.function",
    "variants": "protlm.cli.variants",
    "evaluate": "protlm.cli.evaluate",
    "serve": "protlm.cli.serve",
}


class ReportedError(click.ClickException):
    """A ProtlmError as click reports it: `Error: <message>` on stderr, the error's exit code."""

    def __init__(self, error: ProtlmError):
        super().__init__(error.cli_message())
        self.exit_code = error.exit_code


_default_showwarning = warnings.showwarning


_shown: set[tuple[type, str]] = set()  # protlm warnings already shown in this invocation


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, ProtlmWarning):
        # deduplicated here, not by a "once" filter: Python forgets what such a filter showed
        # whenever any library changes the warning filters (matplotlib does on first use)
        if (category, str(message)) not in _shown:
            _shown.add((category, str(message)))
            click.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx, name):
        if name not in SUBCOMMANDS:
            return None
        return importlib.import_module(SUBCOMMANDS[name]).command

    def invoke(self, ctx):
        # The one place user errors are reported, for `main` and for click's own runners alike
        # (tests call `cli` through CliRunner); every other exception keeps its traceback.
        with warnings.catch_warnings():
            # protlm's own warnings: one plain line each per run, whichever code path raised them
            _shown.clear()
            warnings.simplefilter("always", ProtlmWarning)
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except ProtlmError as e:
                raise ReportedError(e) from None


@click.group(cls=LazyGroup)
@click.version_option(package_name="protlm")
def cli():
    """protlm: protein language models (ESM-1b, ESM-2) from pretraining to downstream use."""


def main(argv=None):
    """Entry point: user errors (ProtlmError, see LazyGroup.invoke) print one message and exit
    non-zero; bugs keep their traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


def run_script(fn, *args):
    """`fn(*args)` for the entry points outside click (`python -m protlm.train.export`, scripts/):
    a user error is reported as `main` reports it, one line and its exit code, no traceback."""
    try:
        return fn(*args)
    except ProtlmError as e:
        ReportedError(e).show()
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
