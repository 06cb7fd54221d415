"""Errors a person can act on.

Every anticipated failure raises a `GenforgeError` subclass whose message is one line saying
*what* went wrong, *where* (file:line, field, step) and, when known, *how to fix it*. The CLI
prints these without a traceback and exits with status 2; anything else is a bug and keeps its
traceback.
"""


class GenforgeError(Exception):
    """Base class of the errors the CLI reports as one line."""


class ConfigError(GenforgeError):
    """A bad config key or value."""


class DataError(GenforgeError):
    """Malformed, missing or empty input data (message names file and line)."""


class CheckpointError(GenforgeError):
    """A missing, corrupt or mismatched checkpoint."""


class StorageError(GenforgeError):
    """Output that cannot be written: disk full, permission denied (message names the folder)."""


class TrainingError(GenforgeError):
    """A training run that cannot continue (NaN loss, too many bad steps)."""
