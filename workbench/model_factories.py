"""The model registry: named model factories, shared by every plugin.

The verbs are the ones timm and open_clip users know: ``@register_model``,
:func:`create_model`, :func:`list_models`. Unlike timm, which silently replaces
a factory registered twice, a duplicate name is an error naming both plugins
(torchvision's behaviour), because in a multi-plugin host the second
registration usually means two plugins disagree about what a name builds.

The host hands each plugin a :class:`PluginModelRegistry`, a view of the
process-wide :class:`ModelRegistry` that records the plugin's name with every
factory it adds.

Stored versions (weights + records) live in :mod:`workbench.model_store`,
shared placed instances in :mod:`workbench.model_cache`; users import all of
it from :mod:`workbench.registry`.
"""

from __future__ import annotations

import difflib
import fnmatch
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from torch import nn

from workbench.errors import RegistryError

ModelFactory = Callable[..., nn.Module]
FactoryT = TypeVar("FactoryT", bound=ModelFactory)

DEFAULT_PLUGIN = "workbench"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model factory.

    Attributes:
        name: the name ``create_model`` takes.
        factory: ``factory(**cfg) -> nn.Module``.
        task: what the model does, e.g. ``"segmentation"``, ``"image-encoder"``.
        plugin: the plugin that registered it.
        description: one line for ``workbench models`` listings.
    """

    name: str
    factory: ModelFactory
    task: str
    plugin: str = DEFAULT_PLUGIN
    description: str = ""


def _check_name(name: str, what: str) -> str:
    # ':' separates name and version in references ("name:v3"); whitespace breaks CLI use.
    if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() for c in name) or ":" in name:
        raise RegistryError(f"{what} {name!r} is not valid: use a non-empty name without spaces or ':'")
    return name


def _first_doc_line(factory: Callable[..., Any]) -> str:
    doc = (getattr(factory, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class ModelRegistry:
    """Named model factories, each recorded with its task and plugin.

    Thread-safe: registration and lookup take an internal lock.
    """

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()

    def register(
        self,
        name: str,
        factory: ModelFactory,
        *,
        task: str,
        plugin: str = DEFAULT_PLUGIN,
        description: str = "",
    ) -> ModelEntry:
        """Add a factory under ``name``.

        Args:
            name: unique model name (no spaces, no ``:``).
            factory: callable ``factory(**cfg) -> nn.Module``.
            task: the model's task, used by ``list_models(task=...)``.
            plugin: the plugin registering it.
            description: one line; defaults to the factory docstring's first line.

        Returns:
            The new :class:`ModelEntry`.

        Raises:
            RegistryError: ``name`` is already registered (the message names
                both plugins), or ``name``/``task``/``factory`` is invalid.
        """
        _check_name(name, "model name")
        if not callable(factory):
            raise RegistryError(f"model {name!r} from plugin {plugin!r}: factory {factory!r} is not callable")
        if not isinstance(task, str) or not task.strip():
            raise RegistryError(f"model {name!r} from plugin {plugin!r}: task must be a non-empty string")
        entry = ModelEntry(name, factory, task, plugin, description or _first_doc_line(factory))
        with self._lock:
            previous = self._entries.get(name)
            if previous is not None:
                raise RegistryError(
                    f"model {name!r} is registered by plugin {previous.plugin!r} and again by plugin {plugin!r}"
                )
            self._entries[name] = entry
        return entry

    def unregister_plugin(self, plugin: str) -> list[str]:
        """Remove every factory a plugin added (the host uses it when a plugin's hook fails midway).

        Args:
            plugin: the plugin name.

        Returns:
            The removed model names, sorted.
        """
        with self._lock:
            removed = sorted(name for name, entry in self._entries.items() if entry.plugin == plugin)
            for name in removed:
                del self._entries[name]
        return removed

    def entry(self, name: str) -> ModelEntry:
        """Return the :class:`ModelEntry` for ``name``.

        Raises:
            RegistryError: unknown name; the message lists close matches.
        """
        with self._lock:
            found = self._entries.get(name)
            if found is not None:
                return found
            known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        count_note = f" ({len(known)} models registered; `workbench models list` shows them)"
        raise RegistryError(f"unknown model {name!r}{hint}{count_note}")

    def create_model(self, name: str, **cfg: Any) -> nn.Module:
        """Build the model registered as ``name`` with keyword config ``cfg``.

        Args:
            name: a registered model name.
            **cfg: keyword arguments passed to the factory.

        Returns:
            The new ``nn.Module`` (in the mode the factory leaves it, normally train).

        Raises:
            RegistryError: unknown name (close matches listed) or the factory
                did not return an ``nn.Module``.
        """
        entry = self.entry(name)
        model = entry.factory(**cfg)
        if not isinstance(model, nn.Module):
            raise RegistryError(
                f"factory for model {name!r} (plugin {entry.plugin!r}) returned {type(model).__name__}, not nn.Module"
            )
        return model

    def list_models(self, pattern: str = "*", task: str | None = None) -> list[str]:
        """Registered names matching a shell-style ``pattern`` and, if given, ``task``.

        Args:
            pattern: ``fnmatch`` pattern, e.g. ``"unet*"``.
            task: keep only models of this task.

        Returns:
            Sorted model names.
        """
        with self._lock:
            entries = list(self._entries.values())
        return sorted(
            e.name for e in entries if fnmatch.fnmatchcase(e.name, pattern) and (task is None or e.task == task)
        )

    def entries(self) -> list[ModelEntry]:
        """Every entry, sorted by name (for listings that show task and plugin)."""
        with self._lock:
            return [self._entries[name] for name in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.list_models())


class PluginModelRegistry:
    """A :class:`ModelRegistry` seen by one plugin: what it registers is recorded under its name.

    This is the object the host passes to ``workbench_register_models(registry)``.

    Args:
        registry: the shared registry.
        plugin: the plugin's name.
    """

    def __init__(self, registry: ModelRegistry, plugin: str) -> None:
        self._registry = registry
        self.plugin = plugin

    def register(self, name: str, factory: ModelFactory, *, task: str, description: str = "") -> ModelEntry:
        """Add a factory for this plugin; see :meth:`ModelRegistry.register`.

        Raises:
            RegistryError: duplicate name (both plugins named) or invalid arguments.
        """
        return self._registry.register(name, factory, task=task, plugin=self.plugin, description=description)

    def create_model(self, name: str, **cfg: Any) -> nn.Module:
        """Build any registered model (another plugin's included); see :meth:`ModelRegistry.create_model`."""
        return self._registry.create_model(name, **cfg)

    def list_models(self, pattern: str = "*", task: str | None = None) -> list[str]:
        """Names in the shared registry; see :meth:`ModelRegistry.list_models`."""
        return self._registry.list_models(pattern, task)

    def entry(self, name: str) -> ModelEntry:
        """The entry for ``name`` in the shared registry."""
        return self._registry.entry(name)


_default_registry: ModelRegistry | None = None
_default_lock = threading.Lock()


def get_registry() -> ModelRegistry:
    """Return the process-wide :class:`ModelRegistry`, creating it on first use."""
    global _default_registry
    with _default_lock:
        if _default_registry is None:
            _default_registry = ModelRegistry()
        return _default_registry


def reset_registry() -> ModelRegistry:
    """Replace the process-wide registry with an empty one (for tests) and return it.

    Factories registered by ``@register_model`` at import time are gone
    afterwards; the host re-registers plugin models through its hook.
    """
    global _default_registry
    with _default_lock:
        _default_registry = ModelRegistry()
        return _default_registry


def register_model(
    name: str, *, task: str, plugin: str = DEFAULT_PLUGIN, description: str = ""
) -> Callable[[FactoryT], FactoryT]:
    """Decorator: register the decorated factory in the process-wide registry.

    Example::

        @register_model("tiny-unet", task="segmentation")
        def tiny_unet(in_channels: int = 1, out_channels: int = 1) -> nn.Module:
            ...

    Args:
        name: the model name.
        task: the model's task.
        plugin: the registering plugin.
        description: one line; defaults to the docstring's first line.

    Returns:
        A decorator that registers the factory and returns it unchanged.

    Raises:
        RegistryError: when applied, if the name is already registered.
    """

    def decorate(factory: FactoryT) -> FactoryT:
        get_registry().register(name, factory, task=task, plugin=plugin, description=description)
        return factory

    return decorate


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build a model from the process-wide registry; see :meth:`ModelRegistry.create_model`."""
    return get_registry().create_model(name, **cfg)


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """List models in the process-wide registry; see :meth:`ModelRegistry.list_models`."""
    return get_registry().list_models(pattern, task)
