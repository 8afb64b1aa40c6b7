"""The vessels plugin's hooks: segmentation networks, fundus datasets, ``vessels``/``check-topology``/``export-bundle`` commands, a demo step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from workbench import hookimpl
from workbench.host import Host, pass_host
from workbench.config import config_options, load_settings, resumable_config_options

PLUGIN_NAME = "vessels"


@hookimpl
def workbench_register_models(registry: Any) -> None:
    """Register ``vessel-unet``, ``vessel-dynunet`` and ``vessel-attention-unet`` (MONAI networks, optional graph head)."""
    from workbench_plugins.vessels.models import register_vessel_models

    register_vessel_models(registry)


@hookimpl
def workbench_register_datasets(catalog: Any) -> None:
    """Register the DRIVE, CHASE_DB1, STARE, HRF and phantom-fundus builders."""
    from workbench_plugins.vessels.builders import register_vessel_datasets

    register_vessel_datasets(catalog)



@click.group("vessels")
def vessels_group() -> None:
    """Topology-aware vessel segmentation: train, predict, evaluate."""


@vessels_group.command("train")
@resumable_config_options
@pass_host
def train_command(host: Host, config: Path | None, overrides: tuple[str, ...], resume: Path | None) -> None:
    """Train a vessel network on patches, then predict and score the held-out images."""
    from workbench_plugins.vessels.run import run_train
    from workbench_plugins.vessels.settings import VesselTrainSettings

    settings = load_settings(VesselTrainSettings, config, overrides)
    outcome = run_train(settings, host.datasets.builders, resume=resume)
    click.echo(str((outcome.run.path / "index.html").resolve()))


def _predict(host: Host, config: Path | None, overrides: tuple[str, ...], score: bool, frame: int | None = None) -> None:
    from workbench.errors import batch_exit_status
    from workbench_plugins.vessels.run import run_predict
    from workbench_plugins.vessels.settings import VesselPredictSettings

    settings = load_settings(VesselPredictSettings, config, [*overrides, *([f"frame={frame}"] if frame is not None else [])])
    outcome = run_predict(settings, host.datasets.builders, score=score)
    click.echo(str((outcome.run.path / "index.html").resolve()))
    # exit 3 when some images were skipped, 4 when all were
    click.get_current_context().exit(batch_exit_status(len(outcome.rows) + outcome.skipped, outcome.skipped))


@vessels_group.command("predict")
@config_options
@click.option("--frame", type=click.IntRange(min=0), default=None, help="frame of multi-frame DICOM inputs (0-based)")
@pass_host
def predict_command(host: Host, config: Path | None, overrides: tuple[str, ...], frame: int | None) -> None:
    """Predict vessel masks (PNG, NIfTI, DICOM SEG) with connectivity overlays for files or a dataset split."""
    _predict(host, config, overrides, score=False, frame=frame)


@vessels_group.command("evaluate")
@config_options
@pass_host
def evaluate_command(host: Host, config: Path | None, overrides: tuple[str, ...]) -> None:
    """Predict a dataset split and score it against its references: metrics.json and index.html worst first."""
    _predict(host, config, overrides, score=True)


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench vessels``, ``workbench check-topology`` and ``workbench export-bundle``."""
    from workbench_plugins.vessels.bundle import export_bundle_command
    from workbench_plugins.vessels.check import check_topology_command

    cli.add_command(vessels_group)
    cli.add_command(check_topology_command)
    cli.add_command(export_bundle_command)


def demo_vessels(context: Any) -> None:
    """Demo step: train briefly on fundus phantoms and show predictions with their connectivity report (``options.vessels``)."""
    from workbench.report import RunFolder
    from workbench_plugins.vessels.run import run_train
    from workbench_plugins.vessels.settings import VesselTrainSettings

    phantoms = {"n": max(6, context.settings.data.fundus_images), "size": context.settings.data.fundus_size, "seed": context.settings.run.seed}
    own = {"run": context.run_values(), "data": {"root": str(context.run.path / "data" / "fundus-vessels"), "options": phantoms}}
    settings = context.step_settings("vessels", VesselTrainSettings, own)
    run = RunFolder(context.run.path / "vessels")  # its own checkpoints/ and figures/ inside the demo's folder
    context.results["vessels"] = run_train(settings, context.host.datasets.builders, report=context.report, run=run, progress=False)


@hookimpl
def workbench_demo_steps(steps: Any) -> None:
    """Add the ``vessels`` demo step."""
    steps.add("vessels", demo_vessels)
