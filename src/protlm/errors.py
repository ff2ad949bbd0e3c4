"""protlm's one error base class.

Every error caused by the user's input (a file, an option, a checkpoint) derives from
ProtlmError. The CLI handles it once: a message on stderr and a non-zero exit, no traceback.
Anything else escaping a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class ProtlmWarning(UserWarning):
    """Something the user should know about a result (shown once per run by the CLI)."""


class ProtlmError(Exception):
    """An error in what the user gave protlm; the message says what and where."""

    hint = ""  # advice in library terms (e.g. an argument), added to the message by str()
    cli_hint = ""  # the same advice in command-line terms (e.g. a flag); the CLI shows it instead
    exit_code = 1

    def __str__(self) -> str:
        return self._message(self.hint)

    def cli_message(self) -> str:
        """The message as the command line reports it."""
        return self._message(self.cli_hint or self.hint)

    def within(self, cls: type[ProtlmError], where: str) -> ProtlmError:
        """This error as a `cls`, its message prefixed with `where` (file, line), hints kept."""
        err = cls(f"{where}: {self._message('')}")
        err.hint, err.cli_hint = self.hint, self.cli_hint
        return err

    def _message(self, hint: str) -> str:
        # args[0], not Exception.__str__: a KeyError subclass would print its message quoted
        msg = str(self.args[0]) if len(self.args) == 1 else super().__str__()
        return f"{msg} ({hint})" if hint else msg


class InputError(ProtlmError, ValueError):
    """An option, or the content of a file the user named, that protlm cannot use."""


class NotFoundError(ProtlmError, FileNotFoundError):
    """A file or folder the user named does not exist or lacks what it must hold."""


class ConfigError(ProtlmError, ValueError):
    """A setting that cannot be used (a run file key, a --set override, a dtype for storing)."""

    exit_code = 2  # a usage error, as click reports bad options
