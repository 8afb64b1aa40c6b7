"""The model registry, one import for users: factories, stored versions, shared placed instances.

- Factories (``@register_model``, :func:`create_model`, :func:`list_models`):
  :mod:`workbench.model_factories`.
- Stored versions (safetensors weights + records, SQLite index, aliases):
  :mod:`workbench.model_store`, its records in :mod:`workbench.model_records`.
- Shared eval-mode instances per device and precision, evicted LRU:
  :mod:`workbench.model_cache`.

The modules import in one direction (factories <- store -> cache), so this
facade imports them plainly.
"""

from __future__ import annotations

from workbench.errors import IntegrityError, RegistryError
from workbench.model_cache import CacheKey, ModelCache
from workbench.model_factories import (
    DEFAULT_PLUGIN,
    ModelEntry,
    ModelRegistry,
    PluginModelRegistry,
    create_model,
    get_registry,
    list_models,
    register_model,
    reset_registry,
)
from workbench.model_records import ModelRecord, Preprocessing, describe_record, parse_ref
from workbench.model_store import ModelStore, default_store_root, open_store

__all__ = [
    "CacheKey", "DEFAULT_PLUGIN", "IntegrityError", "ModelCache", "ModelEntry", "ModelRecord", "ModelRegistry",
    "ModelStore", "PluginModelRegistry", "Preprocessing", "RegistryError", "create_model", "default_store_root",
    "describe_record", "get_registry", "list_models", "open_store", "parse_ref", "register_model", "reset_registry",
]
