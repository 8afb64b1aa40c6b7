"""``workbench explain``: explain a stored classifier with a stored CAE, one image or a batch, with baselines and metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workbench.data.readers import read_image
from workbench.data.skipped import SkippedRecords
from workbench.devices import select_device
from workbench.errors import ConfigError
from workbench.fsutil import atomic_path
from workbench.model_records import parse_ref
from workbench.report import RunFolder, closes_run_logs
from workbench_plugins.counterfactual.baselines import baseline_maps
from workbench_plugins.counterfactual.jobs.classify import open_store
from workbench_plugins.counterfactual.jobs.classify_evaluate import load_classifier
from workbench_plugins.counterfactual.data import convert_channels, labelled_dataset, labelled_records, pick_split, read_lesion_mask
from workbench_plugins.counterfactual.explain import check_compatible, explain_linear, fit_to, nearest_exemplar
from workbench_plugins.counterfactual.explain_metrics import localisation, mean_of, proximity
from workbench_plugins.counterfactual.pages.explain import write_explain_page
from workbench_plugins.counterfactual.guided_path import CodeGraph, build_code_graph, guided_waypoints
from workbench_plugins.counterfactual.models import ClassAssociationEmbedding
from workbench_plugins.counterfactual.settings import ExplainSettings

logger = logging.getLogger("workbench.counterfactual")


@dataclass
class Case:
    """One image to explain: ``image`` ``(C, S, S)`` in [0, 1] at the CAE's size, its label and lesion mask when known."""

    id: str
    image: torch.Tensor
    label: int | None = None
    mask: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def load_cae(reference: str, store_path: Path | None, device: torch.device) -> tuple[ClassAssociationEmbedding, Any, list[str]]:
    """A stored CAE in eval mode, its record and its class names.

    Raises:
        ConfigError: the stored model is not a CAE.
    """
    name, version = parse_ref(reference)
    model, record = open_store(store_path).load(name, version, device=str(device))
    if record.task != "counterfactual" or not isinstance(model, ClassAssociationEmbedding):
        raise ConfigError(f"{record.ref} is a {record.task!r} model ({record.factory}), not a CAE")
    return model.eval(), record, list(record.extra.get("classes") or [])


def single_case(path: Path, channels: int, size: int, frame: int | None = None) -> Case:
    """Read one image file (``frame`` of a multi-frame DICOM) and fit it to the CAE (channels converted and size resampled, each with a note)."""
    array, meta = read_image(path, frame=frame)
    notes = []
    if array.shape[0] != channels:
        notes.append(f"{path.name}: {array.shape[0]}-channel image converted to {channels} channel(s)")
        array = convert_channels(array, channels, str(path))
    if array.shape[1:] != (size, size):
        notes.append(f"{path.name}: {array.shape[1]}x{array.shape[2]} image resampled to {size}x{size}")
    image = F.interpolate(torch.as_tensor(array)[None], size=(size, size), mode="area")[0] if array.shape[1:] != (size, size) else torch.as_tensor(array)
    for note in notes:
        logger.info(note)
    return Case(id=path.stem, image=image.clamp(0, 1).float(), notes=notes)


def batch_cases(settings: ExplainSettings, builders: Any, channels: int, size: int, skipped: SkippedRecords) -> tuple[list[Case], list[str]]:
    """The batch form's cases from ``data.eval_split`` (at most ``max_cases``), with lesion masks where known, and the data's classes."""
    records, classes = labelled_records(settings.data, builders, Path(settings.run.output_root), skipped)
    chosen = pick_split(records, settings.data.eval_split, settings.max_cases)
    if not chosen:
        raise ConfigError(f"data.eval_split {settings.data.eval_split}: no records in {settings.data.root or settings.data.source}")
    dataset = labelled_dataset(chosen, settings.data, augment=False, skipped=skipped, cache="none", image_size=size, channels=channels)
    cases = []
    for index, record in enumerate(chosen):
        item = dataset[index]
        if item is not None:
            cases.append(Case(id=str(record["id"]), image=item["image"], label=int(record["label"]), mask=read_lesion_mask(record["lesion_masks"], size)))
    return cases, classes


def reference_codes(settings: ExplainSettings, builders: Any, cae: ClassAssociationEmbedding, channels: int, size: int,
                    device: torch.device, skipped: SkippedRecords) -> tuple[np.ndarray, np.ndarray]:
    """The class codes ``(N, D)`` and labels ``(N,)`` of up to ``reference_cases`` ``data.train_split`` images."""
    from workbench_plugins.counterfactual.pages.cae import class_codes_of

    records, _ = labelled_records(settings.data, builders, Path(settings.run.output_root), skipped)
    reference = pick_split(records, settings.data.train_split, settings.reference_cases)
    dataset = labelled_dataset(reference, settings.data, augment=False, skipped=skipped, cache="none", image_size=size, channels=channels)
    codes, labels, _ = class_codes_of(cae, dataset, device)
    return codes, labels


def reference_graph(settings: ExplainSettings, builders: Any, cae: ClassAssociationEmbedding, channels: int, size: int,
                    device: torch.device, skipped: SkippedRecords) -> CodeGraph:
    """The guided path's Kepler Mapper graph over the class codes of up to ``reference_cases`` training images."""
    codes, labels = reference_codes(settings, builders, cae, channels, size, device, skipped)
    return build_code_graph(codes, labels, settings.guided_cubes, settings.guided_overlap, settings.run.seed)


def _resized(saliency: np.ndarray, size: int) -> np.ndarray:
    if saliency.shape == (size, size):
        return saliency
    return F.interpolate(torch.as_tensor(saliency)[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


@closes_run_logs
def run_explain(settings: ExplainSettings, builders: Any) -> tuple[RunFolder, dict[str, Any]]:
    """Explain one image (``settings.image``) or a batch; write per-case figures, ``metrics.json`` and ``index.html``.

    Returns:
        ``(run folder, summary)``; the summary holds ``cases`` (one row per case) and, with
        ``evaluate``, ``flip_rate``, ``seconds_per_explanation``, ``queries_per_explanation``,
        proximity means and ``energy_in_mask`` / ``pointing`` / ``dice_topk`` per method.

    Raises:
        ConfigError: a CAE for other classes, a bad target, or no images.
    """
    device = select_device(settings.run.device)
    run = RunFolder.create("explain", settings.run.output_root, settings.run.name)
    run.attach_log()
    run.save_settings(settings)
    classifier, classifier_record, classes = load_classifier(settings.classifier, settings.store, device)
    cae, cae_record, cae_classes = load_cae(settings.cae, settings.store, device)
    check_compatible(classes, cae_classes, classifier_record.ref, cae_record.ref)
    size, channels = int(cae_record.config["image_size"]), int(cae_record.config["in_channels"])
    classifier_size = classifier_record.preprocessing.image_size
    classifier_size = int(classifier_size if isinstance(classifier_size, int) else classifier_size[-1])
    classifier_channels = classifier_record.preprocessing.channels
    skipped = SkippedRecords(run.skipped_csv)
    if settings.image is not None:
        cases = [single_case(Path(settings.image), channels, size, settings.frame)]
    else:
        cases, data_classes = batch_cases(settings, builders, channels, size, skipped)
        if data_classes != classes:
            raise ConfigError(f"{classifier_record.ref} predicts {classes} but the data has classes {data_classes}")
    guided_by = cae_record.extra.get("guide_classifier")
    if guided_by and guided_by != classifier_record.ref:
        cases[0].notes.append(f"{cae_record.ref} was trained with classifier guidance from {guided_by}, not from {classifier_record.ref}: "
                              "its counterfactuals may flip this classifier less often")
    if (classifier_channels, classifier_size) != (channels, size):
        cases[0].notes.append(f"decoded {channels}-channel {size}x{size} images are converted to the classifier's "
                              f"{classifier_channels}-channel {classifier_size}x{classifier_size} input")
    baselines = baseline_maps(classifier, settings.baselines, classifier_record.extra.get("gradcam_layer"), settings.occlusion_mask)
    waypoints_for = None
    if settings.path == "guided":
        code_graph = reference_graph(settings, builders, cae, channels, size, device, skipped)
        waypoints_for = lambda code, target: guided_waypoints(code_graph, code, target)  # noqa: E731
    reference_for = None
    if settings.reference == "nearest":  # computed once per run, like the centroids once per training
        reference_for = nearest_exemplar(*reference_codes(settings, builders, cae, channels, size, device, skipped))
    rows, shown = [], []
    drawn = cases_to_show(cases, settings.shown)
    for index, case in enumerate(cases):
        explanation = explain_linear(classifier, cae, case.image, classes, target=settings.target, steps=settings.steps,
                                     classifier_size=classifier_size, classifier_channels=classifier_channels,
                                     smoothing_sigma=settings.smoothing_sigma, keep_path=index in drawn, waypoints_for=waypoints_for,
                                     reference_for=reference_for)
        maps = {"cae": explanation.saliency}
        timings = {"seconds.cae": explanation.seconds}
        classifier_input = fit_to(case.image[None].to(device), classifier_channels, classifier_size)
        for name, saliency_of in baselines.items():
            started = time.perf_counter()
            maps[name] = _resized(saliency_of(classifier_input, explanation.source), size)
            timings[f"seconds.{name}"] = time.perf_counter() - started
        row: dict[str, Any] = {"id": case.id, "label": None if case.label is None else classes[case.label], "predicted": classes[explanation.source],
                               "p": explanation.source_probability, "target": classes[explanation.target], "valid": explanation.valid,
                               "flipped_step": explanation.flipped_step, "steps": explanation.steps, "path": explanation.path_kind,
                               "reconstruction_kept_class": explanation.reconstruction_kept_class,
                               "queries": explanation.queries, "seconds": explanation.seconds,
                               "correct": None if case.label is None else case.label == explanation.source, **timings,
                               **proximity(explanation.counterfactual, explanation.image, explanation.reconstruction)}
        row["saliency_file"] = str(save_saliency(run, case.id, explanation.saliency).relative_to(run.path))
        if case.mask is not None and case.mask.any():
            for name, saliency in maps.items():
                for key, value in localisation(saliency, case.mask, settings.topk_percent).items():
                    row[f"{key}.{name}"] = value
        rows.append(row)
        if index in drawn:
            shown.append((case, explanation, maps))
    summary = summarise(rows, ["cae", *baselines], cae_record.metrics.get("knn_accuracy")) if settings.evaluate else {}
    summary.update(classifier=classifier_record.ref, cae=cae_record.ref, classes=classes, cases=rows)
    run.write_metrics(summary)
    write_explain_page(run, f"Counterfactual explanations of {classifier_record.ref} with {cae_record.ref}", classes, shown, summary,
                       [note for case in cases for note in case.notes])
    return run, summary


def cases_to_show(cases: list[Case], count: int) -> set[int]:
    """Indices of the ``count`` cases the page draws: the classes in turn, each class's cases in order.

    A split listed class by class (folder layouts are) would otherwise show only its first class.
    """
    by_label: dict[int | None, list[int]] = {}
    for index, case in enumerate(cases):
        by_label.setdefault(case.label, []).append(index)
    queues = [list(indices) for _, indices in sorted(by_label.items(), key=lambda item: (item[0] is None, item[0] or 0))]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return set(chosen)


def save_saliency(run: RunFolder, case_id: str, saliency: np.ndarray) -> Path:
    """Write one case's CAE saliency as ``saliency/<id>.npy`` (float32 ``(S, S)``, atomically).

    Other jobs read it back: ``workbench ground --image F --phrase P --saliency RUN/saliency/<id>.npy`` lays the
    phrase's heatmap over the same image with their overlap, asking whether the region the classifier needs is the
    one the report names.

    Returns:
        The written path.
    """
    safe = "".join(character if character.isalnum() or character in "-_" else "_" for character in str(case_id))
    with atomic_path(run.file(f"saliency/{safe}.npy")) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, np.asarray(saliency, dtype=np.float32), allow_pickle=False)
    return run.file(f"saliency/{safe}.npy")


def summarise(rows: list[dict[str, Any]], methods: list[str], knn_accuracy: float | None) -> dict[str, Any]:
    """The metrics table: flip rate over correctly classified cases (all cases when labels are unknown) and the means."""
    counted = [row for row in rows if row["correct"] is not False]
    summary: dict[str, Any] = {
        "explained": len(rows), "flip_rate_cases": len(counted),
        "flip_rate": float(np.mean([row["valid"] for row in counted])) if counted else None,
        # Valid needs the reconstruction to keep the image's class: without that a "flip" at step 1 is the
        # reconstruction's error, not the path's change.
        "reconstruction_kept_rate": float(np.mean([row["reconstruction_kept_class"] for row in counted])) if counted else None,
        "seconds_per_explanation": mean_of(rows, "seconds"), "queries_per_explanation": mean_of(rows, "queries"),
        "proximity_l1": mean_of(rows, "l1"), "proximity_ssim": mean_of(rows, "ssim"), "sparsity": mean_of(rows, "sparsity"),
        "knn_accuracy": knn_accuracy,
    }
    for key in ("energy_in_mask", "pointing", "dice_topk"):
        summary[key] = {method: mean_of(rows, f"{key}.{method}") for method in methods}
    summary["seconds_per_method"] = {method: mean_of(rows, f"seconds.{method}") for method in methods}
    summary["localised_cases"] = sum(1 for row in rows if "pointing.cae" in row)
    return summary
