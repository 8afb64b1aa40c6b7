"""The vlm_explain plugin's hooks."""

from __future__ import annotations

PLUGIN_NAME = "vlm_explain"
