"""The error hierarchy of Pollinate.

Every error says what was wrong and how to fix it. Catch :class:`PollinateError` to
handle anything the library raises on purpose.
"""

from __future__ import annotations


class PollinateError(Exception):
    """Base class of every error Pollinate raises on purpose."""


class ConfigError(PollinateError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class DatasetError(PollinateError, ValueError):
    """A dataset file is missing, malformed or inconsistent.

    ``path`` and ``line`` name where the problem is, when it is in a file.
    """

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class DatasetNotFoundError(DatasetError):
    """A dataset is not in the data directory and cannot be downloaded."""


class ChecksumError(DatasetError):
    """A downloaded or cached file does not match its known SHA-256."""


class ModelError(PollinateError, ValueError):
    """A model is unknown or was asked for something it cannot do."""


class TrainingDivergedError(PollinateError, ArithmeticError):
    """Local training produced non-finite values; nothing of the round was kept."""
