"""Error types that map to the command-line exit codes.

``UserError`` (and subclasses) means bad input or bad configuration: the CLI prints its message as one line on
stderr and exits with code 2. Anything else is an internal error (exit code 1).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, bad configuration, or a missing prerequisite. Exit code 2, one line, no traceback."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """The configuration (YAML or ``--set``) is invalid."""


class DataError(UserError):
    """A dataset, file or image is missing, corrupt or inconsistent."""


class MissingStageError(UserError):
    """A stage needs the output of an earlier stage that has not run yet."""

    def __init__(self, what: str, stage: str) -> None:
        super().__init__(f"{what} not found: run `synthmed {stage}` first")
        self.stage = stage


class LeakageError(UserError):
    """A synthetic or generator-training image would reach val or test."""


class TrainingDivergedError(UserError):
    """Loss became NaN or inf; the last good checkpoint is kept."""
