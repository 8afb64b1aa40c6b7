"""Named catalogs that remember which plugin added each entry.

The dataset builders, manifest formats, metrics, demo steps and CLI commands
are all "a name, a thing, and the plugin that added it". One class holds that
rule: a name added twice is a :class:`~workbench.errors.PluginError` naming
both plugins (torchvision raises on a duplicate where timm silently
overwrites; in a multi-plugin host, silence would hide which plugin won).
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from workbench.errors import PluginError, WorkbenchError

ItemT = TypeVar("ItemT")


@dataclass(frozen=True)
class CatalogEntry(Generic[ItemT]):
    """One named item and the plugin that added it."""

    name: str
    item: ItemT
    plugin: str
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


class NamedCatalog(Generic[ItemT]):
    """A mapping of unique names to items, each tagged with its plugin.

    Args:
        kind: what the catalog holds, for messages ("dataset builder", "metric").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, CatalogEntry[ItemT]] = {}

    def add(self, name: str, item: ItemT, *, plugin: str, description: str = "", **options: Any) -> ItemT:
        """Add ``item`` under ``name`` for ``plugin`` and return the item.

        Raises:
            PluginError: the name is taken; the message names both plugins.
        """
        if not name or not isinstance(name, str):
            raise PluginError(f"plugin {plugin!r} tried to add a {self.kind} with an empty name")
        if name in self._entries:
            first = self._entries[name].plugin
            raise PluginError(f"{self.kind} {name!r} is added by plugin {first!r} and again by plugin {plugin!r}")
        self._entries[name] = CatalogEntry(name, item, plugin, description, dict(options))
        return item

    def get(self, name: str) -> ItemT:
        """Return the item named ``name``.

        Raises:
            WorkbenchError: unknown name, with the closest known names.
        """
        return self.entry(name).item

    def entry(self, name: str) -> CatalogEntry[ItemT]:
        """Return the full entry (item, plugin, description) for ``name``."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(self._entries)) or 'none'}"
            raise WorkbenchError(f"unknown {self.kind} {name!r}{hint}")
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching the shell-style ``pattern``."""
        return sorted(name for name in self._entries if fnmatch.fnmatch(name, pattern))

    def by_plugin(self, plugin: str) -> list[str]:
        """Names added by ``plugin``, sorted."""
        return sorted(name for name, entry in self._entries.items() if entry.plugin == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[CatalogEntry[ItemT]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


class PluginScope:
    """Base for the hook arguments: a catalog view that stamps the calling plugin's name."""

    def __init__(self, plugin: str):
        self.plugin = plugin


class DatasetCatalog:
    """Dataset builders (a layout on disk -> manifest records) and manifest formats."""

    def __init__(self) -> None:
        self.builders: NamedCatalog[Callable[..., list[dict]]] = NamedCatalog("dataset builder")
        self.manifest_formats: NamedCatalog[Callable[..., list[dict]]] = NamedCatalog("manifest format")

    def scoped(self, plugin: str) -> "PluginDatasetCatalog":
        """The view handed to ``plugin``'s ``workbench_register_datasets`` hook."""
        return PluginDatasetCatalog(self, plugin)


class PluginDatasetCatalog(PluginScope):
    """What a plugin sees of the dataset catalog."""

    def __init__(self, catalog: DatasetCatalog, plugin: str):
        super().__init__(plugin)
        self._catalog = catalog

    def add_builder(self, name: str, builder: Callable[..., list[dict]], description: str = "") -> None:
        """Add ``builder(root: Path, **options) -> list[dict]`` (manifest records) under ``name``."""
        self._catalog.builders.add(name, builder, plugin=self.plugin, description=description)

    def add_manifest_format(self, name: str, reader: Callable[..., list[dict]], description: str = "") -> None:
        """Add ``reader(path: Path) -> list[dict]`` for manifests of kind ``name`` (e.g. ``"csv"``)."""
        self._catalog.manifest_formats.add(name, reader, plugin=self.plugin, description=description)


class MetricCatalog(NamedCatalog[Callable[[], Any]]):
    """Named metric factories for ``workbench eval``."""

    def __init__(self) -> None:
        super().__init__("metric")

    def scoped(self, plugin: str) -> "PluginMetricCatalog":
        """The view handed to ``plugin``'s ``workbench_register_metrics`` hook."""
        return PluginMetricCatalog(self, plugin)


class PluginMetricCatalog(PluginScope):
    """What a plugin sees of the metric catalog."""

    def __init__(self, catalog: MetricCatalog, plugin: str):
        super().__init__(plugin)
        self._catalog = catalog

    def add(self, name: str, factory: Callable[[], Any], description: str = "") -> None:
        """Add a metric ``factory()`` under ``name``."""
        self._catalog.add(name, factory, plugin=self.plugin, description=description)
