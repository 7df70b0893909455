"""The toolkit's error types: a leaf every layer may import (nothing here imports the toolkit).

A `UserError` is a mistake the user can fix: the command line prints its message as one `error:` line and
exits 2. Anything else that escapes a command is a bug (ours or a host library's): `internal error:`, the
traceback in a log, exit 1 -- so a user and a test can tell the two apart."""


class UserError(Exception):
    """A mistake in what the user gave (a flag, a file, a folder); the message is one line meant for them.

    Raised in a DataLoader worker, it reaches the main process rebuilt by torch from a text that adds the
    worker's traceback ("Caught DataError in DataLoader worker process 1. Original Traceback ..."): the
    message is the original one line again."""

    def __init__(self, *args):
        text = args[0] if len(args) == 1 and isinstance(args[0], str) else ""
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            name = text[len("Caught "):].split(" ", 1)[0]
            lines = text.rstrip("\n").split("\n")
            for k in range(len(lines) - 1, 0, -1):  # the last `module.Name: message` line (format_exception's)
                head, sep, rest = lines[k].partition(": ")
                if sep and head.rsplit(".", 1)[-1] == name:
                    args = ("\n".join([rest, *lines[k + 1:]]),)
                    break
        super().__init__(*args)


class ConfigError(UserError, ValueError):
    """A command line, override or config file that cannot be used."""


class DataError(UserError, ValueError):
    """A dataset, annotation file or image that cannot be used."""


class CheckpointError(UserError, RuntimeError):
    """A weights file or export folder that cannot be read, is unsafe, or does not fit."""


class RunFailed(RuntimeError):
    """A run that started and could not finish (a diverging loss, an export that fails its parity gate):
    one `error:` line, exit 1."""
