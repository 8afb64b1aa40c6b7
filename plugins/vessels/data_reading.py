"""One vessel record read from disk: image, reference mask, field of view, and the image normalisation.

The same functions prepare a training record (inside the MONAI pipeline of
:mod:`.data`) and an image to predict (:func:`load_inference_item`), so a
stored network always sees inputs made the same way:

- ``image``: read in [0, 1] (grey repeated to RGB), ``(3, H, W)`` float32;
- reference ``label``: ``(1, H, W)`` {0, 1} (a mask that is not binary is
  thresholded at half its maximum, with a warning);
- ``fov``: read from the record's file, or derived from the image
  (red-channel threshold, :func:`~.topology_masks.fov_from_fundus`);
- normalisation ``"fov"``: per channel, zero mean and unit variance
  over the FOV, 0 outside it; ``"fov-extend"`` (the training default): the same statistics, and
  outside the FOV each pixel takes the value of the nearest FOV pixel, so the
  network never sees the bright-to-dark step at the FOV rim (the border
  extension of Soares et al., IEEE TMI 2006); ``"image"``: MONAI ``NormalizeIntensity``
  channel-wise over the whole image (what a MONAI bundle can repeat without
  the workbench).
"""

from __future__ import annotations

import logging
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.transforms import MapTransform, NormalizeIntensity

from workbench.data.readers import read_image
from workbench.errors import ConfigError, DataError
from workbench.model_records import Preprocessing
from workbench_plugins.vessels.topology.masks import MAX_LABEL_VALUES, binarise_mask, fov_from_fundus, mask_from_channels

logger = logging.getLogger("workbench.vessels")

NORMALISATIONS = ("fov", "fov-extend", "image")
DEFAULT_NORMALISATION = "fov-extend"


def label_from_mask_file(values: np.ndarray, source: str) -> np.ndarray:
    """The ``(H, W)`` bool vessel mask from a mask file's stored values.

    Binary-like values ({0, 1}, {0, 255}, a label map of small integers) go through
    :func:`~.topology_masks.binarise_mask` (vessel where > 0). Other values (a lossy
    JPEG mask, a soft mask in [0, 1]) are thresholded at half their maximum with a
    warning: a reference is still usable for training, unlike a prediction checked for topology.

    Args:
        values: ``(1, H, W)``, ``(3, H, W)`` with equal channels, or ``(H, W)`` stored values.
        source: the file, named in warnings and errors.

    Returns:
        ``(H, W)`` bool.

    Raises:
        DataError: a colour image, NaN/Inf or negative values.
    """
    plane = mask_from_channels(values, source)
    if not np.isfinite(plane).all() or float(plane.min()) < 0:
        return binarise_mask(plane, source)  # raises, naming the problem
    high = float(plane.max())
    # binarise_mask reads a few integer levels as a label map (artery 1, vein 2: all vessel); levels above the label range
    # or fractions are a lossy or soft mask, where "> 0" would count the JPEG noise around every vessel as vessel.
    if high > MAX_LABEL_VALUES or not np.array_equal(plane, np.floor(plane)):
        levels = np.unique(plane)
        if levels.size > 2:
            logger.warning("%s: the mask is not binary (%d distinct values); thresholded at half its maximum (> %g)",
                           source, int(levels.size), high / 2.0)
            return plane > high / 2.0
    return binarise_mask(plane, source)


def _check_size(array: np.ndarray, shape: tuple[int, ...], image_path: Any, other_path: Any) -> None:
    if tuple(array.shape[-2:]) != shape:
        raise DataError(other_path, f"size {array.shape[-2]}x{array.shape[-1]} (HxW) differs from the image {image_path} "
                                    f"({shape[0]}x{shape[1]})")


def field_of_view(image: np.ndarray, fov_path: Any, image_path: Any, fallback: bool = False) -> np.ndarray:
    """The ``(H, W)`` bool field of view: read from ``fov_path``, or derived from the ``(3, H, W)`` image.

    Args:
        image: ``(3, H, W)`` RGB in [0, 1].
        fov_path: a mask file, or ``None`` to derive it.
        image_path: the image file, named in errors.
        fallback: when no FOV can be derived (not a fundus photograph), take the whole image with a
            warning instead of raising (for predicting on any image).

    Raises:
        DataError: an unreadable or mismatched FOV file, or an empty FOV (without ``fallback``).
    """
    shape = tuple(image.shape[-2:])
    if fov_path:
        fov = binarise_mask(mask_from_channels(read_image(fov_path, intensity="stored")[0], str(fov_path)), str(fov_path))
        _check_size(fov, shape, image_path, fov_path)
    else:
        try:
            fov = fov_from_fundus(image)
        except DataError as error:
            if not fallback:
                raise DataError(image_path, f"field of view: {error.reason}") from error
            logger.warning("%s: no field of view found (%s); the whole image is used", image_path, error.reason)
            fov = np.ones(shape, dtype=bool)
    if not fov.any():
        if not fallback:
            raise DataError(fov_path or image_path, "the field of view is empty")
        fov = np.ones(shape, dtype=bool)
    return fov


def normalise_image(image: np.ndarray, fov: np.ndarray, mode: str = "fov", eps: float = 1e-6) -> np.ndarray:
    """Per-image, per-channel intensity normalisation.

    MONAI's ``NormalizeIntensity`` can restrict its statistics only to non-zero
    pixels, and the dark rim of a fundus JPEG is not exactly zero, so for
    ``"fov"`` we take them over the FOV mask ourselves; ``"image"`` is MONAI's
    transform as it is.

    Args:
        image: ``(C, H, W)`` float.
        fov: ``(H, W)`` bool.
        mode: ``"fov"`` (statistics over the FOV, 0 outside it), ``"fov-extend"`` (statistics over the FOV,
            the nearest FOV pixel's value outside it) or ``"image"`` (whole image).
        eps: the smallest standard deviation divided by.

    Returns:
        ``(C, H, W)`` float32.

    Raises:
        ConfigError: an unknown mode.
    """
    if mode == "image":
        return np.asarray(NormalizeIntensity(channel_wise=True)(np.asarray(image, dtype=np.float32)), dtype=np.float32)
    if mode not in ("fov", "fov-extend"):
        raise ConfigError(f"vessel image normalisation must be one of {NORMALISATIONS}, got {mode!r}")
    values = np.asarray(image, dtype=np.float32)[:, fov]
    mean, std = values.mean(axis=1), values.std(axis=1)
    normalised = ((image - mean[:, None, None]) / np.maximum(std, eps)[:, None, None]).astype(np.float32)
    if mode == "fov" or fov.all():
        return np.where(fov[None], normalised, 0.0).astype(np.float32)
    return extend_beyond_fov(normalised, fov)


def extend_beyond_fov(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Give every pixel outside the field of view the value of its nearest FOV pixel.

    Args:
        image: ``(C, H, W)`` float.
        fov: ``(H, W)`` bool, not empty.

    Returns:
        ``(C, H, W)`` float32, equal to ``image`` inside the FOV.
    """
    from scipy.ndimage import distance_transform_edt

    rows, columns = distance_transform_edt(~fov, return_distances=False, return_indices=True)
    return np.ascontiguousarray(image[:, rows, columns], dtype=np.float32)


def read_vessel_record(record: Mapping[str, Any], with_reference: bool = True, fov_fallback: bool = False) -> dict[str, Any]:
    """Read a record's image, reference mask and field of view, checking that their sizes agree.

    Args:
        record: ``image`` path; ``mask`` (optional) and ``fov`` (a path, or ``None`` to derive it); ``frame``
            (optional): the frame of a multi-frame DICOM image.
        with_reference: read ``mask`` when the record has one.
        fov_fallback: see :func:`field_of_view`.

    Returns:
        ``{"image": (3, H, W) float32 in [0, 1], "label": (1, H, W) float32 {0, 1} (when read),
        "fov": (1, H, W) float32 {0, 1}, "meta": read_image's metadata of the image}``.

    Raises:
        DataError: an unreadable file, a colour or NaN mask, no field of view, or sizes that differ (naming both files).
    """
    image_path, mask_path = record["image"], record.get("mask") if with_reference else None
    image, meta = read_image(image_path, frame=record.get("frame"))
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    shape = tuple(image.shape[1:])
    read: dict[str, Any] = {"image": np.ascontiguousarray(image, dtype=np.float32), "meta": meta}
    if mask_path:
        label = label_from_mask_file(read_image(mask_path, intensity="stored")[0], str(mask_path))
        _check_size(label, shape, image_path, mask_path)
        read["label"] = label[None].astype(np.float32)
    read["fov"] = field_of_view(image, record.get("fov"), image_path, fov_fallback)[None].astype(np.float32)
    return read


class LoadVesselRecordd(MapTransform):
    """Dictionary transform: :func:`read_vessel_record`, then the image normalised (:func:`normalise_image`).

    Replaces the record's ``image``/``mask``/``fov`` paths by ``image`` ``(3, H, W)``, ``label`` and ``fov``
    ``(1, H, W)`` arrays; keeps the paths as ``image_path``, ``mask_path``, ``fov_path`` and the size as
    ``spatial_shape`` ``(H, W)``.

    Args:
        normalisation: one of :data:`NORMALISATIONS`.
    """

    def __init__(self, normalisation: str = DEFAULT_NORMALISATION):
        super().__init__(keys=("image",))
        if normalisation not in NORMALISATIONS:
            raise ConfigError(f"vessel image normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        self.normalisation = normalisation

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with the arrays in place of the paths."""
        record = dict(data)
        read = read_vessel_record(record)
        paths = {f"{key}_path": str(record[key]) if record.get(key) else None for key in ("image", "mask", "fov")}
        for key in ("image", "mask", "fov"):
            record.pop(key, None)
        record.update(paths, image=normalise_image(read["image"], read["fov"][0] > 0.5, self.normalisation), fov=read["fov"],
                      spatial_shape=np.asarray(read["image"].shape[1:], dtype=np.int64))
        if "label" in read:
            record["label"] = read["label"]
        return record


def load_inference_item(record: Mapping[str, Any], with_reference: bool = True, normalisation: str = DEFAULT_NORMALISATION) -> dict[str, Any]:
    """One full image prepared for :func:`~.inference.predict_probabilities`, with what scoring and outputs need.

    A record without a FOV file gets the derived FOV; an image where none can be derived (not a fundus
    photograph) uses the whole image, with a warning.

    Args:
        record: ``image`` path; optional ``mask`` (reference) and ``fov`` paths.
        with_reference: read the reference mask when the record has one.
        normalisation: one of :data:`NORMALISATIONS`, as the network was trained.

    Returns:
        ``{"image": (3, H, W) float32 tensor (normalised), "display": (3, H, W) float32 picture in [0, 1] (as read),
        "reference": (H, W) bool or None, "fov": (H, W) bool, "meta": the image's read_image metadata}``.

    Raises:
        DataError: an unreadable file, a bad mask, or sizes that differ.
    """
    read = read_vessel_record(record, with_reference=with_reference, fov_fallback=True)
    fov = read["fov"][0] > 0.5
    return {"image": torch.from_numpy(normalise_image(read["image"], fov, normalisation)), "display": read["image"],
            "reference": read["label"][0] > 0.5 if "label" in read else None, "fov": fov, "meta": read["meta"]}


def inference_preprocessing(network: torch.nn.Module | None = None, roi_size: int | None = None, normalisation: str = DEFAULT_NORMALISATION) -> Preprocessing:
    """The stored description of how a vessel network's inputs are made (for the model registry and bundles).

    Args:
        network: the network (its ``size_divisor`` attribute, when it has one, is recorded).
        roi_size: the sliding-window side the network is run with (``image_size``; default 96).
        normalisation: one of :data:`NORMALISATIONS` (see the module docstring).

    Returns:
        ``Preprocessing(image_size=roi_size, channels=3, intensity="zscore", extra={"channel_wise": True,
        "normalisation": ..., "fov": ...})``; ``extra["normalisation"] == "fov"`` means statistics over the
        field of view (read, or red channel > 6 % of full scale, holes filled, largest piece, eroded 3 px), 0 outside.
    """
    if normalisation not in NORMALISATIONS:
        raise ConfigError(f"vessel image normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    extra: dict[str, Any] = {"channel_wise": True, "normalisation": normalisation, "reads": "RGB in [0, 1], grey repeated"}
    if normalisation in ("fov", "fov-extend"):
        outside = 0.0 if normalisation == "fov" else "nearest FOV pixel"
        extra["fov"] = {"source": "the record's fov file, else derived", "red_threshold": 0.06, "erosion": 3, "outside": outside}
    divisor = getattr(network, "size_divisor", None)
    if isinstance(divisor, int):
        extra["size_divisor"] = divisor
    return Preprocessing(image_size=int(roi_size or 96), channels=3, intensity="zscore", extra=extra)
