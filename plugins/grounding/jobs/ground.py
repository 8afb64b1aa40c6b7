"""The grounding jobs: ``workbench ground --image FILE --phrase ...`` and ``workbench ground evaluate``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from workbench.config import RunSettings
from workbench.data.readers import read_image
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError
from workbench.jobs import build_records, split_records
from workbench.report import HtmlReport, RunFolder, fmt, save_png, closes_run_logs
from workbench_plugins.grounding.data import GroundingSample, grounding_records, iter_samples
from workbench_plugins.grounding.encoder import check_phrases
from workbench.model_store import open_store
from workbench_plugins.grounding.evaluate import GroundedPhrase, evaluate_grounder, worst_kept
from workbench_plugins.grounding.grounders import build_grounder
from workbench_plugins.grounding.pages import (
    grounding_picture, load_saliency, saliency_overlap, saliency_picture, write_evaluation_section, write_saliency_section,
)
from workbench_plugins.grounding.settings import GroundingDataSettings, GroundSettings

logger = logging.getLogger("workbench.grounding")


def load_grounding_records(data: GroundingDataSettings, builders: Any, output_root: Path, splits: Sequence[str],
                           cap: int | None, skipped: SkippedRecords | None = None) -> list[dict[str, Any]]:
    """Records with boxes from the configured builder, in ``splits``, the image taken from ``data.image_key``.

    Raises:
        ConfigError: unknown builder, or no record with boxes in these splits.
    """
    records = build_records(data.dataset, data.root, data.options, builders, output_root, skipped)
    chosen = grounding_records(split_records(records, splits, default="test"))
    if data.image_key != "image":
        chosen = [dict(record, image=record.get(data.image_key) or record.get("image")) for record in chosen]
    if not chosen:
        raise ConfigError(f"no record of {data.dataset} with boxes has a split in {list(splits)}")
    return chosen[: cap or None]


@dataclass
class EvaluateOutcome:
    """What ``ground evaluate`` produced: its run folder, metrics and the page written (or extended)."""

    run: RunFolder
    metrics: dict[str, Any]
    page: HtmlReport


@closes_run_logs
def run_ground_evaluate(settings: GroundSettings, builders: Any, *, report: HtmlReport | None = None, run: RunFolder | None = None,
                        progress: bool = True) -> EvaluateOutcome:
    """Ground every held-out phrase, score it, and write ``metrics.json`` and ``index.html`` (worst cases first).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        report: add sections to this page (the demo) instead of writing the run's own.
        run: write into this run folder instead of a new ``ground-<time>`` one.
        progress: show a progress bar.

    Returns:
        An :class:`EvaluateOutcome`; ``metrics`` as in :meth:`GroundingScores.aggregate`.
    """
    own_run = run is None
    run = run or RunFolder.create("ground", settings.run.output_root, settings.run.name)
    if own_run:
        run.attach_log()
        run.save_settings(settings)
    skipped = SkippedRecords(run.skipped_csv)
    records = load_grounding_records(settings.data, builders, Path(settings.run.output_root), settings.data.eval_split,
                                     settings.data.max_eval, skipped)
    store = open_store(settings.encoder.store)
    grounder = build_grounder(settings.encoder.name, store, settings.run.device, settings.head, settings.zero_shot.method,
                              settings.zero_shot.window, settings.zero_shot.overlap, settings.boxes.threshold, settings.boxes.max_boxes,
                              settings.zero_shot.fill)
    outcome = evaluate_grounder(grounder, iter_samples(records, skipped), settings.boxes.thresholds, settings.boxes.miou_threshold,
                                progress=progress, total=len(records), negations=settings.negations)
    metrics = dict(outcome.metrics, skipped_records=len(skipped), encoder=grounder.encoder.record.ref)
    worst = worst_kept(outcome, settings.examples)
    run.write_metrics({"grounding": metrics})
    page = report or HtmlReport(f"Phrase grounding: {metrics['method']}", run.path)
    write_evaluation_section(page, run, metrics, worst)
    if settings.saliency_dir is not None:
        metrics["saliency_overlap"] = write_saliency_section(page, run, outcome.kept[: max(settings.examples, 1) * 4], settings.saliency_dir)
        run.write_metrics({"grounding": metrics})
    if report is None:
        page.section("Config", lead="The resolved settings this run used (config.yaml), to repeat it exactly.").preformatted((run.path / "config.yaml").read_text(encoding="utf-8"))
        page.write()
    return EvaluateOutcome(run, metrics, page)


def run_ground_image(image: Path, phrases: Sequence[str], *, encoder: str, store: Path | None = None, head: str | None = None,
                     method: str = "occlusion", window: float | Sequence[float] = 0.25, overlap: float = 0.5, threshold: float = 0.5,
                     max_boxes: int = 3, saliency: Path | None = None, run_settings: RunSettings | None = None,
                     frame: int | None = None) -> Path:
    """Ground phrases on one image file: overlays with each phrase as caption, boxes, ``metrics.json``, ``index.html``.

    Args:
        image: any image file the workbench reads.
        phrases: the phrases (non-empty).
        encoder: ``name[:version]`` of a stored dual encoder (ignored when ``head`` is given).
        store: the model store folder (``None``: default).
        head: a stored grounding head to use instead of zero-shot.
        method, window, overlap: zero-shot settings.
        threshold, max_boxes: heatmap -> boxes.
        saliency: a saliency map of the same image to compare each heatmap with.
        run_settings: output root, run name and device.
        frame: the frame of a multi-frame DICOM image.

    Returns:
        The path of the run's ``index.html``.

    Raises:
        DataError: unreadable image, empty phrase, or a saliency map of another size.
        ConfigError / RegistryError: an unusable encoder or head (named).
    """
    run_settings = run_settings or RunSettings()
    phrases = check_phrases(phrases, str(image))
    pixels, _ = read_image(image, frame=frame)
    grounder = build_grounder(encoder, open_store(store), run_settings.device, head, method, window, overlap, threshold, max_boxes)
    result = grounder.ground(pixels, phrases)
    run = RunFolder.create("ground", run_settings.output_root, run_settings.name)
    sample = GroundingSample(Path(image).stem, pixels, [], {}, "", str(image))
    display = sample.display()
    page = HtmlReport(f"Grounding on {Path(image).name}", run.path).section(
        grounder.label, lead=f"Where {grounder.label} locates each of the {len(phrases)} phrases on {Path(image).name}: "
                             "its heatmap and the boxes drawn from it.")
    rows, figures = [], []
    saliency_map = load_saliency(saliency, sample.size) if saliency is not None else None
    for index, phrase in enumerate(phrases):
        heatmap, boxes = result.heatmaps[index], result.boxes[index]
        path = save_png(run.file(f"grounding/{index:02d}.png"), grounding_picture(display, heatmap, boxes))
        figures.append((path, f"\"{phrase}\": peak {fmt(float(heatmap.max()))}, {len(boxes)} box(es)"))
        row: dict[str, Any] = {"phrase": phrase, "peak": float(heatmap.max()), "boxes": boxes}
        if saliency_map is not None:
            row["saliency_overlap_iou"] = saliency_overlap(heatmap, saliency_map)
            path = save_png(run.file(f"saliency/{index:02d}.png"), saliency_picture(display, heatmap, saliency_map))
            figures.append((path, f"\"{phrase}\" vs saliency: IoU {fmt(row['saliency_overlap_iou'])}"))
        rows.append(row)
    page.figures(figures)
    page.table([{"phrase": row["phrase"], "peak": row["peak"], "boxes": len(row["boxes"]),
                 **({"saliency IoU": row["saliency_overlap_iou"]} if "saliency_overlap_iou" in row else {})} for row in rows])
    run.write_metrics({"image": str(image), "method": grounder.label, "phrases": rows})
    return page.write()


__all__ = ["load_grounding_records", "run_ground_evaluate", "run_ground_image", "EvaluateOutcome", "GroundedPhrase"]
