"""The plugin's commands: ``workbench report`` (answers, edits, ``train``); each hands its settings to a job."""

from __future__ import annotations

import json
from pathlib import Path

import click

from workbench.config import RunSettings
from workbench.errors import batch_exit_status
from workbench.job_commands import training_command


@click.group("report", invoke_without_command=True)
@click.option("--image", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None, help="report on this image")
@click.option("--frame", type=click.IntRange(min=0), default=None, help="frame of a multi-frame DICOM --image (0-based)")
@click.option("--question", "questions", multiple=True, help="a question to answer and explain (repeatable; default: every trained finding)")
@click.option("--draft", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="a draft report (text file) for the editor to correct; an empty file is written from scratch")
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="batch form: a CSV/JSONL manifest with image and optional question, draft or draft_file per row")
@click.option("--model", "models", multiple=True, help="stored reporting model name[:version]: an explainer and/or an editor (repeatable)")
@click.option("--store", type=click.Path(path_type=Path, file_okay=False), default=None, help="model store folder")
@click.option("--beam-size", type=click.IntRange(1, 32), default=1, show_default=True, help="1: greedy decoding")
@click.option("--output-root", type=click.Path(path_type=Path, file_okay=False), default=Path("runs"), show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.pass_context
def report_group(ctx: click.Context, image: Path | None, frame: int | None, questions: tuple[str, ...], draft: Path | None, manifest: Path | None,
                 models: tuple[str, ...], store: Path | None, beam_size: int, output_root: Path, device: str) -> None:
    """Answer-and-explain and report editing on images with stored reporting models."""
    if ctx.invoked_subcommand is not None:
        return
    from workbench_plugins.reporting.jobs.report import ReportCase, manifest_cases, read_draft, run_report

    if image is None and manifest is None:
        click.echo(ctx.get_help())
        return
    if not models:
        raise click.UsageError("give at least one stored reporting model with --model NAME")
    run_settings = RunSettings(output_root=output_root, device=device)
    if image is not None:
        cases = [ReportCase(str(image), list(questions), read_draft(draft) if draft is not None else None, frame=frame)]
    else:
        cases = manifest_cases(manifest)  # type: ignore[arg-type]
    index = run_report(cases, list(models), store=store, beam_size=beam_size, run_settings=run_settings, skipped_ok=manifest is not None)
    click.echo(str(index.resolve()))
    if manifest is not None:  # exit 3 when some images were skipped, 4 when all were
        skipped = int(json.loads((index.parent / "metrics.json").read_text(encoding="utf-8")).get("skipped") or 0)
        ctx.exit(batch_exit_status(len(cases), skipped))


train_command = training_command(
    "train", "workbench_plugins.reporting.jobs.train:run_report_train", "workbench_plugins.reporting.settings:ReportTrainSettings",
    "Train an answer-and-explain decoder or a report editor on a frozen stored encoder; store it with task 'reporting'.")
report_group.add_command(train_command)
