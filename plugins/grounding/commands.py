"""The plugin's commands: ``workbench ground`` (one image or a manifest, ``evaluate``, ``train``); each hands its settings to a job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from workbench.config import RunSettings, config_options, load_settings
from workbench.errors import batch_exit_status
from workbench.host import Host, pass_host
from workbench.job_commands import training_command


@click.group("ground", invoke_without_command=True)
@click.option("--image", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None, help="ground phrases on this image")
@click.option("--phrase", "phrases", multiple=True, help="a phrase to ground (repeatable)")
@click.option("--frame", type=click.IntRange(min=0), default=None, help="frame of a multi-frame DICOM --image (0-based)")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="batch form: ground every box phrase of this manifest and score it")
@click.option("--encoder", default="contrastive-phantom:latest", show_default=True, help="stored dual encoder name[:version]")
@click.option("--head", default=None, help="stored grounding head name[:version] (instead of zero-shot)")
@click.option("--store", type=click.Path(path_type=Path, file_okay=False), default=None, help="model store folder")
@click.option("--method", type=click.Choice(["similarity", "occlusion", "flair-attention", "interaction-cam"]), default="occlusion", show_default=True)
@click.option("--saliency", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="a saliency map of the same image (.npy/.png/.nii.gz) to compare each heatmap with")
@click.option("--output-root", type=click.Path(path_type=Path, file_okay=False), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.pass_context
@pass_host
def ground_group(host: Host, ctx: click.Context, image: Path | None, phrases: tuple[str, ...], frame: int | None, manifest: Path | None, encoder: str, head: str | None,
                 store: Path | None, method: str, saliency: Path | None, output_root: Path, device: str) -> None:
    """Phrase grounding: heatmaps and boxes for report phrases (zero-shot from a stored encoder, or a trained head)."""
    if ctx.invoked_subcommand is not None:
        return
    from workbench_plugins.grounding.jobs.ground import run_ground_evaluate, run_ground_image
    from workbench_plugins.grounding.settings import GroundSettings

    run_settings = RunSettings(output_root=output_root, device=device)
    if image is not None:
        if not phrases:
            raise click.UsageError("give at least one --phrase to ground on --image")
        index = run_ground_image(image, list(phrases), encoder=encoder, store=store, head=head, method=method, saliency=saliency,
                                 run_settings=run_settings, frame=frame)
        click.echo(str(index.resolve()))
        return
    if manifest is not None:
        settings = GroundSettings(run=run_settings, head=head,
                                  data={"dataset": "box-manifest", "root": manifest, "eval_split": ["train", "val", "test"]},
                                  encoder={"name": encoder, "store": store}, zero_shot={"method": method})
        outcome = run_ground_evaluate(settings, host.datasets.builders)
        click.echo(str((outcome.run.path / "index.html").resolve()))
        _exit_with_batch_status(outcome.metrics)
        return
    click.echo(ctx.get_help())


def _exit_with_batch_status(metrics: dict[str, Any]) -> None:
    """Exit 3 when some manifest records were skipped, 4 when all were (``workbench.errors.batch_exit_status``)."""
    skipped = int(metrics.get("skipped_records") or 0)
    click.get_current_context().exit(batch_exit_status(int(metrics.get("images") or 0) + skipped, skipped))


@ground_group.command("evaluate")
@config_options
@pass_host
def evaluate_command(host: Host, config: Path | None, overrides: tuple[str, ...]) -> None:
    """Ground and score every held-out phrase: CNR, pointing game, mIoU sweep, box acc@0.5, per category."""
    from workbench_plugins.grounding.jobs.ground import run_ground_evaluate
    from workbench_plugins.grounding.settings import GroundSettings

    outcome = run_ground_evaluate(load_settings(GroundSettings, config, overrides), host.datasets.builders)
    click.echo(str((outcome.run.path / "index.html").resolve()))
    _exit_with_batch_status(outcome.metrics)


train_command = training_command(
    "train", "workbench_plugins.grounding.jobs.train:run_ground_train", "workbench_plugins.grounding.settings:GroundTrainSettings",
    "Train the supervised box + heatmap head on a frozen stored encoder; evaluate and store it.")
ground_group.add_command(train_command)
