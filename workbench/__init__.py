"""medvl-workbench: a plugin host for medical imaging vision-language work.

A plugin is one module: ``from workbench import hookimpl`` and implement the
hooks of :mod:`workbench.hookspecs`.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "workbench"
ENTRY_POINT_GROUP = "workbench.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["hookimpl", "hookspec", "__version__", "PROJECT_NAME", "ENTRY_POINT_GROUP"]
