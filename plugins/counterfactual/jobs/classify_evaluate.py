"""``workbench classify evaluate``: a stored classifier on held-out images of any supported layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.data.skipped import SkippedRecords
from workbench.devices import select_device
from workbench.errors import ConfigError
from workbench.model_records import ModelRecord, parse_ref
from workbench.report import RunFolder, closes_run_logs
from workbench_plugins.counterfactual.jobs.classify import TASK, open_store
from workbench_plugins.counterfactual.pages.classify import write_classifier_page
from workbench_plugins.counterfactual.data import labelled_dataset, labelled_records, pick_split
from workbench_plugins.counterfactual.metrics import classification_metrics, predict
from workbench_plugins.counterfactual.settings import ClassifyEvaluateSettings


def load_classifier(reference: str, store_path: Path | None, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelRecord, list[str]]:
    """Load a stored classifier in eval mode with its record and class names.

    Args:
        reference: ``name[:version]`` in the store.
        store_path: the store folder (``None``: default).
        device: where to put it.

    Returns:
        ``(model, record, classes)``.

    Raises:
        RegistryError: unknown name or version.
        ConfigError: the stored model is not a classifier or has no class names.
    """
    name, version = parse_ref(reference)
    model, record = open_store(store_path).load(name, version, device=str(device))
    if record.task != TASK:
        raise ConfigError(f"{record.ref} is a {record.task!r} model, not a classifier")
    classes = list(record.extra.get("classes") or record.preprocessing.extra.get("classes") or [])
    if len(classes) < 2:
        raise ConfigError(f"{record.ref}: the record names no classes (extra.classes)")
    return model.eval(), record, classes


def check_same_classes(model_classes: list[str], data_classes: list[str], model_ref: str, data_source: Any) -> None:
    """Raise a :class:`ConfigError` naming both lists when a model's classes differ from the data's."""
    if list(model_classes) != list(data_classes):
        raise ConfigError(f"{model_ref} was trained on classes {model_classes} but {data_source} has classes {data_classes}; "
                          "set data.classes (or data.finding) to match")


@closes_run_logs
def run_classify_evaluate(settings: ClassifyEvaluateSettings, builders: Any) -> tuple[RunFolder, dict[str, Any]]:
    """Evaluate a stored classifier on ``data.eval_split`` and write a run folder.

    The images are prepared at the stored model's own size and channels.

    Returns:
        ``(run folder, metrics)``.

    Raises:
        ConfigError: the data's classes differ from the model's, or no evaluation records.
    """
    device = select_device(settings.run.device)
    run = RunFolder.create("classify-eval", settings.run.output_root, settings.run.name)
    run.attach_log()
    run.save_settings(settings)
    skipped = SkippedRecords(run.skipped_csv)
    model, record, classes = load_classifier(settings.model, settings.store, device)
    records, data_classes = labelled_records(settings.data, builders, Path(settings.run.output_root), skipped)
    check_same_classes(classes, data_classes, record.ref, settings.data.root or settings.data.source)
    eval_records = pick_split(records, settings.data.eval_split, settings.data.max_eval)
    if not eval_records:
        raise ConfigError(f"data.eval_split {settings.data.eval_split}: no records in {settings.data.root or settings.data.source}")
    size = record.preprocessing.image_size
    dataset = labelled_dataset(eval_records, settings.data, augment=False, skipped=skipped, cache="none",
                               image_size=int(size if isinstance(size, int) else size[-1]), channels=record.preprocessing.channels)
    ids, labels, probabilities = predict(model, dataset, device, settings.batch_size)
    metrics = classification_metrics(labels, probabilities, classes)
    metrics.update(model=record.ref, skipped_records=len(skipped))
    run.write_metrics({"evaluate": metrics})
    write_classifier_page(run, f"Evaluation of {record.ref}", metrics, dataset, ids, probabilities, settings.examples)
    return run, metrics
