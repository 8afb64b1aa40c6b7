"""Turning stored mask values into boolean vessel masks, and the field of view of a fundus photograph.

A mask file may hold ``{0, 1}``, ``{0, 255}`` (the usual PNG), ``{False, True}``
or a small label map (several vessel classes, e.g. artery/vein labels 1 and 2).
All of these are *binary-like*: every non-zero value is vessel (binarised at
``> 0``); a label map with more than two values is binarised with a logged
warning. A probability map (non-integer values), a photograph (many grey
levels), negative values or NaN/Inf are not masks and raise
:class:`~workbench.errors.DataError`: guessing a threshold for them would
report the topology of a mask nobody made.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage
from skimage.morphology import disk

from workbench.data.masks import mask_plane
from workbench.errors import DataError

logger = logging.getLogger("workbench.vessels")

# A label map has a handful of classes; more distinct integer values means grey levels (a photograph, a JPEG).
MAX_LABEL_VALUES = 64


def binarise_mask(values: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Binarise a binary-like mask at ``> 0``.

    Args:
        values: ``(H, W)`` or ``(D, H, W)`` mask values of any numeric or bool dtype.
        source: the file the values came from, named in errors and warnings.

    Returns:
        A bool array of the same shape, True where ``values > 0``.

    Raises:
        DataError: the values hold NaN/Inf, negative or non-integer values, or more
            than :data:`MAX_LABEL_VALUES` distinct values (not a mask).
    """
    array = np.asarray(values)
    if array.dtype == bool:
        # numpy arrays of PIL mode "1" images hold bool bytes of 255, which crash skimage's skeletonize: normalise.
        return np.ascontiguousarray(array).view(np.uint8) != 0
    if array.dtype.kind not in "biuf":
        raise DataError(source, f"mask values of dtype {array.dtype} are not numbers")
    if array.size == 0:
        raise DataError(source, f"the mask is empty (shape {array.shape})")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(source, "the mask holds NaN or infinite values")
        if not np.array_equal(array, np.floor(array)):
            raise DataError(source, "not a binary-like mask: it holds non-integer values (a probability map? threshold it first)")
    low, high = array.min(), array.max()
    if low < 0:
        raise DataError(source, f"not a binary-like mask: it holds negative values (minimum {low:g})")
    if high <= np.iinfo(np.uint16).max:
        distinct = int(np.count_nonzero(np.bincount(array.astype(np.int64, copy=False).ravel())))
    else:
        distinct = int(np.unique(array).size)
    if distinct > MAX_LABEL_VALUES:
        raise DataError(source, f"not a binary-like mask: {distinct} distinct values (a greyscale image, or a lossy JPEG mask?)")
    if distinct > 2:
        logger.warning("%s: %d distinct values; taken as a label map, every value > 0 counted as vessel", source or "mask", distinct)
    return array > 0


def mask_from_channels(image: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """The one mask plane of a ``(C, H, W)`` array read from a file (the workbench's shared
    :func:`workbench.data.masks.mask_plane`: a two-colour image, e.g. a palette GIF of near-black
    and near-white, gives ``{0, 1}`` with 1 where the brighter colour is).

    Args:
        image: ``(1, H, W)``, ``(3, H, W)`` or ``(H, W)``.
        source: the file, named in errors.

    Returns:
        ``(H, W)`` values (not yet binarised).

    Raises:
        DataError: a colour image (more than two colours, or two non-grey ones) or another layout.
    """
    return mask_plane(image, source)


def fov_from_fundus(image: np.ndarray, threshold: float = 0.06, erosion: int = 3) -> np.ndarray:
    """The camera's field of view in a fundus photograph (for sets such as CHASE_DB1 that ship none).

    The red channel is bright everywhere inside the aperture (even in dark
    vessels) and near zero outside it, so: red above ``threshold`` of full
    scale, holes filled, the largest 8-connected piece kept (JPEG noise
    outside the aperture leaves specks), then eroded by a disc of radius
    ``erosion`` so the dim, blurred rim does not count as retina. The image
    border does not erode: apertures often touch it.

    Args:
        image: ``(H, W, 3)`` or ``(3, H, W)`` RGB; uint8 or values already in [0, 1]
            (16-bit values are scaled by 65535).
        threshold: red level, as a fraction of full scale, above which a pixel is inside.
        erosion: disc radius in pixels taken off the rim.

    Returns:
        ``(H, W)`` bool field-of-view mask.

    Raises:
        DataError: the image is not 3-channel RGB, holds NaN, or has nothing above the threshold.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise DataError(None, f"fov_from_fundus needs an RGB image (H, W, 3) or (3, H, W), got shape {np.asarray(image).shape}")
    red = array[..., 0].astype(np.float32)
    if not np.isfinite(red).all():
        raise DataError(None, "the fundus image holds NaN or infinite values")
    peak = float(red.max())
    scale = 1.0 if peak <= 1.0 else (255.0 if peak <= 255.0 else 65535.0)
    inside = red > threshold * scale
    if not inside.any():
        raise DataError(None, f"no pixel has red above {threshold:g} of full scale: no field of view found")
    inside = ndimage.binary_fill_holes(inside)
    # uint8, not bool: cc3d 4.1.1 mislabels bool 2-D input with 8-connectivity (see topology_metrics.as_label_input).
    inside = cc3d.largest_k(inside.astype(np.uint8), k=1, connectivity=8) > 0
    if erosion > 0:
        inside = ndimage.binary_erosion(inside, structure=disk(erosion).astype(bool), border_value=1)
    return inside
