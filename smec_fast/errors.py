"""Errors a user can fix: the CLI prints them as one line and exits non-zero, without a traceback."""


class SmecFastError(Exception):
    """A problem with the user's input (an option, a file, a dataset layout), not a bug."""


class ConfigError(SmecFastError):
    """An option value or config file is invalid."""


class DataError(SmecFastError):
    """A dataset, label file or image is missing or malformed; the message names the file (and line)."""


class CheckpointError(SmecFastError):
    """A checkpoint or weight file cannot be used."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line
    error reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
