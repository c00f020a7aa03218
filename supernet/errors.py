"""The project's exception hierarchy: every error a user can cause derives from HwnasError.

Messages say what was wrong and what would be right, so the command line can print them
without a traceback.
"""

from __future__ import annotations


class HwnasError(Exception):
    """Base class for errors caused by input from outside (arguments, files, names)."""


class ConfigError(HwnasError, ValueError):
    """An invalid search space or sub-network configuration (names the bad field)."""


class DataError(HwnasError):
    """A missing data set, package, file or column, or an unknown task name."""


class CheckpointError(HwnasError):
    """A missing, corrupt or mismatched checkpoint or model directory."""


class RunLocked(HwnasError):
    """Another process is writing to the run folder (names its pid and command)."""


class TrainingDiverged(HwnasError):
    """A training step's loss or gradient norm was not finite (NaN or infinite): the step is
    not applied, so the last checkpoint and the weights in memory stay finite."""
