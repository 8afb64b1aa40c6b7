"""The reporting plugin's hooks."""

from __future__ import annotations

PLUGIN_NAME = "reporting"
