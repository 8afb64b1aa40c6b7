"""Image-report pairs for pretraining and evaluation: MONAI transforms and datasets.

The deterministic part of the pipeline (read, validate, grey to RGB, resize,
normalise, report text checked and split into sentences) is what a
``CacheDataset`` keeps in memory, so an epoch after the first decodes nothing;
augmentation (mild zoom, no flips: laterality is part of the report) runs per
step on the cached tensors.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, MapTransform, NormalizeIntensityd, RandAffined, Resized, Transform

from workbench.data.loaders import SafeDataset, SkippedRecords, ValidateImaged, build_dataset
from workbench.data.readers import LoadWorkbenchImaged
from workbench.errors import DataError
from workbench.registry import Preprocessing
from workbench_plugins.contrastive.text import split_sentences, usable_report


class EnsureRgbd(MapTransform):
    """Repeat a one-channel ``(1, H, W)`` image to ``(3, H, W)``; three channels pass through.

    Raises:
        DataError: an image with 2 or more than 3 channels, naming its file.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        record = dict(data)
        for key in self.key_iterator(record):
            image = record[key]
            channels = int(image.shape[0])
            if channels == 1:
                record[key] = np.repeat(np.asarray(image), 3, axis=0) if not isinstance(image, torch.Tensor) else image.repeat(3, 1, 1)
            elif channels != 3:
                source = (record.get(f"{key}_meta") or {}).get("source", record.get("id"))
                raise DataError(source, f"{key}: expected 1 or 3 channels, got {channels}")
        return record


class ReportTextd(MapTransform):
    """Check a record's report and keep its usable text and sentences.

    Stores ``report_text`` (FINDINGS + IMPRESSION, placeholders kept as one
    token) and ``report_sentences`` (a list of str). An empty report, one with
    no usable section, or one made only of placeholders raises a
    :class:`~workbench.errors.DataError`, so the record is skipped and listed.
    """

    def __init__(self, keys: str = "report", style: str = "auto"):
        super().__init__([keys])
        self.style = style

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        record = dict(data)
        try:
            text = usable_report(str(record.get("report") or ""), style=self.style)
        except DataError as error:
            source = (record.get("image_meta") or {}).get("source") or record.get("id")
            raise DataError(source, f"report: {error.reason}") from error
        record["report_text"] = text
        record["report_sentences"] = split_sentences(text)
        return record


KEPT_FIELDS: tuple[str, ...] = ("id", "image", "report_text", "report_sentences", "labels", "boxes", "image_meta")


class SelectFieldsd(Transform):
    """Keep only the fields a batch needs (drops metadata and paths the cache need not hold)."""

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return {key: data[key] for key in self.fields if key in data and key != "image_meta"}


def image_pipeline(preprocessing: Preprocessing, augment: bool) -> Compose:
    """The image transforms for a dual encoder's preprocessing.

    Args:
        preprocessing: image size, mean and std (from the model or the registry).
        augment: add the per-step random zoom/shift (training only).

    Returns:
        A MONAI ``Compose`` taking a record with ``image`` (a path) and
        ``report`` and giving ``image`` as a float32 tensor ``(3, S, S)``.
    """
    size = preprocessing.image_size if isinstance(preprocessing.image_size, int) else preprocessing.image_size[0]
    steps: list[Any] = [
        LoadWorkbenchImaged(keys="image"),
        ValidateImaged(keys="image", spatial_ndim=2, min_size=8),
        EnsureRgbd(keys="image"),
        Resized(keys="image", spatial_size=(size, size), mode="area"),
        NormalizeIntensityd(keys="image", subtrahend=np.asarray(preprocessing.mean, dtype=np.float32)[:, None, None],
                            divisor=np.asarray(preprocessing.std, dtype=np.float32)[:, None, None], channel_wise=False),
        EnsureTyped(keys="image", data_type="tensor", dtype=torch.float32, track_meta=False),
        ReportTextd(keys="report"),
        SelectFieldsd(KEPT_FIELDS),
    ]
    if augment:
        steps.append(RandAffined(keys="image", prob=0.8, scale_range=(0.1, 0.1), translate_range=(size * 0.05, size * 0.05),
                                 padding_mode="zeros", mode="bilinear"))
    return Compose(steps)


def pair_dataset(
    records: Sequence[Mapping[str, Any]],
    preprocessing: Preprocessing,
    *,
    augment: bool,
    cache: str = "memory",
    skipped: SkippedRecords | None = None,
    cache_dir: Any = None,
) -> SafeDataset:
    """A dataset of image-report pairs that skips and lists bad records.

    Args:
        records: manifest records with ``image`` and ``report`` (``labels`` kept when present).
        preprocessing: the model's preprocessing.
        augment: per-step augmentation (training).
        cache: ``"memory"`` (decode once), ``"disk"`` or ``"none"``.
        skipped: the run's skip collector (writes ``skipped.csv``).
        cache_dir: folder for the disk cache.

    Returns:
        A :class:`SafeDataset`; items are dicts with ``image`` ``(3, S, S)``,
        ``report_text``, ``report_sentences``, ``id`` (and ``labels``).
    """
    pipeline = image_pipeline(preprocessing, augment)
    return build_dataset(records, pipeline, cache=cache, skipped=skipped, require=("image", "report"), cache_dir=cache_dir)
