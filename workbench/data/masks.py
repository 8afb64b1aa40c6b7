"""Mask files to one plane of mask values: the one mask reader every plugin shares.

A mask arrives as a grey image (``{0, 1}``, ``{0, 255}``, a label map), as RGB
with three equal channels, or as a *two-colour* image: real annotations are
often palette GIFs or PNGs whose two entries are only nearly black and white,
e.g. ``(4, 2, 4)`` and ``(252, 254, 252)``, which read as RGB with channels
that differ. A two-colour image is a mask: the brighter colour is the
foreground (1), the darker the background (0). The same holds for a grey
image with exactly two values neither of which is 0 (``{4, 252}``), where
``> 0`` would call every pixel foreground.

Anything else with differing channels is a colour image, not a mask, and is
refused naming the file: more than two colours, or two colours that are both
far from grey (a red/green drawing says nothing about which one is the mask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workbench.data.readers import read_image
from workbench.errors import DataError

# A colour is "near grey" when its channels differ by at most this fraction of full scale
# (annotation tools and GIF palettes quantise white to e.g. (252, 254, 252)).
GREY_TOLERANCE = 0.1


def _full_scale(values: np.ndarray) -> float:
    peak = float(np.max(values)) if values.size else 0.0
    return 1.0 if peak <= 1.0 else (255.0 if peak <= 255.0 else 65535.0)


def _two_colour_plane(colours: np.ndarray, inverse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """{0, 1} plane of a one- or two-colour picture: 1 where the brighter colour is."""
    brightness = colours.astype(np.float64).mean(axis=1)
    if len(colours) == 1:
        # One colour used (an empty annotation): foreground only if that colour is on the bright side.
        return np.full(shape, float(brightness[0] > _full_scale(colours) / 2), dtype=np.float32)
    brighter = int(np.argmax(brightness))
    return (inverse.reshape(shape) == brighter).astype(np.float32)


def mask_plane(image: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """The one plane of mask values of an image read from a mask file.

    Args:
        image: ``(1, H, W)``, ``(3, H, W)`` or ``(H, W)`` stored values
            (:func:`~workbench.data.readers.read_image` with ``intensity="stored"``).
        source: the file, named in errors.

    Returns:
        ``(H, W)`` values: the stored values for grey images and equal RGB
        channels; ``{0, 1}`` float32 (1 = the brighter colour) for a
        two-colour image and for a grey image of two non-zero values.

    Raises:
        DataError: a colour image (more than two colours, or two colours
            both far from grey), or an array that is not one 2-D image.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        if array.size and array.dtype.kind in "biuf" and float(array.min()) > 0:
            levels, inverse = np.unique(array, return_inverse=True)
            if levels.size == 2:
                return _two_colour_plane(levels[:, None], inverse, array.shape)
        return array
    if array.ndim != 3 or array.shape[0] != 3:
        raise DataError(source, f"expected a 2-D mask (1, H, W) but got shape {tuple(array.shape)}")
    if np.array_equal(array[0], array[1]) and np.array_equal(array[1], array[2]):
        return mask_plane(array[0], source)
    pixels = array.reshape(3, -1).T
    colours, inverse = np.unique(pixels, axis=0, return_inverse=True)
    if len(colours) > 2:
        raise DataError(source, f"a colour image ({len(colours)} colours in 3 channels that differ), not a mask")
    spread = (colours.max(axis=1) - colours.min(axis=1)).astype(np.float64)
    if not (spread <= GREY_TOLERANCE * _full_scale(colours)).any():
        shown = " and ".join(str(tuple(int(v) if float(v).is_integer() else float(v) for v in colour)) for colour in colours)
        raise DataError(source, f"a colour image (colours {shown}, neither grey), not a mask")
    return _two_colour_plane(colours, inverse.ravel(), array.shape[1:])


def read_mask_values(path: str | Path, *, frame: int | None = None) -> np.ndarray:
    """Read a mask file to ``(H, W)`` mask values (see :func:`mask_plane`), not yet binarised.

    Args:
        path: any file :func:`~workbench.data.readers.read_image` reads.
        frame: the frame of a multi-frame DICOM.

    Returns:
        ``(H, W)`` float32 stored values (``{0, 1}`` for a two-colour image).

    Raises:
        ImageReadError: the file cannot be read.
        DataError: a colour image or not one 2-D image.
    """
    values, _ = read_image(path, intensity="stored", frame=frame)
    return np.asarray(mask_plane(values, path), dtype=np.float32)


def read_binary_mask(path: str | Path, *, frame: int | None = None) -> np.ndarray:
    """Read a mask file as ``(H, W)`` bool: foreground where the mask value is ``> 0``.

    Raises:
        ImageReadError: the file cannot be read.
        DataError: a colour image or not one 2-D image.
    """
    return read_mask_values(path, frame=frame) > 0
