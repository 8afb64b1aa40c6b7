"""The whole plugin contract: every hook a workbench plugin may implement.

A plugin is a module (or object) with functions named after these specs and
decorated with ``@workbench.hookimpl``. The host calls each hook once per
plugin, when the CLI is built, passing keyword arguments; an implementation may
accept fewer arguments than its spec, so a spec can grow without breaking
plugins. Whatever a plugin adds through these hooks is recorded under the
plugin's name, and a name added twice is an error naming both plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench import hookspec

if TYPE_CHECKING:  # pragma: no cover - imported for type hints only
    from workbench.demo import DemoSteps
    from workbench.host import CommandCollector, DatasetCatalog, MetricCatalog
    from workbench.registry import PluginModelRegistry


@hookspec
def workbench_register_models(registry: "PluginModelRegistry") -> None:
    """Add model factories to the shared model registry.

    Called once per plugin when the host starts, before any command runs.

    Args:
        registry: the process-wide registry, scoped to the calling plugin.
            Call ``registry.register(name, factory, task=...)`` for each model;
            ``factory(**cfg)`` must return a ``torch.nn.Module``.

    Returns:
        Nothing. Raising reports the plugin as failed; other plugins go on.
    """


@hookspec
def workbench_register_datasets(catalog: "DatasetCatalog") -> None:
    """Add dataset builders and manifest formats.

    Called once per plugin when the host starts.

    Args:
        catalog: the dataset catalog, scoped to the calling plugin. Call
            ``catalog.add_builder(name, builder, description=...)`` where
            ``builder(root: Path, **options) -> list[dict]`` converts a
            dataset's own layout (e.g. "drive", "mimic-cxr") to manifest
            records, and ``catalog.add_manifest_format(name, reader)`` where
            ``reader(path: Path) -> list[dict]`` reads a manifest file kind.

    Returns:
        Nothing.
    """


@hookspec
def workbench_register_metrics(metrics: "MetricCatalog") -> None:
    """Add named metrics for ``workbench eval`` and the plugins' evaluate jobs.

    Called once per plugin when the host starts.

    Args:
        metrics: the metric catalog, scoped to the calling plugin. Call
            ``metrics.add(name, factory, description=...)`` where ``factory()``
            returns a MONAI-style metric (called per batch, ``aggregate()``,
            ``reset()``) or a plain callable.

    Returns:
        Nothing.
    """


@hookspec
def workbench_add_commands(cli: "CommandCollector") -> None:
    """Add sub-commands to the ``workbench`` command line.

    Called once per plugin, when the CLI is built.

    Args:
        cli: a collector around the root click group, scoped to the calling
            plugin. Use ``cli.add_command(click_command)`` or the
            ``@cli.command(...)`` / ``@cli.group(...)`` decorators. A job
            command should take ``--config FILE.yaml`` and trailing
            ``key.sub=value`` overrides (see :func:`workbench.config.config_options`).

    Returns:
        Nothing.
    """


@hookspec
def workbench_demo_steps(steps: "DemoSteps") -> None:
    """Add steps to ``workbench demo``, the end-to-end run on the embedded data.

    Called once per plugin when ``workbench demo`` starts.

    Args:
        steps: the demo's step list, scoped to the calling plugin. Call
            ``steps.add(name, run, after=(...))`` where ``run(context)`` takes a
            :class:`workbench.demo.DemoContext` (run folder, HTML report, the
            phantom data, device) and adds its section to the report. ``after``
            names steps that must run first (e.g. grounding after contrastive).

    Returns:
        Nothing.
    """
