"""Labelled images for the classifier and the CAE: records from three layouts, one MONAI pipeline.

Layouts (``data.source``):

- ``phantoms``: the chest phantoms, label "finding present" (any finding, or one named finding);
  each positive record keeps its exact per-finding lesion masks (``lesion_masks``) for the
  localisation metrics.
- ``manifest``: a CSV/JSONL manifest with ``image`` and ``label`` (a class index or a class name).
- ``folder``: ``root/<class>/*.png|*.jpg|*.jpeg|*.dcm`` (class names are the folder names).

Every image goes through the same deterministic MONAI pipeline (read, check, match channels,
resize, intensities to [0, 1]) so the classifier, the CAE and the explanations all see the same
``(C, S, S)`` tensors in [0, 1].
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import Compose, EnsureTyped, MapTransform, RandAffined, Resized, ScaleIntensityd, Transform

from workbench.data.loaders import SafeDataset, ValidateImaged, build_dataset
from workbench.data.manifests import read_manifest
from workbench.data.phantoms import FINDINGS
from workbench.data.readers import LoadWorkbenchImaged
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench.jobs import build_records
from workbench_plugins.counterfactual.builders import build_class_folders
from workbench_plugins.counterfactual.settings import LabelledDataSettings

logger = logging.getLogger("workbench.counterfactual")

BATCH_FIELDS = ("id", "image", "label")


def split_of(key: str) -> str:
    """``"train"``/``"val"``/``"test"`` (about 80/10/10) from a hash of ``key`` alone."""
    bucket = int.from_bytes(hashlib.sha256(f"cf-split-{key}".encode()).digest()[:4], "little") % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def _phantom_records(data: LabelledDataSettings, builders: Any, output_root: Path, skipped: SkippedRecords | None) -> tuple[list[dict], list[str]]:
    if data.finding != "any" and data.finding not in FINDINGS:
        raise ConfigError(f"data.finding: {data.finding!r} is not 'any' or one of {', '.join(FINDINGS)}")
    options = {key: int(value) for key, value in data.phantoms.items()}
    records = build_records("phantom-cxr", data.root, options, builders, output_root, skipped)
    wanted = list(FINDINGS) if data.finding == "any" else [data.finding]
    name = "finding" if data.finding == "any" else data.finding
    out = []
    for record in records:
        labels = record.get("labels") or {}
        present = [finding for finding in FINDINGS if int(labels.get(finding, 0))]
        if data.exclusive and data.finding != "any" and any(finding != data.finding for finding in present):
            continue
        positive = any(finding in wanted for finding in present)
        masks = record.get("masks") or {}
        out.append({"id": record["id"], "image": record["image"], "label": int(positive), "split": record.get("split") or split_of(record["id"]),
                    "lesion_masks": [masks[finding] for finding in wanted if finding in masks] if positive else []})
    return out, [f"no_{name}", name]


def _manifest_records(data: LabelledDataSettings, skipped: SkippedRecords | None) -> tuple[list[dict], list[str]]:
    if data.root is None or not Path(data.root).is_file():
        raise ConfigError(f"data.root: {data.root} is not a manifest file (data.source is 'manifest')")
    records = read_manifest(data.root, require=("image", "label"))
    labels = [record["label"] for record in records]
    if data.classes:
        classes = list(data.classes)
    elif all(isinstance(label, int) for label in labels):
        classes = [str(index) for index in range(max(labels) + 1)] if labels else []
    else:
        classes = sorted({str(label) for label in labels})
    out = []
    for record in records:
        label = record["label"]
        index = label if isinstance(label, int) else (classes.index(label) if label in classes else -1)
        if not 0 <= index < len(classes):
            if skipped is not None:
                skipped.add(record, f"label {label!r} is not one of the classes {classes}")
            continue
        mask = record.get("mask")
        out.append({"id": record["id"], "image": record["image"], "label": int(index), "split": record.get("split") or split_of(record["id"]),
                    "lesion_masks": [mask] if mask else []})
    return out, classes


def _folder_records(data: LabelledDataSettings, skipped: SkippedRecords | None) -> tuple[list[dict], list[str]]:
    root = Path(data.root) if data.root is not None else None
    if root is None or not root.is_dir():
        raise ConfigError(f"data.root: {root} is not a folder (data.source is 'folder': root/<class>/*.png|*.jpg|*.dcm)")
    records = build_class_folders(root, classes=data.classes, group_pattern=data.group_pattern, val_fraction=data.val_fraction,
                                  test_fraction=data.test_fraction, seed=data.split_seed, skipped=skipped)
    classes = list(dict.fromkeys(record["class_name"] for record in records))
    out = [{"id": record["id"], "image": record["image"], "label": record["label"], "split": record["split"], "lesion_masks": []}
           for record in records]
    return out, classes


def labelled_records(data: LabelledDataSettings, builders: Any, output_root: Path, skipped: SkippedRecords | None = None) -> tuple[list[dict], list[str]]:
    """Every usable record of the configured source, and the class names in label order.

    Args:
        data: the data settings.
        builders: the host's dataset-builder catalog (for the phantoms).
        output_root: where the phantoms go when ``data.root`` is not set.
        skipped: where records with unusable labels are listed.

    Returns:
        ``(records, classes)``; each record has ``id``, ``image`` (a path), ``label`` (int),
        ``split`` and ``lesion_masks`` (mask file paths, possibly empty).

    Raises:
        ConfigError: a missing root, an unknown finding, or fewer than two classes.
    """
    if data.source == "phantoms":
        records, classes = _phantom_records(data, builders, output_root, skipped)
    elif data.source == "manifest":
        records, classes = _manifest_records(data, skipped)
    else:
        records, classes = _folder_records(data, skipped)
    if len(classes) < 2:
        raise ConfigError(f"data: a classifier needs at least two classes, found {classes} in {data.root or data.source}")
    return records, classes


def pick_split(records: Sequence[dict], wanted: Sequence[str], limit: int | None) -> list[dict]:
    """The records whose ``split`` is in ``wanted``, in order, capped at ``limit``."""
    return [record for record in records if record.get("split") in wanted][: limit or None]


class MatchChannelsd(MapTransform):
    """Make an image ``(C, H, W)`` have the wanted channels: grey is repeated to RGB, RGB averaged to grey.

    A conversion is logged once per source channel count (it is a note, not an error).

    Raises:
        DataError: an image with a channel count that cannot be converted (2, or more than 4).
    """

    def __init__(self, keys: Any, channels: int):
        super().__init__(keys)
        self.channels = int(channels)
        self._noted: set[int] = set()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with each key's image converted to ``channels``."""
        record = dict(data)
        for key in self.key_iterator(record):
            record[key] = convert_channels(np.asarray(record[key]), self.channels, (record.get(f"{key}_meta") or {}).get("source"), self._noted)
        return record


def convert_channels(image: np.ndarray, channels: int, source: Any = None, noted: set[int] | None = None) -> np.ndarray:
    """``(C, H, W)`` -> ``(channels, H, W)``: 1 -> 3 by repeating, 3 or 4 (alpha dropped) -> 1 by averaging.

    Raises:
        DataError: a channel count other than 1, 3 or 4 (naming ``source``).
    """
    have = int(image.shape[0])
    if have == channels:
        return image
    if have not in (1, 3, 4):
        raise DataError(source, f"image has {have} channels; the model takes {channels} (1 grey or 3 RGB images convert)")
    if noted is not None and have not in noted:
        noted.add(have)
        logger.info("converting %d-channel images to %d channel(s) for the model (first: %s)", have, channels, source)
    if have == 4:
        image = image[:3]
    return np.repeat(image[:1], channels, axis=0) if image.shape[0] == 1 else np.repeat(image.mean(axis=0, keepdims=True), channels, axis=0)


class ClipUnitd(MapTransform):
    """Clip an image's intensities to [0, 1] (a 'unit'-read image may overshoot after area resizing)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        record = dict(data)
        for key in self.key_iterator(record):
            record[key] = np.clip(np.asarray(record[key], dtype=np.float32), 0.0, 1.0)
        return record


class KeepFieldsd(Transform):
    """Keep only the fields a batch needs (the cache then holds no paths or metadata)."""

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return {key: data[key] for key in self.fields if key in data}


def image_pipeline(image_size: int, channels: int, intensity: str = "unit", augment: bool = False, fields: Sequence[str] = BATCH_FIELDS) -> Compose:
    """The MONAI transforms from a record (``image`` path) to a float32 tensor ``(channels, S, S)`` in [0, 1].

    Args:
        image_size: the output side ``S``.
        channels: 1 or 3.
        intensity: ``unit`` (as read, clipped to [0, 1]) or ``minmax`` (per image).
        augment: add a mild random affine (rotation, zoom, shift; no flips).
        fields: the record fields kept.

    Returns:
        A ``Compose``.
    """
    steps: list[Any] = [
        LoadWorkbenchImaged(keys="image"),
        ValidateImaged(keys="image", spatial_ndim=2, min_size=8),
        MatchChannelsd(keys="image", channels=channels),
        Resized(keys="image", spatial_size=(image_size, image_size), mode="area"),
        ScaleIntensityd(keys="image", minv=0.0, maxv=1.0) if intensity == "minmax" else ClipUnitd(keys="image"),
        EnsureTyped(keys="image", data_type="tensor", dtype=torch.float32, track_meta=False),
        KeepFieldsd(fields),
    ]
    if augment:
        steps.append(RandAffined(keys="image", prob=0.7, rotate_range=0.08, scale_range=(0.08, 0.08),
                                 translate_range=(image_size * 0.04, image_size * 0.04), padding_mode="border", mode="bilinear"))
    return Compose(steps)


def labelled_dataset(records: Sequence[Mapping[str, Any]], data: LabelledDataSettings, *, augment: bool, cache: str | None = None,
                     skipped: SkippedRecords | None = None, cache_dir: Any = None, image_size: int | None = None,
                     channels: int | None = None) -> SafeDataset:
    """A dataset of ``{"id", "image" (C, S, S) in [0, 1], "label"}`` that skips and lists bad records.

    Args:
        records: from :func:`labelled_records`.
        data: the data settings (size, channels and intensity unless overridden).
        augment: per-step augmentation (training).
        cache: ``memory``, ``disk`` or ``none`` (default ``data.cache``).
        skipped: the run's skip collector.
        cache_dir: the folder for the disk cache.
        image_size: overrides ``data.image_size`` (a stored model's own size).
        channels: overrides ``data.channels``.

    Returns:
        A :class:`~workbench.data.loaders.SafeDataset`.
    """
    pipeline = image_pipeline(image_size or data.image_size, channels or data.channels, data.intensity, augment and data.augment)
    return build_dataset(records, pipeline, cache=cache or data.cache, skipped=skipped, require=("image",), cache_dir=cache_dir)


class ClassBalancedDataset(torch.utils.data.Dataset):
    """Every class equally often: item ``i`` is class ``i % K``'s ``(i // K) % n_k``-th record of a wrapped dataset.

    The CAE pairs each image with one of another class inside its batch; with a 20% minority class, a third of
    the batches of 4 hold one class only and teach no swap. Interleaving the classes (the loader's shuffle then
    mixes them) gives every batch both classes nearly always and oversamples the minority, as the papers' training
    pairs an image of class A with one of class B at every step. The order is a pure function of the index, so
    resume is unaffected.

    Args:
        dataset: the map-style dataset (a :class:`~workbench.data.loaders.SafeDataset`).
        labels: the class index of each of its items, ``len(dataset)`` ints.

    Length: ``K * max(n_k)`` over the K classes present.
    """

    def __init__(self, dataset: Any, labels: Sequence[int]):
        if len(labels) != len(dataset):
            raise ValueError(f"{len(labels)} labels for {len(dataset)} items")
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(int(label), []).append(index)
        self.dataset, self.groups = dataset, [by_class[key] for key in sorted(by_class)]
        self.longest = max((len(group) for group in self.groups), default=0)

    def __len__(self) -> int:
        return len(self.groups) * self.longest

    def __getitem__(self, index: int) -> Any:
        """The wrapped item for balanced position ``index``."""
        group = self.groups[index % len(self.groups)]
        return self.dataset[group[(index // len(self.groups)) % len(group)]]


def read_lesion_mask(paths: Sequence[str], image_size: int) -> np.ndarray | None:
    """The union of the lesion-mask files, resized (nearest) to ``(image_size, image_size)`` bool; ``None`` when none."""
    from PIL import Image

    from workbench.data.masks import read_binary_mask

    union = None
    for path in paths:
        full = Image.fromarray(read_binary_mask(path).astype(np.uint8))
        mask = np.asarray(full.resize((image_size, image_size), Image.NEAREST)) > 0
        union = mask if union is None else union | mask
    return union
