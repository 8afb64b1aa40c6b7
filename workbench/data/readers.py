"""Read any supported image file to a rows-first float32 array, through MONAI ``LoadImage``.

Formats and readers:

- DICOM (``.dcm``, ``.dicom``, or any file with the ``DICM`` preamble): MONAI
  ``PydicomReader`` subclass :class:`~workbench.data.dicom_values.WorkbenchDicomReader`
  (Modality LUT, VOI window, MONOCHROME1 inverted, scaled to ``[0, 1]``).
- NIfTI (``.nii``, ``.nii.gz``): MONAI ``NibabelReader``.
- PNG, JPEG, TIFF, GIF, BMP, PPM: MONAI ``PILReader``.

Orientation: MONAI's 2-D readers follow NIfTI's (i, j) indexing, so by default
both ``PILReader`` and ``PydicomReader`` return (columns, rows), the picture
transposed. We turn that off (``reverse_indexing=False``, ``swap_ij=False``):
every array here is ``(C, H, W)`` with H the image rows from top to bottom and
W the columns from left to right, so a PNG and a DICOM of the same picture give
the same array. NIfTI has no rows; its array is returned in stored index order
(i, j), so a file written with ``nib.Nifti1Image(array_hw, affine)`` reads back
as ``array_hw``.

Intensities (``intensity="unit"``, the default): DICOM as described in
:mod:`workbench.data.dicom_values`; 8-bit and 16-bit PIL images divided by
255 or 65535; float images (TIFF mode F) and NIfTI as stored (physical
values). ``intensity="stored"`` returns stored values for every format (use it
for label maps and masks).

Multi-frame files: DICOM is refused unless ``frame`` is given; GIF and TIFF
give their first frame (``meta["frames"]`` says how many there were).
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.data import NibabelReader, PILReader
from monai.transforms import LoadImage, MapTransform
from PIL import Image

from workbench.data.dicom_values import WorkbenchDicomReader
from workbench.errors import ImageReadError

SUFFIX_FORMATS: dict[str, str] = {
    ".dcm": "dicom",
    ".dicom": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".gif": "gif",
    ".bmp": "bmp",
    ".ppm": "ppm",
}
INTENSITY_MODES = ("unit", "stored")

# PIL modes folded onto the few the workbench handles: gray, 16-bit gray, int/float gray, RGB.
_PIL_MODE_TARGET = {"1": "L", "LA": "L", "La": "L", "RGBA": "RGB", "RGBa": "RGB", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_PIL_UNIT_SCALE = {"L": 255.0, "RGB": 255.0, "I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0}

_loader_lock = threading.Lock()
_shared_loader: LoadImage | None = None


def _load_image() -> LoadImage:
    """One ``LoadImage`` per process: building it instantiates every MONAI reader, which is slow.

    It is safe to share because each call passes its own reader instance (the
    readers keep per-file state, the ``LoadImage`` does not).
    """
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            # Building it tries MONAI's GPU DICOM decoder, which logs a warning on every machine without one.
            nvimgcodec_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
            level = nvimgcodec_logger.level
            nvimgcodec_logger.setLevel(logging.ERROR)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _shared_loader = LoadImage(image_only=False, dtype=np.float32, ensure_channel_first=True)
            finally:
                nvimgcodec_logger.setLevel(level)
        return _shared_loader


def _has_dicom_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def image_format(path: str | Path) -> str:
    """The format name of ``path`` ("dicom", "nifti", "png", ...) by extension or DICOM preamble.

    Raises:
        ImageReadError: the file is missing, or its kind is not supported.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a regular file")
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    found = SUFFIX_FORMATS.get(path.suffix.lower())
    if found is not None:
        return found
    try:
        if _has_dicom_preamble(path):
            return "dicom"
    except OSError as exc:
        raise ImageReadError(path, f"cannot open: {exc}") from exc
    shown = path.suffix or "(no extension, no DICM preamble)"
    raise ImageReadError(path, f"unsupported file type {shown}; supported: {', '.join(sorted(SUFFIX_FORMATS))} or DICOM")


class _PilConverter:
    """MONAI ``PILReader`` converter: decode now (so truncation is caught here), fold the mode
    onto gray or RGB, and note what MONAI's PIL metadata leaves out (frames, resolution)."""

    def __init__(self) -> None:
        self.frames = 1
        self.spacing: tuple[float, float] | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        image.load()
        self.frames = int(getattr(image, "n_frames", 1))
        dpi = image.info.get("dpi")
        if isinstance(dpi, tuple) and len(dpi) == 2 and all(float(value) > 1 for value in dpi):
            self.spacing = (25.4 / float(dpi[1]), 25.4 / float(dpi[0]))  # (row, column) mm from (x, y) dpi
        mode = image.mode
        if mode in ("P", "PA"):
            rgb = image.convert("RGB")
            channels = np.asarray(rgb)
            # GIFs store gray pictures as palettes; a gray palette must give one channel, not three.
            gray = bool((channels[..., 0] == channels[..., 1]).all() and (channels[..., 1] == channels[..., 2]).all())
            return rgb.convert("L") if gray else rgb
        target = _PIL_MODE_TARGET.get(mode)
        return image.convert(target) if target else image


def _pil_unit_scale(mode: str, file_format: str) -> float | None:
    if mode == "I" and file_format == "png":  # Pillow may open 16-bit PNGs as 32-bit "I"
        return 65535.0
    return _PIL_UNIT_SCALE.get(mode)


def _reader_for(file_format: str, frame: int | None, intensity: str) -> Any:
    if file_format == "dicom":
        return WorkbenchDicomReader(frame=frame, intensity=intensity)
    if file_format == "nifti":
        return NibabelReader(squeeze_non_spatial_dims=True)
    return PILReader(converter=_PilConverter(), reverse_indexing=False)


def _to_channel_first_2d(array: np.ndarray, file_format: str, path: Path) -> np.ndarray:
    """Check the (C, H, W) layout; a NIfTI with trailing singleton spatial axes becomes 2-D."""
    if file_format == "nifti":
        while array.ndim > 3 and array.shape[-1] == 1:
            array = array[..., 0]
    if array.ndim != 3:
        raise ImageReadError(path, f"expected a 2-D image (C, H, W) but got an array of shape {tuple(array.shape)}")
    if array.shape[0] not in (1, 3):
        raise ImageReadError(path, f"expected 1 or 3 channels but got shape {tuple(array.shape)} (C, H, W)")
    return array


def _metadata(path: Path, file_format: str, reader: Any, raw_meta: Mapping, array: np.ndarray) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "source": str(path),
        "format": file_format,
        "shape": tuple(int(size) for size in array.shape),
        "spacing": None,
        "modality": None,
        "photometric_interpretation": "RGB" if array.shape[0] == 3 else "MONOCHROME2",
        "frames": 1,
    }
    if file_format == "dicom":
        info = dict(reader.info)
        meta.update({key: info.pop(key) for key in ("spacing", "modality", "photometric_interpretation", "frames")})
        meta.update(info)
    elif file_format == "nifti":
        pixdim = np.asarray(raw_meta.get("pixdim", []), dtype=float)
        meta["spacing"] = tuple(float(value) for value in pixdim[1:3]) if pixdim.size >= 3 else None
    else:
        meta.update(mode=raw_meta.get("mode"), frames=reader.converter.frames, spacing=reader.converter.spacing)
    return meta


def read_image(
    path: str | Path,
    *,
    ensure_channel_first: bool = True,
    intensity: str = "unit",
    frame: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one 2-D image file through MONAI ``LoadImage``.

    Args:
        path: a DICOM, NIfTI, PNG, JPEG, TIFF, GIF, BMP or PPM file.
        ensure_channel_first: ``True`` gives ``(C, H, W)``; ``False`` gives
            ``(H, W)`` for one channel and ``(H, W, C)`` for colour.
        intensity: ``"unit"`` (display intensities, ``[0, 1]`` for DICOM and
            8/16-bit images) or ``"stored"`` (file values, for label maps);
            see the module docstring.
        frame: which frame of a multi-frame DICOM to read (others refuse it).

    Returns:
        ``(array, meta)``: float32 ``(C, H, W)``, C = 1 (gray) or 3 (RGB), H
        the rows top to bottom, W the columns; and a dict with ``source``,
        ``format``, ``original_shape`` (as stored, channel last), ``shape``,
        ``spacing`` (row, column in mm, or ``None``), ``modality``,
        ``photometric_interpretation``, ``frames`` and, for DICOM, ``window``,
        ``voi`` and ``intensity_range``.

    Raises:
        ImageReadError: missing file, unsupported extension, corrupt or
            truncated file, no pixel data, undecodable compression, zero size,
            NaN/Inf pixels, or not a 2-D image. No other exception escapes.
    """
    path = Path(path)
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    file_format = image_format(path)
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    reader = _reader_for(file_format, frame, intensity)
    try:
        with warnings.catch_warnings():
            # MONAI warns about missing patient geometry on every plain 2-D DICOM; it does not apply here.
            warnings.simplefilter("ignore")
            loaded, raw_meta = _load_image()(path, reader=reader)
    except ImageReadError:
        raise
    except Exception as exc:  # the reader libraries raise anything from OSError to struct.error on bad bytes
        raise ImageReadError(path, f"cannot read {file_format} file: {type(exc).__name__}: {exc}") from exc
    array = _to_channel_first_2d(np.ascontiguousarray(loaded.as_tensor().numpy(), dtype=np.float32), file_format, path)
    if array.size == 0:
        raise ImageReadError(path, f"zero-size image of shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise ImageReadError(path, f"{bad} NaN/Inf pixel value(s)")
    if intensity == "unit" and file_format not in ("dicom", "nifti"):
        scale = _pil_unit_scale(str(raw_meta.get("mode")), file_format)
        if scale is not None:
            array = array / np.float32(scale)
    meta = _metadata(path, file_format, reader, raw_meta, array)
    meta["original_shape"] = tuple(meta["shape"][1:]) + ((meta["shape"][0],) if meta["shape"][0] > 1 else ())
    if not ensure_channel_first:
        array = array[0] if array.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(array, 0, -1))
    return array, meta


class LoadWorkbenchImaged(MapTransform):
    """Dictionary transform: read the file named under each key with :func:`read_image`.

    Stores the ``(C, H, W)`` float32 array under the key and the metadata dict
    under ``"<key>_meta"``.

    Args:
        keys: the record keys holding file paths (e.g. ``"image"``, ``"mask"``).
        allow_missing_keys: skip keys absent from a record instead of failing.
        intensity: ``"unit"`` or ``"stored"`` (see :func:`read_image`); a
            sequence gives one mode per key (e.g. ``("unit", "stored")`` for
            an image and its label map).

    Raises:
        ImageReadError: from :func:`read_image`, naming the file.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, intensity: str | Sequence[str] = "unit"):
        super().__init__(keys, allow_missing_keys)
        modes = [intensity] * len(self.keys) if isinstance(intensity, str) else list(intensity)
        if len(modes) != len(self.keys) or any(mode not in INTENSITY_MODES for mode in modes):
            raise ValueError(f"intensity must be one of {INTENSITY_MODES} or one per key, got {intensity!r}")
        self.intensity = dict(zip(self.keys, modes))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with each key's path replaced by its ``(C, H, W)`` array."""
        record = dict(data)
        for key in self.key_iterator(record):
            array, meta = read_image(record[key], intensity=self.intensity[key])
            record[key] = array
            record[f"{key}_meta"] = meta
        return record
