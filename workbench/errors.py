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
