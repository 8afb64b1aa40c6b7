"""The plugin's commands: ``workbench vessels`` (``train``, ``predict``, ``evaluate``); each hands its settings to a job."""

from __future__ import annotations

from pathlib import Path

import click

from workbench.config import config_options, load_settings
from workbench.host import Host, pass_host
from workbench.job_commands import training_command


@click.group("vessels")
def vessels_group() -> None:
    """Topology-aware vessel segmentation: train, predict, evaluate."""


train_command = training_command(
    "train", "workbench_plugins.vessels.jobs:run_train", "workbench_plugins.vessels.settings:VesselTrainSettings",
    "Train a vessel network on patches, then predict and score the held-out images.")
vessels_group.add_command(train_command)


def _predict(host: Host, config: Path | None, overrides: tuple[str, ...], score: bool, frame: int | None = None) -> None:
    from workbench.errors import batch_exit_status
    from workbench_plugins.vessels.jobs import run_predict
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
