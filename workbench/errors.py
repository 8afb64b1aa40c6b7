"""The workbench's own exception types.

Every error a user can cause (a bad file, a bad config, a tampered checkpoint)
is raised as a subclass of :class:`WorkbenchError` whose message names the file
or key and the problem, so the CLI can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class WorkbenchError(Exception):
    """Base class for every error the workbench raises on purpose."""


class ConfigError(WorkbenchError):
    """A config file or override is invalid (unknown key, wrong type, bad YAML)."""


class DataError(WorkbenchError):
    """A data record cannot be used. ``path`` names the file, ``reason`` the problem."""

    def __init__(self, path: str | Path | None, reason: str):
        self.path = str(path) if path is not None else None
        self.reason = reason
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{reason}")


class ImageReadError(DataError):
    """An image file is missing, corrupt, of an unsupported kind, or holds NaN/Inf."""


class ManifestError(DataError):
    """A manifest line is malformed; the message names the file, line and field."""


class RegistryError(WorkbenchError):
    """The model registry cannot satisfy a request (unknown name/version, duplicate name)."""


class IntegrityError(RegistryError):
    """A stored weights file does not match the sha256 recorded when it was saved."""


class PluginError(WorkbenchError):
    """A plugin broke the contract (duplicate name, failing hook)."""


# Exit statuses of the ``workbench`` command (README "Exit status"); the one place they are defined.
EXIT_OK = 0
EXIT_ERROR = 2  # a WorkbenchError stopped the command (bad config, unreadable single input, ...)
EXIT_SOME_INPUTS_FAILED = 3  # a batch command finished, but some of its inputs were skipped as bad
EXIT_ALL_INPUTS_FAILED = 4  # a batch command had inputs and every one of them failed


def batch_exit_status(n_inputs: int, n_failed: int) -> int:
    """The exit status of a batch command that processed ``n_inputs`` inputs, ``n_failed`` of them skipped.

    Returns:
        :data:`EXIT_OK` when none failed, :data:`EXIT_ALL_INPUTS_FAILED` when every
        one did (and there was at least one), else :data:`EXIT_SOME_INPUTS_FAILED`.
    """
    if n_failed <= 0:
        return EXIT_OK
    return EXIT_ALL_INPUTS_FAILED if n_failed >= n_inputs else EXIT_SOME_INPUTS_FAILED
