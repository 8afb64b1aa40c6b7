"""``workbench demo``: the end-to-end run on the embedded phantom data.

The foundation's part writes the phantoms (chest studies with reports, masks
and boxes; fundus images with vessel trees) and shows them with the loaded
plugins in ``index.html``. Each plugin adds its own steps through the
``workbench_demo_steps`` hook (pretraining, grounding, ...), run in an order
that respects their ``after`` lists, each adding a section to the same page.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from workbench.catalogs import NamedCatalog, PluginScope
from workbench.config import RunSettings, StrictModel, load_settings, merge_options
from workbench.errors import ConfigError, PluginError
from workbench.report import HtmlReport, RunFolder, closes_run_logs

logger = logging.getLogger("workbench.demo")
SettingsT = TypeVar("SettingsT")


class DemoDataSettings(StrictModel):
    """How much phantom data the demo makes."""

    cxr_studies: int = 48
    fundus_images: int = 8
    cxr_size: int = 256
    fundus_size: int = 256
    shown: int = 6


class DemoSettings(StrictModel):
    """Settings of ``workbench demo`` (``configs/demo.yaml``).

    ``steps`` names the plugin steps to run (empty: all that are installed);
    ``options`` passes per-step settings, keyed by step name.
    """

    run: RunSettings = RunSettings()
    data: DemoDataSettings = DemoDataSettings()
    steps: list[str] = []
    options: dict[str, dict[str, Any]] = {}


@dataclass
class DemoContext:
    """What a demo step gets.

    Attributes:
        run: the run folder every step writes into.
        report: the shared index.html; a step adds its own section(s).
        settings: the demo settings (``settings.options[step]`` holds the step's own).
        cxr_manifest: the chest phantoms' JSONL manifest.
        fundus_manifest: the fundus phantoms' JSONL manifest.
        device: the device chosen for the run.
        results: what earlier steps left for later ones (step name -> anything).
        host: the loaded host (its model registry and dataset builders).
        headline: each step's headline figures (step name -> ``{metric: number}``), written into the
            demo's ``metrics.json`` under the step's name (see :meth:`record`).
    """

    run: RunFolder
    report: HtmlReport
    settings: DemoSettings
    cxr_manifest: Path
    fundus_manifest: Path
    device: torch.device
    results: dict[str, Any] = field(default_factory=dict)
    host: Any = None
    headline: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, step: str, figures: dict[str, Any]) -> None:
        """Keep ``figures`` (JSON-ready numbers, nested dicts allowed) as step ``step``'s headline figures.

        They land in the demo's ``metrics.json`` under ``step`` (e.g. ``{"grounding": {"overall": {"pointing": 0.8}}}``),
        where a check can read them without parsing the page.
        """
        self.headline.setdefault(step, {}).update(figures)

    def options(self, step: str) -> dict[str, Any]:
        """The per-step options from ``settings.options[step]`` (empty when none)."""
        return dict(self.settings.options.get(step, {}))

    def run_values(self, output_root: Path | str | None = None, precision: bool = True) -> dict[str, Any]:
        """The ``run`` section every step takes from the demo itself: seed, device, precision and where it writes."""
        values: dict[str, Any] = {"seed": self.settings.run.seed, "device": str(self.device), "output_root": str(output_root or self.run.path)}
        if precision:
            values["precision"] = self.settings.run.precision
        return values

    def step_settings(self, step: str, settings_class: type[SettingsT], own: dict[str, Any], section: dict[str, Any] | None = None) -> SettingsT:
        """A step's job settings: its section of the demo config with the run's own values under it.

        The demo's sizes and budgets live in ``configs/demo.yaml`` (``options.<step>``), never in code; a
        step adds only what the run decides (seed, device, folders, the encoder an earlier step stored).

        Args:
            step: the step's name (its key under ``options``).
            settings_class: the job's settings class.
            own: the values the run decides, laid under the config section (the config may still override them).
            section: the config section to use (default ``options[step]``; a sub-section for steps with several jobs).

        Returns:
            The validated settings.

        Raises:
            ConfigError: the demo config has no section for the step, or a key in it is wrong (named).
        """
        section = self.options(step) if section is None else section
        if not section:
            raise ConfigError(f"demo step {step!r} has no settings: give them under options.{step} (see configs/demo.yaml), "
                              "e.g. workbench demo --config configs/demo.yaml")
        return load_settings(settings_class, None, [], defaults=merge_options(own, section))


@dataclass(frozen=True)
class DemoStep:
    """One plugin step: a callable taking a :class:`DemoContext`, and the steps it needs first."""

    run: Callable[[DemoContext], None]
    after: tuple[str, ...] = ()


class DemoSteps(NamedCatalog[DemoStep]):
    """The demo's steps, each tagged with its plugin."""

    def __init__(self) -> None:
        super().__init__("demo step")

    def scoped(self, plugin: str) -> "PluginDemoSteps":
        """The view handed to ``plugin``'s ``workbench_demo_steps`` hook."""
        return PluginDemoSteps(self, plugin)

    def ordered(self, wanted: list[str] | None = None) -> list[str]:
        """Step names in an order where every step runs after its ``after`` steps.

        Args:
            wanted: run only these (and what they need); ``None`` or empty: all.

        Raises:
            PluginError: a step needs one that does not exist, or a cycle.
        """
        names = list(wanted) if wanted else self.names()
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                raise PluginError(f"demo steps form a cycle through {name!r}")
            if name not in self:
                raise PluginError(f"demo step {name!r} is needed but no plugin adds it")
            visiting.add(name)
            for needed in self.get(name).after:
                visit(needed)
            visiting.discard(name)
            order.append(name)

        for name in names:
            visit(name)
        return order


class PluginDemoSteps(PluginScope):
    """What a plugin sees of the demo steps."""

    def __init__(self, steps: DemoSteps, plugin: str):
        super().__init__(plugin)
        self._steps = steps

    def add(self, name: str, run: Callable[[DemoContext], None], after: tuple[str, ...] | list[str] = ()) -> None:
        """Add step ``name`` running ``run(context)`` after the steps in ``after``."""
        self._steps.add(name, DemoStep(run, tuple(after)), plugin=self.plugin)


@closes_run_logs
def run_demo(host: Any, settings: DemoSettings) -> Path:
    """Run the demo: phantoms, the plugin table, then every plugin step.

    Args:
        host: a loaded :class:`workbench.host.Host`.
        settings: the demo settings.

    Returns:
        The path of the run folder's ``index.html``.
    """
    from workbench.data.phantoms import write_cxr_phantoms, write_fundus_phantoms
    from workbench.demo_pages import add_phantom_sections, add_plugin_section
    from workbench.devices import describe, select_device

    run = RunFolder.create("demo", settings.run.output_root, settings.run.name)
    run.attach_log()
    run.save_settings(settings)
    device = select_device(settings.run.device)
    report = HtmlReport("medvl-workbench demo", run.path)
    report.section("Run", lead="Where this demo ran, on which device, and where its files are.").text(f"Device: {describe(device)}. Run folder: {run.path.name}.")

    started = time.perf_counter()
    data = settings.data
    cxr_manifest = write_cxr_phantoms(run.path / "data" / "cxr", data.cxr_studies, seed=settings.run.seed, size=data.cxr_size)
    fundus_manifest = write_fundus_phantoms(run.path / "data" / "fundus", data.fundus_images, seed=settings.run.seed, size=data.fundus_size)
    add_plugin_section(report, host)
    add_phantom_sections(report, run, cxr_manifest, fundus_manifest, shown=data.shown)
    timings = {"phantoms_s": round(time.perf_counter() - started, 2)}
    report.write()

    context = DemoContext(run, report, settings, cxr_manifest, fundus_manifest, device, host=host)
    steps = host.demo_steps()
    for name in steps.ordered(settings.steps):
        logger.info("demo step %s (plugin %s)", name, steps.entry(name).plugin)
        step_started = time.perf_counter()
        steps.get(name).run(context)
        timings[f"{name}_s"] = round(time.perf_counter() - step_started, 2)
        report.write()  # each finished step is visible even if a later one fails
        run.write_metrics({"demo_timings": timings, **context.headline})

    timings["total_s"] = round(time.perf_counter() - started, 2)
    report.section("Config", lead="The resolved settings of this run (config.yaml): rerun them to get the same page.").preformatted((run.path / "config.yaml").read_text(encoding="utf-8"))
    index = report.write()
    run.write_metrics({"demo_timings": timings, **context.headline})
    run.write_metrics({"run_folder_bytes": folder_bytes(run.path)})
    return index


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder`` (links not followed): what the run costs on disk."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file() and not path.is_symlink())
