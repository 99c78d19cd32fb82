"""The project's own error types.

Every error a user can cause (a bad file, a bad option, a broken checkpoint)
is raised as a :class:`ContrastkitError` subclass whose message names the
file or option and the problem. The CLI prints the message without a
traceback and exits with status 2.
"""


class ContrastkitError(Exception):
    """Base class of all errors contrastkit reports to a user."""


class DataError(ContrastkitError):
    """A data set could not be read: the message names the file and the problem."""


class ConfigError(ContrastkitError):
    """An option or hyper-parameter is invalid: the message names the valid values."""


class CheckpointError(ContrastkitError):
    """A checkpoint or run folder is missing, corrupt or of the wrong schema."""


class TrainingError(ContrastkitError):
    """Training cannot go on (for example the loss became NaN or inf)."""
