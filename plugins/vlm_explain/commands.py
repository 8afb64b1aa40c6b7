"""The plugin's commands: ``workbench explain-vlm`` (one image, a manifest, ``concepts``, ``evaluate``); each hands its settings to a job."""

from __future__ import annotations

from pathlib import Path

import click

from workbench.config import RunSettings, config_options, load_settings
from workbench.errors import batch_exit_status


@click.group("explain-vlm", invoke_without_command=True)
@click.option("--model", default="contrastive-phantom-clip:latest", show_default=True, help="stored dual encoder name[:version]")
@click.option("--image", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None, help="explain this image")
@click.option("--frame", type=click.IntRange(min=0), default=None, help="frame of a multi-frame DICOM --image (0-based)")
@click.option("--classes", "classes", multiple=True,
              help="zero-shot classes (repeat, or comma-separated), at least two; their decision is explained "
                   "(batch form default: the phantoms' five findings)")
@click.option("--report", default=None, help="a report or sentence: map the image-report similarity (and each sentence's)")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="batch form: explain and score every image of this manifest (its 'test' split, or all without splits)")
@click.option("--concepts", "bank", type=click.Path(path_type=Path, dir_okay=False), default=Path("configs/concepts_cxr.txt"),
              show_default=True, help="the concept bank file (build one with `explain-vlm concepts`)")
@click.option("--store", type=click.Path(path_type=Path, file_okay=False), default=None, help="model store folder")
@click.option("--occlusion-only", is_flag=True, help="no concept regions or Interaction-CAM (for a model without patch tokens)")
@click.option("--max-images", type=int, default=None, help="batch form: explain at most this many images")
@click.option("--output-root", type=click.Path(path_type=Path, file_okay=False), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def explain_vlm_group(ctx: click.Context, model: str, image: Path | None, frame: int | None, classes: tuple[str, ...], report: str | None,
                      manifest: Path | None, bank: Path, store: Path | None, occlusion_only: bool, max_images: int | None,
                      output_root: Path, device: str) -> None:
    """Explain a dual encoder: concepts behind a zero-shot decision, image-text similarity maps."""
    if ctx.invoked_subcommand is not None:
        return
    from workbench_plugins.vlm_explain.settings import ExplainSettings, MapSettings

    maps = MapSettings(regions=0, interaction_cam=False) if occlusion_only else MapSettings()
    run_settings = RunSettings(output_root=output_root, device=device)
    if image is not None:
        from workbench_plugins.vlm_explain.jobs import run_explain_image

        index = run_explain_image(image, model=model, classes=list(classes) or None, report=report, bank=bank, store=store, maps=maps,
                                  run_settings=run_settings, frame=frame)
        click.echo(str(index.resolve()))
        return
    if manifest is not None:
        from workbench_plugins.vlm_explain.jobs import run_explain_batch

        splits = ["train", "val", "test"]
        settings = ExplainSettings(run=run_settings, model={"name": model, "store": store}, concepts={"bank": bank}, maps=maps,
                                   data={"manifest": manifest, "splits": ["test"] if _has_test_split(manifest) else splits,
                                         "max_images": max_images},
                                   **({"classes": _split_classes(classes)} if classes else {}))
        outcome = run_explain_batch(settings)
        click.echo(str((outcome.run.path / "index.html").resolve()))
        skipped = int(outcome.metrics.get("skipped_records") or 0)  # exit 3 when some images were skipped, 4 when all were
        ctx.exit(batch_exit_status(len(outcome.rows) + skipped, skipped))
    click.echo(ctx.get_help())


def _split_classes(classes: tuple[str, ...]) -> list[str]:
    return [part.strip() for entry in classes for part in entry.split(",") if part.strip()]


def _has_test_split(manifest: Path) -> bool:
    from workbench.data.manifests import read_manifest

    records, _ = read_manifest(manifest, on_error="skip")
    return any(record.get("split") == "test" for record in records)


@explain_vlm_group.command("concepts")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True, help="manifest with reports")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="the concept bank file to write")
@click.option("--min-count", type=int, default=10, show_default=True, help="a concept must occur in this many reports")
@click.option("--max-words", type=int, default=6, show_default=True)
@click.option("--max-concepts", type=int, default=200, show_default=True)
@click.option("--split", "splits", multiple=True, help="only reports of these splits (repeatable; default all)")
def concepts_command(manifest: Path, out: Path, min_count: int, max_words: int, max_concepts: int, splits: tuple[str, ...]) -> None:
    """Mine a concept bank (short report phrases) from a manifest's reports into an editable text file."""
    from workbench_plugins.vlm_explain.jobs import run_build_concepts

    path, count = run_build_concepts(manifest, out, min_count, max_words, max_concepts, list(splits) or None)
    click.echo(f"{count} concepts -> {path}")


@explain_vlm_group.command("evaluate")
@config_options
def evaluate_command(config: Path | None, overrides: tuple[str, ...]) -> None:
    """Explain a manifest's images from a config; score top concepts, deletion and map energy in the finding boxes."""
    from workbench_plugins.vlm_explain.jobs import run_explain_batch
    from workbench_plugins.vlm_explain.settings import ExplainSettings

    outcome = run_explain_batch(load_settings(ExplainSettings, config, overrides))
    click.echo(str((outcome.run.path / "index.html").resolve()))
