"""Datasets and loaders that skip bad records instead of stopping a run.

A bad record (missing file, empty report, corrupt image, NaN/Inf pixels, wrong
shape) is logged with its reason, written at once to ``skipped.csv`` in the run
folder, and skipped. Two places catch them:

- :func:`check_record`, before the dataset is built: cheap checks (files
  exist, report not empty, fields well-formed); such records are dropped.
- :class:`SafeDataset`, per item: an item whose transforms raise a
  :class:`~workbench.errors.DataError` (``read_image`` and
  :class:`ValidateImaged` raise those) comes out as ``None``, and
  :func:`collate_skipping_none` drops it from its batch.

Skipping by dropping (rather than substituting the next good index) keeps the
sample order a function of the seed and epoch alone, so a resumed run sees the
same indices in the same batches whatever records are bad. The price: a batch
can be smaller than ``batch_size``, and an all-bad batch comes out as ``None``,
which the training loop skips.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate
from monai.data.utils import json_hashing, set_rnd
from monai.transforms import MapTransform
from torch.utils.data import DistributedSampler

from workbench.data.disk_cache import CheckedPersistentDataset
from workbench.data.manifests import PATH_FIELDS, validate_record
from workbench.data.skipped import SkippedRecords, skippable_error
from workbench.errors import ConfigError, DataError, ImageReadError

__all__ = [
    "SkippedRecords", "SafeDataset", "SkippingCacheDataset", "EpochDataLoader", "ValidateImaged",
    "check_record", "build_dataset", "build_loader", "collate_skipping_none",
]

logger = logging.getLogger("workbench.data")

CACHE_MODES = ("none", "memory", "disk")
_PLACEHOLDER_CHARACTERS = set("_ \t\r\n")  # MIMIC-style "___" redactions and whitespace say nothing


def check_record(record: Mapping[str, Any], require: Sequence[str] = ("image",)) -> str | None:
    """Cheap up-front checks; the reason a record cannot be used, or ``None`` when it can.

    Args:
        record: a manifest record (paths absolute, as :func:`read_manifest` gives).
        require: the task's required fields; a required ``report`` must say
            something beyond ``___`` placeholders and whitespace.

    Returns:
        A reason string such as ``"image file not found: /data/a.dcm"``, or ``None``.
    """
    problems = validate_record(dict(record), require)
    if problems:
        return problems[0]
    for field in PATH_FIELDS:
        value = record.get(field)
        if value and not Path(value).is_file():
            return f"{field} file not found: {value}"
    for name, value in (record.get("masks") or {}).items():
        if not Path(value).is_file():
            return f"masks[{name!r}] file not found: {value}"
    if "report" in require and set(str(record.get("report") or "")) <= _PLACEHOLDER_CHARACTERS:
        return "empty report (only whitespace or ___ placeholders)"
    return None


def _record_at(dataset: Any, index: int) -> Mapping[str, Any]:
    data = getattr(dataset, "data", None)
    if isinstance(data, Sequence) and -len(data) <= index < len(data) and isinstance(data[index], Mapping):
        return data[index]
    return {"id": str(index)}


class SafeDataset(torch.utils.data.Dataset):
    """Wrap a map-style dataset: an item whose loading raises a data error becomes ``None``.

    Args:
        dataset: any map-style dataset (a MONAI ``Dataset``, ``CacheDataset``...).
        skipped: where skips are recorded (an in-memory collector when ``None``).
        skip_on: the exception types treated as a bad record, looked for along
            the exception's cause chain (MONAI wraps transform errors). The
            default, :class:`~workbench.errors.DataError`, lets a programming
            error stop the run instead of silently skipping every record.
    """

    def __init__(self, dataset: Any, skipped: SkippedRecords | None = None, skip_on: tuple[type[BaseException], ...] = (DataError,)):
        self.dataset = dataset
        self.skipped = skipped if skipped is not None else SkippedRecords()
        self.skip_on = skip_on

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        """The item at ``index``, or ``None`` (recorded once in ``skipped``) when it is bad."""
        try:
            return self.dataset[index]
        except Exception as exc:
            cause = skippable_error(exc, self.skip_on)
            if cause is None:
                raise
            self.skipped.add(_record_at(self.dataset, index), cause)
            return None


class _CacheFailure:
    """Stands in the cache for a record whose deterministic transforms failed (picklable, unlike errors)."""

    def __init__(self, error: BaseException):
        self.kind = type(error) if isinstance(error, DataError) else DataError
        self.path = getattr(error, "path", None)
        self.reason = getattr(error, "reason", f"{type(error).__name__}: {error}")

    def raise_again(self) -> None:
        raise self.kind(self.path, self.reason)


class SkippingCacheDataset(CacheDataset):
    """MONAI ``CacheDataset`` whose cache phase records a bad record and goes on.

    ``CacheDataset`` runs the deterministic transforms of every record when it
    is built, where one bad file would otherwise abort the whole run. A failed
    record is cached as a failure, recorded in ``skipped``, and raises the same
    :class:`DataError` whenever it is read, which :class:`SafeDataset` turns
    into ``None``: every cache mode yields the same items at the same indices.

    Args:
        data: the records.
        transform: a MONAI ``Compose``.
        skipped: where failures are recorded.
        skip_on: exception types that mark a bad record.
        kwargs: passed to ``CacheDataset`` (``num_workers``, ``cache_rate``...).
    """

    def __init__(self, data: Sequence, transform: Any, skipped: SkippedRecords, skip_on: tuple[type[BaseException], ...] = (DataError,), **kwargs: Any):
        self.skipped = skipped
        self.skip_on = skip_on
        super().__init__(data=data, transform=transform, **kwargs)

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)
        except Exception as exc:
            cause = skippable_error(exc, self.skip_on)
            if cause is None:
                raise
            self.skipped.add(self.data[idx], cause)
            return _CacheFailure(cause)

    def _transform(self, index: int) -> Any:
        cached = self._cache[index] if 0 <= index < len(self._cache) else None
        if isinstance(cached, _CacheFailure):
            cached.raise_again()
        return super()._transform(index)


def build_dataset(
    records: Sequence[Mapping[str, Any]],
    transform: Any,
    *,
    cache: str = "none",
    cache_dir: str | Path | None = None,
    skipped: SkippedRecords | None = None,
    require: Sequence[str] = ("image",),
    num_workers: int = 0,
    skip_on: tuple[type[BaseException], ...] = (DataError,),
) -> SafeDataset:
    """Check the records, then build a MONAI dataset that skips bad items.

    Args:
        records: manifest records.
        transform: a MONAI ``Compose`` (e.g. ``LoadWorkbenchImaged``,
            ``ValidateImaged``, augmentations).
        cache: ``"none"`` (MONAI ``Dataset``: transforms run every step),
            ``"memory"`` (``CacheDataset``: deterministic transforms once, at
            construction) or ``"disk"`` (:class:`~workbench.data.disk_cache.CheckedPersistentDataset`
            in ``cache_dir``: written atomically, a damaged file is rebuilt).
        cache_dir: the folder for ``cache="disk"``.
        skipped: the run's skip collector (in-memory when ``None``).
        require: fields the task needs (see :func:`check_record`).
        num_workers: threads that build a ``"memory"`` cache.
        skip_on: exception types that mark a bad record (see :class:`SafeDataset`).

    Returns:
        A :class:`SafeDataset` over the records that passed the checks; its
        ``skipped`` attribute holds the collector.

    Raises:
        ConfigError: unknown cache mode, or ``"disk"`` without ``cache_dir``.
    """
    if cache not in CACHE_MODES:
        raise ConfigError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if cache == "disk" and cache_dir is None:
        raise ConfigError("cache='disk' needs a cache_dir")
    skipped = skipped if skipped is not None else SkippedRecords()
    good = []
    for record in records:
        reason = check_record(record, require)
        if reason is None:
            good.append(dict(record))
        else:
            skipped.add(record, reason)
    if cache == "memory":
        dataset: Any = SkippingCacheDataset(good, transform, skipped, skip_on, num_workers=max(num_workers, 1), progress=False)
    elif cache == "disk":
        # hash_transform folds the deterministic transforms' names into the cache keys, so a changed pipeline misses the old cache;
        # the checked variant never trusts a cache file a killed job or a full disk left half-written.
        dataset = CheckedPersistentDataset(good, transform, cache_dir=cache_dir, hash_transform=json_hashing)
    else:
        dataset = Dataset(good, transform)
    return SafeDataset(dataset, skipped, skip_on)


def _stackable(value: Any) -> bool:
    if isinstance(value, Mapping):  # e.g. labels {"nodule": 1, ...} -> {"nodule": tensor(B)}
        return bool(value) and all(_stackable(item) for item in value.values())
    return isinstance(value, (np.ndarray, torch.Tensor, str, bool, int, float, np.number))


def _collatable(values: list[Any]) -> bool:
    if not all(_stackable(value) for value in values):
        return False
    return not isinstance(values[0], Mapping) or all(value.keys() == values[0].keys() for value in values)


def collate_skipping_none(batch: Sequence[Any]) -> Any:
    """Collate a batch with the ``None`` items (skipped records) dropped.

    Dict items: arrays, tensors, numbers, strings and dicts of those (with
    the same keys) are collated by MONAI's ``list_data_collate`` (arrays
    stacked to ``(B, C, H, W)``); other values
    (metadata dicts, ragged ``boxes`` lists, ``None``) stay a list with one
    entry per sample, since stacking them is either impossible or misleading.

    Args:
        batch: the items of one batch; an item may be a list of items (MONAI
            transforms that return several crops per record).

    Returns:
        The collated batch, or ``None`` when every item was skipped.
    """
    items = [item for entry in batch if entry is not None for item in (entry if isinstance(entry, list) else [entry])]
    items = [item for item in items if item is not None]
    if not items:
        return None
    if not isinstance(items[0], Mapping):
        return list_data_collate(items)
    keys = list(items[0])
    stacked = [key for key in keys if all(key in item for item in items) and _collatable([item[key] for item in items])]
    collated = list_data_collate([{key: item[key] for key in stacked} for item in items]) if stacked else {}
    for key in keys:
        if key not in stacked:
            collated[key] = [item.get(key) for item in items]
    return collated


class EpochDataLoader(DataLoader):
    """MONAI ``DataLoader`` whose order and worker seeds depend only on ``(seed, epoch)``.

    Call :meth:`set_epoch` before each epoch (as with ``DistributedSampler``);
    a resumed run that calls ``set_epoch(k)`` gets epoch ``k``'s exact order.
    """

    seed: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` and reseed the worker and transform random states."""
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)
        if self.num_workers == 0:
            # Workers seed their transforms from the generator each epoch; in-process loading
            # was seeded once at construction by MONAI, so reseed it here the same way.
            set_rnd(self.dataset, int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item()))
            self.generator.manual_seed(self.seed + epoch)


def build_loader(
    dataset: Any,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> EpochDataLoader:
    """A MONAI ``DataLoader`` that drops skipped items and shards across ranks.

    Args:
        dataset: usually a :class:`SafeDataset` from :func:`build_dataset`.
        batch_size: items per batch (before skipped items are dropped).
        shuffle: shuffle each epoch (seeded by ``seed + epoch``).
        seed: the run's seed.
        num_workers: loader worker processes.
        drop_last: drop the last incomplete batch (and, distributed, the tail
            that does not split evenly across ranks).
        distributed: shard with ``DistributedSampler`` so ranks see disjoint samples.
        rank: this process's rank (distributed only).
        world_size: the number of ranks (distributed only).

    Returns:
        An :class:`EpochDataLoader`. Its batches are dicts of ``(B, ...)``
        tensors (see :func:`collate_skipping_none`) or ``None`` for an all-bad
        batch, which the caller skips.
    """
    replicas, this_rank = (world_size, rank) if distributed else (1, 0)
    # One sampler type for both cases: its order is a pure function of (seed, epoch), which resume relies on.
    sampler = DistributedSampler(dataset, num_replicas=replicas, rank=this_rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator().manual_seed(seed)
    loader = EpochDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        collate_fn=collate_skipping_none,
        generator=generator,
    )
    loader.seed = seed
    return loader


class ValidateImaged(MapTransform):
    """Dictionary transform: refuse images with NaN/Inf, the wrong channel count or dimensions.

    Args:
        keys: the image keys to check (arrays or tensors shaped ``(C, *spatial)``).
        expected_channels: the required C, or ``None`` for any.
        spatial_ndim: the required number of spatial dimensions (2 for ``(C, H, W)``).
        min_size: the smallest allowed spatial size (an int for every axis, or one per axis).
        allow_missing_keys: skip keys absent from a record.

    Raises:
        ImageReadError: naming the record's file (from ``<key>_meta["source"]``)
            with the expected and actual shape, or the count of bad values.
    """

    def __init__(
        self,
        keys: KeysCollection,
        expected_channels: int | None = None,
        spatial_ndim: int = 2,
        min_size: int | Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.expected_channels = expected_channels
        self.spatial_ndim = spatial_ndim
        self.min_size = None if min_size is None else ([min_size] * spatial_ndim if isinstance(min_size, int) else list(min_size))

    def _source(self, record: Mapping[Hashable, Any], key: Hashable) -> str:
        meta = record.get(f"{key}_meta")
        if isinstance(meta, Mapping) and meta.get("source"):
            return str(meta["source"])
        return str(record.get("image") if isinstance(record.get("image"), str) else record.get("id", "<record>"))

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        """Return ``data`` unchanged when every key's image passes the checks."""
        for key in self.key_iterator(dict(data)):
            value = data[key]
            shape = tuple(int(size) for size in value.shape)
            values = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            expected = f"({self.expected_channels if self.expected_channels else 'C'}, {self.spatial_ndim} spatial dims)"
            if len(shape) != 1 + self.spatial_ndim or (self.expected_channels is not None and shape[0] != self.expected_channels):
                raise ImageReadError(self._source(data, key), f"{key}: expected shape {expected} but got {shape}")
            if self.min_size is not None and any(size < least for size, least in zip(shape[1:], self.min_size)):
                raise ImageReadError(self._source(data, key), f"{key}: spatial size {shape[1:]} is below the minimum {tuple(self.min_size)}")
            if values.is_floating_point() or values.is_complex():
                bad = int((~torch.isfinite(values)).sum())
                if bad:
                    raise ImageReadError(self._source(data, key), f"{key}: {bad} NaN/Inf pixel value(s)")
        return data
