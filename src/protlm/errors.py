"""protlm's one error base class.

Every error caused by the user's input (a file, an option, a checkpoint) derives from
ProtlmError. The CLI handles it once: a message on stderr and a non-zero exit, no traceback.
Anything else escaping a command is a bug and keeps its traceback.
"""


class ProtlmError(Exception):
    """An error in what the user gave protlm; the message says what and where."""
