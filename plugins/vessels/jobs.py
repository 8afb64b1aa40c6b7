"""The vessel jobs: ``workbench vessels train`` and ``workbench vessels predict|evaluate``.

Training draws patches from the training images (MONAI pipeline in
:mod:`.data`), trains a registered network with the chosen loss in the shared
:class:`~workbench.train.Trainer` (resume, DDP, progress, TensorBoard), then
rank 0 predicts the held-out images with sliding-window inference, scores
them (Dice, clDice, Betti errors, CAL, breaks), stores the network in the
model registry and writes ``metrics.json`` and ``index.html``. Prediction
loads a stored network and writes, per image, the probability map, the mask
(PNG, NIfTI with the source geometry, DICOM SEG for DICOM inputs) and the
connectivity overlay.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from workbench.data.skipped import SkippedRecords
from workbench.distributed import init_distributed, unwrap
from workbench.errors import ConfigError, DataError, WorkbenchError
from workbench.jobs import JobStart, TrainOutcome, train_and_held_out
from workbench.model_records import parse_ref
from workbench.model_store import open_store
from workbench.registry import create_model
from workbench.report import HtmlReport, RunFolder, fmt, closes_run_logs
from workbench.training_job import StoreRequest, TrainingJob, run_training_job
from workbench_plugins.vessels.data import DEFAULT_NORMALISATION, build_vessel_loader, inference_preprocessing, load_inference_item, vessel_training_dataset
from workbench_plugins.vessels.inference import predict_probabilities, vessel_probability
from workbench_plugins.vessels.losses import build_vessel_loss
from workbench_plugins.vessels.metrics import (mean_metrics, postprocess_mask, score_image, write_image_figure,
                                               write_metrics_file, write_vessel_page)
from workbench_plugins.vessels.outputs import write_mask_outputs
from workbench_plugins.vessels.settings import CheckSettings, InferenceSettings, VesselPredictSettings, VesselTrainSettings

logger = logging.getLogger("workbench.vessels")


@dataclass
class VesselOutcome(TrainOutcome):
    """What a vessel job produced: a :class:`~workbench.jobs.TrainOutcome` with the per-image rows.

    Attributes:
        metrics: mean metrics over the scored images (empty without references).
        rows: per-image metric rows.
        skipped: records or files skipped as bad.
        seconds: wall-clock seconds of the training loop (training).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0


class SegmentationStep:
    """The training step: the network's output (with the graph head's extras when it has one) into the loss.

    Args:
        loss: a module from :func:`~.losses.build_vessel_loss` (``forward(output, batch) -> {"loss", ...}``).
        wants_aux: call the network with ``return_aux=True`` (the graph head's node logits).
    """

    def __init__(self, loss: nn.Module, wants_aux: bool):
        self.loss, self.wants_aux = loss, wants_aux

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, <terms>...}`` for one batch of patches (``image`` (B, C, P, P), ``label`` (B, 1, P, P), ...)."""
        output = model(batch["image"], return_aux=True) if self.wants_aux else model(batch["image"])
        return self.loss(output, batch)


def has_graph_head(model: nn.Module) -> bool:
    """True when the network carries the SCOPE-style graph head (it then returns node logits on request)."""
    return bool(getattr(unwrap(model), "has_graph_head", False))


class VesselTrainJob(TrainingJob):
    """``vessels train`` in the shared job shape: patches in the loop, then sliding-window prediction, scoring and storing."""

    kind, section, plugin = "vessels-train", "vessels", "vessels"

    def __init__(self, settings: VesselTrainSettings, builders: Any, *, report: HtmlReport | None = None, progress: bool = True,
                 after_optimizer_step: Callable[[int], None] | None = None) -> None:
        super().__init__(settings, builders, progress=progress, after_optimizer_step=after_optimizer_step)
        self.report = report

    def prepare(self, start: JobStart, skipped: SkippedRecords | None) -> None:
        """Training and held-out records.

        Raises:
            ConfigError: no training records.
        """
        settings = self.settings
        self.train_records, self.eval_records = train_and_held_out(settings.data, self.builders, Path(settings.run.output_root), skipped)
        if not self.train_records:
            raise ConfigError(f"data.train_split {settings.data.train_split}: no records of {settings.data.dataset} have these splits")

    def build_model(self, start: JobStart) -> nn.Module:
        """The network from the registry and its loss.

        Raises:
            ConfigError: the graph loss on a network without the graph head.
        """
        settings = self.settings
        model = create_model(settings.model.name, **settings.model.options)
        self.loss = build_vessel_loss(settings.loss.name, **settings.loss.options).to(start.context.device)
        if settings.loss.name == "graph" and not has_graph_head(model):
            raise ConfigError(f"loss.name 'graph' needs a network with the graph head: set model.options.graph_head "
                              f"(e.g. {{grid: 16}}) for {settings.model.name!r}")
        self.segmentation_step = SegmentationStep(self.loss, has_graph_head(model))
        return model

    def loader(self, start: JobStart) -> Any:
        """Random patches of the training images (tubes around the centrelines for skeleton recall), sharded under DDP."""
        settings = self.settings
        tube_radius = settings.loss.tube_radius if settings.loss.name == "skeleton_recall" else None
        dataset = vessel_training_dataset(self.train_records, settings.data, tube_radius=tube_radius, skipped=start.skipped,
                                          cache_dir=start.run.path / "cache")
        self.started = time.perf_counter()
        return build_vessel_loader(dataset, settings.train, settings.run.seed, start.context)

    def step(self, model: nn.Module, batch: Any) -> Any:
        """The segmentation loss of one batch (and the graph head's, when present)."""
        return self.segmentation_step(model, batch)

    def evaluate(self, model: nn.Module, start: JobStart, result: Any) -> dict[str, Any]:
        """Sliding-window prediction of every held-out image, post-processed and scored; the mean metrics."""
        settings = self.settings
        self.seconds = time.perf_counter() - self.started
        roi = settings.inference.roi_size or _default_roi(settings.data.patch_size)
        self.inference = settings.inference.model_copy(update={"roi_size": roi})
        self.rows, self.figures, self.failures = predict_records(model, self.eval_records, self.inference, settings.check, start.run.path,
                                                                 start.context.device, score=True, formats=(),
                                                                 normalisation=settings.data.normalisation, progress=self.progress)
        return mean_metrics(self.rows)

    def store_request(self, model: nn.Module, metrics: Mapping[str, Any], start: JobStart) -> StoreRequest | None:
        """The network with its inference settings (window, threshold, clean-up) and preprocessing."""
        settings, inference = self.settings, self.inference
        if not settings.save.name:
            return None
        scored = {key: value for key, value in metrics.items() if key not in ("steps", "skipped_records")}
        return StoreRequest(open_store(settings.save.store), model, settings.model.name, "segmentation", dict(settings.model.options),
                            inference_preprocessing(model, normalisation=settings.data.normalisation), metrics=scored,
                            extra={"roi_size": inference.roi_size, "threshold": inference.threshold,
                                   "min_component_area": inference.min_component_area, "loss": settings.loss.name,
                                   "dataset": settings.data.dataset, "run": str(start.run.path)})

    def write_metrics(self, run: RunFolder, metrics: Mapping[str, Any], result: Any) -> None:
        """``metrics.json`` with a row per held-out image, the means, and the training history."""
        settings = self.settings
        self.history = [{key: round(value, 5) if isinstance(value, float) else value for key, value in entry.items()} for entry in result.history]
        write_metrics_file(run.file("metrics.json"), self.rows, {"loss": settings.loss.name, "model": settings.model.name,
                                                                "steps": result.step, "train_seconds": round(self.seconds, 2),
                                                                "stored_model": metrics.get("stored_model"), "history": self.history})

    def write_pages(self, start: JobStart, metrics: Mapping[str, Any], result: Any, outcome: TrainOutcome) -> None:
        """The vessel page (or the demo's section): worst Betti-0 error first, overlays, notes."""
        settings, inference, roi = self.settings, self.inference, self.inference.roi_size
        notes = [f"{settings.model.name} trained with {settings.loss.name} for {result.step} steps "
                 f"({fmt(self.seconds, 's')}) on {len(self.train_records)} images of {settings.data.dataset}; "
                 f"{len(self.eval_records)} held-out image{'' if len(self.eval_records) == 1 else 's'} predicted with {roi}-pixel sliding windows, {postprocessing_note(inference)}."]
        if not self.eval_records:
            notes.append(f"No record of {settings.data.dataset} has a split in data.eval_split {settings.data.eval_split}: nothing was scored.")
        if outcome.stored:
            notes.append(f"Stored as {outcome.stored}: `workbench vessels predict model={outcome.stored} inputs=[...]`, "
                         f"`workbench export-bundle {outcome.stored} OUT_DIR`.")
        write_vessel_page(start.run.path, "Vessel segmentation" if self.report is not None else f"Vessels: {settings.loss.name}", self.rows,
                          self.figures, notes=notes, history=self.history, skipped=self.failures, page=self.report)


def run_train(settings: VesselTrainSettings, builders: Any, *, resume: Path | None = None, report: HtmlReport | None = None,
              run: RunFolder | None = None, progress: bool = True, after_optimizer_step: Callable[[int], None] | None = None) -> VesselOutcome:
    """Train a vessel network, then predict, score and store it (:class:`VesselTrainJob`).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        resume: a run folder to continue from its latest checkpoint.
        report: add sections to this page instead of writing the run's own ``index.html`` (the demo).
        run: use this run folder (the demo's) instead of making one.
        progress: show progress bars.
        after_optimizer_step: an extra ``fn(step)`` after each optimizer step.

    Returns:
        The :class:`VesselOutcome`.

    Raises:
        ConfigError: no training records, an unknown network or loss, or a loss the network cannot feed.
    """
    job = VesselTrainJob(settings, builders, report=report, progress=progress, after_optimizer_step=after_optimizer_step)
    outcome = run_training_job(job, resume=resume, run=run)
    vessel_outcome = VesselOutcome(run=outcome.run, steps=outcome.steps, history=outcome.history, stored=outcome.stored, model=outcome.model)
    if outcome.model is not None:  # rank 0: the scored held-out images
        metrics = dict(outcome.metrics)
        for key in ("steps", "skipped_records", "stored_model"):
            metrics.pop(key, None)
        vessel_outcome.metrics, vessel_outcome.rows, vessel_outcome.seconds = metrics, job.rows, job.seconds
        vessel_outcome.skipped = outcome.metrics["skipped_records"] + len(job.failures)
    return vessel_outcome


def postprocessing_note(inference: InferenceSettings) -> str:
    """How the probability maps became masks, in words (for the run page)."""
    words = ["probabilities averaged over four mirrored copies"] if inference.flips else []
    words.append(f"threshold {inference.threshold}" + (f" (hysteresis down to {inference.low_threshold})" if inference.low_threshold else ""))
    if inference.min_component_area:
        words.append(f"components under {inference.min_component_area} px removed")
    if inference.bridge_max_cost is not None:
        words.append(f"fragments bridged to their neighbours along paths of cost <= {inference.bridge_max_cost:g}")
    if inference.min_isolated_area:
        words.append(f"pieces still under {inference.min_isolated_area} px removed")
    return ", ".join(words)


def _default_roi(patch_size: int) -> int:
    """Sliding windows twice the training patch (fewer seams, same receptive field), a multiple of 16."""
    return max(16, (2 * patch_size) // 16 * 16)


def predict_records(model: nn.Module, records: Sequence[dict], inference: InferenceSettings, check: CheckSettings,
                    folder: Path, device: torch.device, *, score: bool, formats: Sequence[str] = (),
                    normalisation: str = DEFAULT_NORMALISATION, progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, Path], list[tuple[str, str]]]:
    """Predict, post-process and check each record's image; write its figure (and mask files when ``formats`` ask).

    Args:
        model: the network in eval mode, on ``device``.
        records: dicts with ``image`` and optionally ``id``, ``mask`` (reference) and ``fov``.
        inference: sliding-window and post-processing settings (``roi_size`` set).
        check: connectivity-check settings.
        folder: the run folder (``figures/``, ``masks/`` go under it).
        device: where the network runs.
        score: compare with each record's ``mask`` (records without one are only checked).
        formats: ``nifti`` and/or ``dicom-seg`` besides the PNGs (empty: figures only).
        normalisation: the image normalisation the network was trained with (see :mod:`.data_reading`).
        progress: show a progress bar.

    Returns:
        ``(rows, figures, failures)``: per-image metric rows, id -> figure path, ``(file, reason)`` for images skipped.
    """
    from rich.progress import Progress

    rows: list[dict[str, Any]] = []
    figures: dict[str, Path] = {}
    failures: list[tuple[str, str]] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("predicting", total=len(records))
        for record in records:
            image_id = str(record.get("id") or Path(str(record["image"])).stem)
            try:
                item = load_inference_item(record, with_reference=score, normalisation=normalisation)
                probabilities = predict_probabilities(model, item["image"], inference.roi_size, inference.overlap,
                                                      inference.sw_batch_size, device, source=str(record["image"]), flips=inference.flips)
                probability = vessel_probability(probabilities)[0].float().cpu().numpy()
                if item.get("fov") is not None:  # nothing is a vessel outside the field of view (the mask files say so too)
                    probability = np.where(item["fov"], probability, 0.0).astype(np.float32)
                mask = postprocess_mask(probability, inference.threshold, inference.min_component_area, inference.low_threshold,
                                        fov=item.get("fov"), bridge_max_cost=inference.bridge_max_cost,
                                        bridge_window=inference.bridge_window, min_isolated_area=inference.min_isolated_area)
                scored = score_image(image_id, mask, item.get("reference"), item.get("fov"), check.break_distance, check.fragment_area)
                row = scored.row()
                if formats or not score:
                    written = write_mask_outputs(folder / "masks", image_id, probability, inference.threshold, Path(str(record["image"])),
                                                 item.get("meta") or {}, formats=formats, mask=mask)
                    row.update({f"{kind}_file": str(path.relative_to(folder)) for kind, path in written.items()})
                if check.overlays is None or len(figures) < check.overlays:
                    figures[image_id] = write_image_figure(folder, scored, item["display"], probability, inference.threshold)
                rows.append(row)
            except (DataError, WorkbenchError) as error:
                logger.warning("skipped %s: %s", record.get("image"), error)
                failures.append((str(record.get("image")), str(error)))
            bar.advance(task)
    return rows, figures, failures


def _inputs_as_records(inputs: Sequence[Path], frame: int | None = None) -> list[dict]:
    from workbench_plugins.vessels.check import expand_inputs

    return [{"id": path.stem, "image": str(path), **({"frame": frame} if frame is not None else {})} for path in expand_inputs(inputs)]


@closes_run_logs
def run_predict(settings: VesselPredictSettings, builders: Any, *, score: bool) -> VesselOutcome:
    """Predict (and with ``score``, evaluate) a stored network on files or a dataset split.

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        score: compare with the references (``evaluate``); without, each mask's own connectivity (``predict``).

    Returns:
        The :class:`VesselOutcome` (``metrics`` empty without references).

    Raises:
        ConfigError: an unknown stored model, or nothing to predict.
    """
    device = init_distributed(settings.run.device).device
    run = RunFolder.create("vessels-evaluate" if score else "vessels-predict", settings.run.output_root, settings.run.name)
    run.attach_log()
    run.save_settings(settings)
    store = open_store(settings.save.store)
    try:
        reference = settings.weights_ref()
    except ValueError as error:
        raise ConfigError(str(error)) from error
    model, record = store.load(*parse_ref(reference), device=str(device))
    model.eval()
    inference = settings.inference.model_copy(update={"roi_size": settings.inference.roi_size or int(record.extra.get("roi_size") or 128)})
    skipped = SkippedRecords(run.skipped_csv)
    if settings.inputs and not score:
        records = _inputs_as_records(settings.inputs, settings.frame)
    else:
        _, records = train_and_held_out(settings.data, builders, Path(settings.run.output_root), skipped)
    if not records:
        raise ConfigError("nothing to predict: give inputs=[files or folders] or a dataset whose eval_split has records")
    rows, figures, failures = predict_records(model, records, inference, settings.check, run.path, device, score=score,
                                              formats=settings.formats,
                                              normalisation=str(record.preprocessing.extra.get("normalisation", "fov")))
    for name, reason in failures:
        skipped.add({"image": name}, reason, file=name)
    metrics = mean_metrics(rows) if score else {}
    write_metrics_file(run.file("metrics.json"), rows, {"model": f"{record.name}:v{record.version}"})
    notes = [f"{record.name}:v{record.version} ({record.factory}) on {len(rows)} images, {inference.roi_size}-pixel sliding windows, "
             f"{postprocessing_note(inference)}."]
    write_vessel_page(run.path, "Vessel evaluation" if score else "Vessel prediction", rows, figures, notes=notes, skipped=failures)
    return VesselOutcome(run=run, metrics=metrics, rows=rows, skipped=len(failures))
