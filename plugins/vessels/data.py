"""Vessel images, reference masks and fields of view as MONAI datasets and loaders.

One record (from a builder in :mod:`.builders`) gives, after the deterministic
part of the pipeline, which a ``CacheDataset`` keeps in memory:

- ``image``: ``(3, H, W)`` float32, read in [0, 1] (grey repeated to RGB), then
  normalised per image and channel (by default to zero mean, unit variance
  *inside the field of view*, 0 outside it; see :mod:`.data_reading`);
- ``label``: ``(1, H, W)`` float32 {0, 1}, the reference mask (a mask that is
  not binary is thresholded at half its maximum, with a warning);
- ``fov``: ``(1, H, W)`` float32 {0, 1}, read, or derived from the image
  (red-channel threshold) when the record has none;
- ``tube``: ``(1, H, W)`` float32 {0, 1}, the reference skeleton dilated into a
  tube (Skeleton Recall), when ``tube_radius`` is set; computed before any crop.

Training then draws ``patches_per_image`` square patches per record with MONAI
``RandCropByPosNegLabeld`` (centres on vessel with probability
``positive_fraction``, background centres inside the FOV), flips, 90 degree
rotations and a light intensity jitter; a batch of B records holds
``B * patches_per_image`` patches. Validation and inference use the full image
padded at the bottom and right to a multiple of ``pad_multiple``; the original
``(H, W)`` is kept in ``spatial_shape``, so ``x[..., :H, :W]`` undoes the padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from monai.transforms import (Compose, DeleteItemsd, DivisiblePadd, EnsureTyped, FgBgToIndicesd, RandCropByPosNegLabeld, RandFlipd,
                              RandRotate90d, RandScaleIntensityd, RandShiftIntensityd, SpatialPadd)

from workbench.data.loaders import EpochDataLoader, SafeDataset, SkippedRecords, build_dataset, build_loader
from workbench.errors import ConfigError
from workbench_plugins.vessels.data_reading import DEFAULT_NORMALISATION, NORMALISATIONS, LoadVesselRecordd, inference_preprocessing, load_inference_item
from workbench_plugins.vessels.skeleton_tube import SkeletonTubed

logger = logging.getLogger("workbench.vessels")

__all__ = [
    "VesselPipelineSettings", "VesselDatasets", "vessel_transforms", "build_vessel_dataset", "build_vessel_datasets",
    "vessel_training_dataset", "build_vessel_loader", "records_per_batch", "load_inference_item", "inference_preprocessing",
]

_FG_INDICES, _BG_INDICES = "label_fg_indices", "label_bg_indices"


@dataclass(frozen=True)
class VesselPipelineSettings:
    """How vessel records become training patches and padded full images.

    Attributes:
        patch_size: side of the square training patches (pixels).
        patches_per_image: patches drawn from one record per visit.
        positive_fraction: share of patches centred on a vessel pixel (the rest on background inside the FOV).
        tube_radius: radius of the Skeleton Recall tube (``None``: no ``tube`` key).
        pad_multiple: full images are padded (bottom, right) to a multiple of this (the network's stride).
        augment: flips, 90 degree rotations and intensity jitter on training patches.
        intensity_jitter: the jitter's range: scale by ``1 +- j`` and shift by ``+- j`` (normalised units).
        normalisation: ``"fov"`` (statistics inside the field of view, 0 outside), ``"fov-extend"`` (the same,
            nearest FOV value outside) or ``"image"`` (MONAI ``NormalizeIntensity`` channel-wise over the whole
            image); see :mod:`.data_reading`.
    """

    patch_size: int = 96
    patches_per_image: int = 8
    positive_fraction: float = 0.5
    tube_radius: int | None = None
    pad_multiple: int = 16
    augment: bool = True
    intensity_jitter: float = 0.1
    normalisation: str = DEFAULT_NORMALISATION

    def __post_init__(self) -> None:
        problems = [text for bad, text in (
            (self.patch_size < 1, f"patch_size must be >= 1, got {self.patch_size}"),
            (self.patches_per_image < 1, f"patches_per_image must be >= 1, got {self.patches_per_image}"),
            (not 0.0 <= self.positive_fraction <= 1.0, f"positive_fraction must be in [0, 1], got {self.positive_fraction}"),
            (self.tube_radius is not None and self.tube_radius < 0, f"tube_radius must be >= 0, got {self.tube_radius}"),
            (self.pad_multiple < 1, f"pad_multiple must be >= 1, got {self.pad_multiple}"),
            (self.intensity_jitter < 0, f"intensity_jitter must be >= 0, got {self.intensity_jitter}"),
            (self.normalisation not in NORMALISATIONS, f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}"),
        ) if bad]
        if problems:
            raise ConfigError("vessel data: " + "; ".join(problems))


def vessel_transforms(settings: VesselPipelineSettings, train: bool) -> Compose:
    """The MONAI transforms from a vessel record to a training patch or a padded full image.

    Args:
        settings: patch size, sampling, tube and padding.
        train: random patches with augmentation (``True``) or the full padded image (``False``).

    Returns:
        A ``Compose`` whose deterministic head (read, normalise, tube, pad) a ``CacheDataset`` keeps;
        training items are lists of ``patches_per_image`` dicts with ``image`` ``(3, P, P)``,
        ``label``/``fov``/(``tube``) ``(1, P, P)``; full items are one dict with ``(.., H', W')``
        tensors, ``H'`` and ``W'`` multiples of ``pad_multiple``, and ``spatial_shape``.
    """
    spatial = ["image", "label", "fov"] + (["tube"] if settings.tube_radius is not None else [])
    steps: list[Any] = [LoadVesselRecordd(settings.normalisation)]
    if settings.tube_radius is not None:
        steps.append(SkeletonTubed("label", "tube", radius=settings.tube_radius, allow_missing_keys=not train))
    if not train:
        steps += [DivisiblePadd(spatial, k=settings.pad_multiple, method="end", allow_missing_keys=True),
                  EnsureTyped(spatial + ["spatial_shape"], data_type="tensor", track_meta=False, allow_missing_keys=True)]
        return Compose(steps)
    size = (settings.patch_size, settings.patch_size)
    steps += [
        SpatialPadd(spatial, spatial_size=size, method="end"),
        FgBgToIndicesd("label", image_key="fov", image_threshold=0.5),  # once per image, cached: crops only index into it
        EnsureTyped(spatial, data_type="tensor", dtype=torch.float32, track_meta=False),
        RandCropByPosNegLabeld(spatial, label_key="label", spatial_size=size, pos=settings.positive_fraction,
                               neg=1.0 - settings.positive_fraction, num_samples=settings.patches_per_image,
                               fg_indices_key=_FG_INDICES, bg_indices_key=_BG_INDICES),
        DeleteItemsd([_FG_INDICES, _BG_INDICES, "spatial_shape"]),
    ]
    if settings.augment:
        steps += [RandFlipd(spatial, prob=0.5, spatial_axis=0), RandFlipd(spatial, prob=0.5, spatial_axis=1),
                  RandRotate90d(spatial, prob=0.5, max_k=3)]
        if settings.intensity_jitter > 0:
            steps += [RandScaleIntensityd("image", factors=settings.intensity_jitter, prob=0.5),
                      RandShiftIntensityd("image", offsets=settings.intensity_jitter, prob=0.5)]
    # MONAI's random transforms give MetaTensors again; plain tensors keep the batches light and torch.compile-able.
    steps.append(EnsureTyped(spatial, data_type="tensor", dtype=torch.float32, track_meta=False))
    return Compose(steps)


def build_vessel_dataset(records: Sequence[Mapping[str, Any]], settings: VesselPipelineSettings, *, train: bool, cache: str = "memory",
                         cache_dir: Any = None, skipped: SkippedRecords | None = None, num_workers: int = 0) -> SafeDataset:
    """A dataset of vessel records that skips and lists bad ones (``skipped.csv``).

    Args:
        records: builder records (``image``, ``mask``, ``fov`` paths; ``mask`` optional when not training).
        settings: the pipeline settings.
        train: training patches (needs ``mask``) or full padded images.
        cache: ``"memory"`` (read, normalise, tube once), ``"disk"`` or ``"none"``.
        cache_dir: folder for ``cache="disk"``.
        skipped: the run's skip collector.
        num_workers: threads that fill a memory cache.

    Returns:
        A :class:`~workbench.data.loaders.SafeDataset` (items as in :func:`vessel_transforms`; ``None`` for a bad record).
    """
    require = ("image", "mask") if train else ("image",)
    dataset = build_dataset(records, vessel_transforms(settings, train), cache=cache, cache_dir=cache_dir, skipped=skipped,
                            require=require, num_workers=num_workers)
    dataset.patches_per_image = settings.patches_per_image if train else 1  # read by build_vessel_loader
    return dataset


@dataclass
class VesselDatasets:
    """The training (patches) and evaluation (full images) datasets of one run."""

    train: SafeDataset
    eval: SafeDataset


def build_vessel_datasets(records: Sequence[Mapping[str, Any]], settings: VesselPipelineSettings, *,
                          train_splits: Sequence[str] = ("train",), eval_splits: Sequence[str] = ("test",), cache: str = "memory",
                          cache_dir: Any = None, skipped: SkippedRecords | None = None, num_workers: int = 0) -> VesselDatasets:
    """Split records by their ``split`` and build the training and evaluation datasets.

    Args:
        records: builder records.
        settings: the pipeline settings.
        train_splits: ``split`` values trained on (patches).
        eval_splits: ``split`` values evaluated (full images).
        cache: cache mode of both datasets (see :func:`build_vessel_dataset`).
        cache_dir: folder for the disk cache (``train/`` and ``eval/`` under it).
        skipped: the run's skip collector.
        num_workers: threads that fill a memory cache.

    Returns:
        :class:`VesselDatasets`.

    Raises:
        ConfigError: no record has a training split.
    """
    train_records = [record for record in records if record.get("split") in train_splits]
    eval_records = [record for record in records if record.get("split") in eval_splits]
    if not train_records:
        found = sorted({str(record.get("split")) for record in records})
        raise ConfigError(f"no vessel record has a split in {list(train_splits)} (splits found: {', '.join(found) or 'none'})")
    disk = (lambda name: None) if cache_dir is None else (lambda name: f"{cache_dir}/{name}")
    common = {"cache": cache, "skipped": skipped, "num_workers": num_workers}
    return VesselDatasets(train=build_vessel_dataset(train_records, settings, train=True, cache_dir=disk("train"), **common),
                          eval=build_vessel_dataset(eval_records, settings, train=False, cache_dir=disk("eval"), **common))


def vessel_training_dataset(records: Sequence[Mapping[str, Any]], data: Any, *, tube_radius: int | None = None,
                            skipped: SkippedRecords | None = None, cache: str = "memory", cache_dir: str | Path | None = None,
                            num_workers: int = 0) -> SafeDataset:
    """The training-patch dataset for a job's data settings.

    Args:
        records: the training records.
        data: the job's data settings: ``patch_size``, ``patches_per_image``, ``positive_fraction`` (and, when
            present, ``pad_multiple``, ``augment``, ``intensity_jitter``, ``normalisation``).
        tube_radius: the Skeleton Recall tube radius (``None``: no ``tube``).
        skipped: the run's skip collector.
        cache: ``"memory"``, ``"disk"`` (in ``cache_dir``) or ``"none"``.
        cache_dir: the disk cache folder; unused by the memory cache.
        num_workers: threads that fill a memory cache.

    Returns:
        A :class:`SafeDataset` of patch lists (see :func:`vessel_transforms`).
    """
    fields = ("patch_size", "patches_per_image", "positive_fraction", "pad_multiple", "augment", "intensity_jitter", "normalisation")
    settings = VesselPipelineSettings(tube_radius=tube_radius, **{name: getattr(data, name) for name in fields if hasattr(data, name)})
    return build_vessel_dataset(records, settings, train=True, cache=cache, cache_dir=cache_dir if cache == "disk" else None,
                                skipped=skipped, num_workers=num_workers)


def records_per_batch(patches_per_batch: int, patches_per_image: int) -> int:
    """Records per loader batch for a wanted number of patches (a record gives ``patches_per_image`` patches at once).

    Returns:
        ``patches_per_batch // patches_per_image``, at least 1 (a warning says when the two do not divide).
    """
    records = max(1, int(patches_per_batch) // int(patches_per_image))
    if records * patches_per_image != patches_per_batch:
        logger.warning("train.batch_size %d is not a multiple of data.patches_per_image %d: batches of %d patches",
                       patches_per_batch, patches_per_image, records * patches_per_image)
    return records


def build_vessel_loader(dataset: SafeDataset, train_settings: Any = None, seed: int = 0, context: Any = None, *,
                        records_per_batch: int | None = None, shuffle: bool = True, num_workers: int | None = None) -> EpochDataLoader:
    """A loader over a vessel dataset that drops skipped records (see :func:`workbench.data.loaders.build_loader`).

    Args:
        dataset: from :func:`build_vessel_dataset` / :func:`vessel_training_dataset`.
        train_settings: the job's train settings: ``batch_size`` counts *patches* per batch (so one step costs
            the same whatever ``patches_per_image`` is), ``num_workers``; or ``None``.
        seed: the run's seed (shuffling is seeded by ``seed + epoch``).
        context: the job's distributed context (``rank``, ``world_size``): with more than one rank the
            records are sharded; ``None``: one process.
        records_per_batch: records per batch, overriding ``train_settings`` (a training batch then holds
            ``records_per_batch * patches_per_image`` patches; full images of different sizes need 1).
        shuffle: shuffle each epoch (training); ``False`` keeps the record order (evaluation).
        num_workers: loader worker processes, overriding ``train_settings.num_workers``.

    Returns:
        An :class:`~workbench.data.loaders.EpochDataLoader`; batches are dicts with ``image`` ``(B, 3, P, P)``,
        ``label``, ``fov`` (and ``tube``) ``(B, 1, P, P)``, ``id`` (a list), or ``None`` when every record was bad.

    Raises:
        ConfigError: neither ``records_per_batch`` nor train settings with ``batch_size``.
    """
    if records_per_batch is None:
        if getattr(train_settings, "batch_size", None) is None:
            raise ConfigError("build_vessel_loader needs records_per_batch or train settings with a batch_size")
        records_per_batch = records_per_batch_for(dataset, int(train_settings.batch_size))
    workers = num_workers if num_workers is not None else int(getattr(train_settings, "num_workers", 0))
    world_size, rank = (int(context.world_size), int(context.rank)) if context is not None else (1, 0)
    return build_loader(dataset, batch_size=int(records_per_batch), shuffle=shuffle, seed=seed, num_workers=workers, drop_last=False,
                        distributed=world_size > 1, rank=rank, world_size=world_size)


def records_per_batch_for(dataset: SafeDataset, patches_per_batch: int) -> int:
    """:func:`records_per_batch` for a dataset from :func:`build_vessel_dataset` (1 patch per record for full images)."""
    return records_per_batch(patches_per_batch, int(getattr(dataset, "patches_per_image", 1)))
