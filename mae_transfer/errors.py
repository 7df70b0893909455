"""The toolkit's error types: a leaf every layer may import (nothing here imports the toolkit).

A `UserError` is a mistake the user can fix: the command line prints its message as one `error:` line and
exits 2. Anything else that escapes a command is a bug (ours or a host library's): `internal error:`, the
traceback in a log, exit 1 -- so a user and a test can tell the two apart."""


class UserError(Exception):
    """A mistake in what the user gave (a flag, a file, a folder); the message is one line meant for them."""


class ConfigError(UserError, ValueError):
    """A command line, override or config file that cannot be used."""


class DataError(UserError, ValueError):
    """A dataset, annotation file or image that cannot be used."""


class CheckpointError(UserError, RuntimeError):
    """A weights file or export folder that cannot be read, is unsafe, or does not fit."""


class RunFailed(RuntimeError):
    """A run that started and could not finish (a diverging loss, an export that fails its parity gate):
    one `error:` line, exit 1."""
