"""The plugin host: a pluggy PluginManager with built-ins and entry points.

The host knows no task. It loads the built-in plugin and every distribution
that declares an entry point in ``workbench.plugins``, one at a time: a plugin
that fails to import, implements a hook that does not exist, or raises from a
hook is recorded with its error and skipped, and the others keep working
(pluggy's own ``load_setuptools_entrypoints`` stops at the first failure).
Registration hooks are called plugin by plugin, so every model, dataset,
metric and command knows which plugin added it.

Environment switches (named after pytest's and datasette's):
    ``WORKBENCH_DISABLE_PLUGIN_AUTOLOAD=1``: load built-ins only.
    ``WORKBENCH_DISABLE_PLUGINS=a,b``: block plugins by name (also ``--disable-plugin``).
    ``WORKBENCH_TRACE_HOOKS=1``: log every hook call and its result.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import logging
import os
import sys
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import click
import pluggy

from workbench import ENTRY_POINT_GROUP, PROJECT_NAME, __version__, hookspecs
from workbench.catalogs import DatasetCatalog, MetricCatalog, NamedCatalog, PluginScope
from workbench.data.manifests import install_manifest_formats
from workbench.demo import DemoSteps
from workbench.errors import PluginError

logger = logging.getLogger("workbench.host")

BUILTIN_PLUGINS: tuple[str, ...] = ("workbench.builtin",)
REGISTRATION_HOOKS: tuple[str, ...] = (
    "workbench_register_models",
    "workbench_register_datasets",
    "workbench_register_metrics",
)


@dataclass
class PluginInfo:
    """What ``workbench plugins`` reports about one plugin."""

    name: str
    version: str
    source: str
    module: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the plugin loaded and none of its hooks failed."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (name, version, source, module, hooks, error)."""
        record = asdict(self)
        record.pop("traceback")
        return record


class CommandCollector(PluginScope):
    """The view of the root click group handed to ``workbench_add_commands``.

    Commands added here are recorded under the plugin's name; a command name
    that already exists is an error naming both plugins.
    """

    def __init__(self, group: Any, owners: NamedCatalog[Any], plugin: str):
        super().__init__(plugin)
        self._group = group
        self._owners = owners

    def add_command(self, command: Any, name: str | None = None) -> None:
        """Add a click command or group under ``name`` (default: its own name)."""
        name = name or command.name
        self._owners.add(name, command, plugin=self.plugin)
        self._group.add_command(command, name)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Any]:
        """Decorator like ``click.Group.command`` that records the plugin."""
        import click

        def decorator(function: Callable) -> Any:
            command = click.command(*args, **kwargs)(function)
            self.add_command(command)
            return command

        return decorator

    def group(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Any]:
        """Decorator like ``click.Group.group`` that records the plugin."""
        import click

        def decorator(function: Callable) -> Any:
            group = click.group(*args, **kwargs)(function)
            self.add_command(group)
            return group

        return decorator


class Host:
    """One loaded set of plugins and everything they registered.

    Attributes:
        pm: the pluggy PluginManager.
        plugins: name -> :class:`PluginInfo`, failed ones included.
        models: the process-wide model registry.
        datasets: dataset builders and manifest formats.
        metrics: named metric factories.
        commands: CLI command name -> the plugin that added it.
    """

    def __init__(self, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo]):
        from workbench.registry import get_registry, reset_registry

        self.pm = pm
        self.plugins = plugins
        # Each host starts the process-wide registry afresh: the plugins fill it
        # through their hooks, so building a second host (a test, an embedding
        # application) never meets the first one's names as duplicates.
        reset_registry()
        self.models = get_registry()
        self.datasets = DatasetCatalog()
        self.metrics = MetricCatalog()
        self.commands: NamedCatalog[Any] = NamedCatalog("command")

    def call_per_plugin(self, hook_name: str, make_argument: Callable[[str], Any], argument_name: str) -> None:
        """Call ``hook_name`` once per plugin, through pluggy, with the plugin's own scoped argument.

        Each call goes through ``pm.subset_hook_caller`` (the hook limited to one
        plugin), so pluggy's tracing and monitoring (``WORKBENCH_TRACE_HOOKS``)
        see it and argument matching is pluggy's own. A hook that raises marks
        its plugin failed (the error is kept) and the remaining plugins are
        still called.

        Args:
            hook_name: a hook in :mod:`workbench.hookspecs`.
            make_argument: ``fn(plugin_name)`` -> the scoped argument for that plugin.
            argument_name: the hook's keyword for that argument.
        """
        hook_caller = getattr(self.pm.hook, hook_name)
        for implementation in hook_caller.get_hookimpls():
            plugin_name = implementation.plugin_name
            info = self.plugins.get(plugin_name)
            if info is not None and not info.ok:
                continue
            others = [plugin for plugin in self.pm.get_plugins() if plugin is not implementation.plugin]
            only_this_plugin = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                only_this_plugin(**{argument_name: make_argument(plugin_name)})
            except Exception as error:  # a plugin's bug must not take the host down
                message = f"{hook_name} failed: {type(error).__name__}: {error}"
                logger.warning("plugin %r: %s", plugin_name, message)
                if info is not None:
                    info.error = message
                    info.traceback = traceback.format_exc()
                # a half-registered plugin's models would outlive its failure: roll them back
                self.models.unregister_plugin(plugin_name)

    def register_all(self) -> None:
        """Run the model, dataset and metric registration hooks for every plugin."""
        from workbench.registry import PluginModelRegistry

        self.call_per_plugin("workbench_register_models", lambda p: PluginModelRegistry(self.models, p), "registry")
        self.call_per_plugin("workbench_register_datasets", self.datasets.scoped, "catalog")
        self.call_per_plugin("workbench_register_metrics", self.metrics.scoped, "metrics")
        # read_manifest reads by this host's formats, so a plugin's add_manifest_format takes effect
        install_manifest_formats(self.datasets.manifest_formats)

    def add_commands(self, group: Any) -> None:
        """Let every plugin add its sub-commands to the click ``group``."""
        for name in group.commands:
            if name not in self.commands:
                self.commands.add(name, group.commands[name], plugin="workbench")
        self.call_per_plugin("workbench_add_commands", lambda p: CommandCollector(group, self.commands, p), "cli")

    def demo_steps(self) -> DemoSteps:
        """Collect every plugin's ``workbench demo`` steps."""
        steps = DemoSteps()
        self.call_per_plugin("workbench_demo_steps", steps.scoped, "steps")
        return steps

    def plugin_report(self) -> list[dict[str, Any]]:
        """One dict per plugin for ``workbench plugins --json``, sorted by name."""
        return [self.plugins[name].to_dict() for name in sorted(self.plugins)]


pass_host = click.make_pass_decorator(Host)
"""Decorator for a click command that needs the host: it gets the :class:`Host` as its first argument.

The root ``workbench`` group keeps the host as its context object, so a
plugin's command says what it needs instead of digging it out of the context::

    @click.command("my-job")
    @pass_host
    def my_job(host, ...):
        records = build_records(..., host.datasets.builders, ...)
"""


def _hooks_of(plugin: Any) -> list[str]:
    """Names of the ``workbench_*`` hook implementations a plugin object carries."""
    marker = f"{PROJECT_NAME}_impl"
    return sorted(name for name in dir(plugin) if hasattr(getattr(plugin, name, None), marker))


def _register(pm: pluggy.PluginManager, plugin: Any, info: PluginInfo, plugins: dict[str, PluginInfo]) -> None:
    """Register one plugin object, refusing hooks that have no spec (a misspelt name)."""
    info.hooks = _hooks_of(plugin)
    unknown = [name for name in info.hooks if getattr(pm.hook, name, None) is None or not getattr(pm.hook, name).has_spec()]
    if unknown:
        info.error = f"implements unknown hook(s) {', '.join(unknown)} (misspelt?)"
    else:
        try:
            pm.register(plugin, name=info.name)
        except Exception as error:  # pluggy validation errors name the hook
            info.error = f"could not register: {type(error).__name__}: {error}"
    plugins[info.name] = info


def _disabled_from_env() -> set[str]:
    return {name.strip() for name in os.environ.get("WORKBENCH_DISABLE_PLUGINS", "").split(",") if name.strip()}


def iter_entry_points() -> Iterable[metadata.EntryPoint]:
    """The entry points in the ``workbench.plugins`` group, sorted by name."""
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def create_plugin_manager(
    autoload: bool | None = None,
    disabled: Iterable[str] = (),
    extra_plugins: Iterable[tuple[str, Any]] = (),
) -> Host:
    """Build a fresh host: built-ins, then entry points one by one, then registration.

    Args:
        autoload: load entry-point plugins; ``None`` reads
            ``WORKBENCH_DISABLE_PLUGIN_AUTOLOAD`` (set to 1 to turn it off).
        disabled: plugin names to block (with ``WORKBENCH_DISABLE_PLUGINS``).
        extra_plugins: ``(name, plugin_object)`` pairs registered after the
            built-ins, for tests and embedding.

    Returns:
        A :class:`Host` whose registration hooks have run.
    """
    if autoload is None:
        autoload = os.environ.get("WORKBENCH_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
    blocked = set(disabled) | _disabled_from_env()
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    if os.environ.get("WORKBENCH_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda message: sys.stderr.write(message))
        pm.enable_tracing()

    plugins: dict[str, PluginInfo] = {}
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        info = PluginInfo(name=module_name.rsplit(".", 1)[-1], version=__version__, source="built-in", module=module_name)
        _register(pm, module, info, plugins)
    for name, plugin in extra_plugins:
        if name not in blocked:
            _register(pm, plugin, PluginInfo(name, __version__, "embedded", getattr(plugin, "__name__", repr(plugin))), plugins)

    if autoload:
        for entry_point in iter_entry_points():
            if entry_point.name in blocked:
                continue
            distribution = getattr(entry_point, "dist", None)
            info = PluginInfo(
                name=entry_point.name,
                version=getattr(distribution, "version", "") or "",
                source=f"distribution {distribution.metadata['Name']}" if distribution is not None else "entry point",
                module=entry_point.value,
            )
            if entry_point.name in plugins:
                info.error = f"plugin name {entry_point.name!r} is already taken by {plugins[entry_point.name].source}"
                plugins[f"{entry_point.name} ({info.source})"] = info
                continue
            try:
                plugin = entry_point.load()
            except BaseException as error:  # ImportError, SyntaxError, even SystemExit from a plugin
                if isinstance(error, KeyboardInterrupt):
                    raise
                info.error = f"failed to load: {type(error).__name__}: {error}"
                logger.warning("plugin %r %s", entry_point.name, info.error)
                plugins[info.name] = info
                continue
            _register(pm, plugin, info, plugins)

    pm.check_pending()
    host = Host(pm, plugins)
    host.register_all()
    return host


def failed_plugins(host: Host) -> list[PluginInfo]:
    """The plugins that failed to load or whose hooks raised."""
    return [info for info in host.plugins.values() if not info.ok]


__all__ = ["Host", "PluginInfo", "CommandCollector", "PluginError", "create_plugin_manager", "failed_plugins", "iter_entry_points", "pass_host"]
