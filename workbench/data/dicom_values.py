"""DICOM pixel values to display intensities in ``[0, 1]``, and the MONAI reader that applies them.

The value pipeline follows DICOM PS3.4 Annex N (grayscale transforms):
stored values -> Modality LUT (RescaleSlope/Intercept or a Modality LUT
Sequence) -> VOI LUT (WindowCenter/Width, or a VOI LUT Sequence) -> inversion
for MONOCHROME1, so that bright always means dense. The result is divided by
the range the pipeline can produce (known from the header, not from the
pixels), so the same file always maps to the same intensities and an 8-bit
DICOM equals the 8-bit PNG of the same picture.

We use pydicom's own ``apply_modality_lut`` / ``apply_voi_lut`` rather than
MONAI's rescaling: MONAI's ``PydicomReader`` applies only slope/intercept and
ignores LUT sequences, windowing functions (LINEAR_EXACT, SIGMOID), MONOCHROME1
and palette colour. Those transforms run inside a :class:`PydicomReader`
subclass, so the file still goes through MONAI ``LoadImage`` like every other
format.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from monai.data import PydicomReader
from monai.utils import MetaKeys
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from workbench.errors import ImageReadError

logger = logging.getLogger("workbench.data")

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# ImageOrientationPatient, ImagePositionPatient, PixelSpacing and the two SEG geometry
# sequences: what MONAI's pruned metadata keeps to build the affine.
_GEOMETRY_TAGS = (0x00200037, 0x00200032, 0x00280030, 0x52009229, 0x52009230)


def _stored_range(ds: Dataset) -> tuple[float, float]:
    """The range of stored values allowed by BitsStored and PixelRepresentation."""
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """The range of values after the Modality LUT, as pydicom's windowing computes it."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    low, high = _stored_range(ds)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def _has_voi_lut_sequence(ds: Dataset) -> bool:
    sequence = ds.get("VOILUTSequence")
    return bool(sequence) and None not in (sequence[0].get("LUTDescriptor"), sequence[0].get("LUTData"))


def _first_value(value: Any) -> float:
    """WindowCenter/Width may be multi-valued (alternative views); the first one is the default view."""
    if isinstance(value, (MultiValue, list, tuple)):
        return float(value[0])
    return float(value)


def _grayscale_to_unit(pixels: np.ndarray, ds: Dataset, info: dict[str, Any], source: str) -> np.ndarray:
    """Modality LUT, VOI LUT and MONOCHROME1 inversion; returns float64 in [0, 1]."""
    values = apply_modality_lut(pixels, ds)
    low, high = _modality_range(ds)
    info["voi"] = None
    if _has_voi_lut_sequence(ds):
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        info["voi"] = "lut"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = _first_value(ds.WindowCenter), _first_value(ds.WindowWidth)
            values = apply_voi_lut(values, ds, index=0, prefer_lut=False)
            info["voi"] = "window"
            info["window"] = (center, width)
        except (ValueError, TypeError, IndexError) as exc:
            # A broken window is a header defect, not a pixel defect: show the full range and say so.
            logger.warning("%s: VOI window ignored (%s); using the full modality range", source, exc)
            info["voi"] = f"ignored: {exc}"
    if not high > low:
        raise ImageReadError(source, f"degenerate intensity range [{low}, {high}] (check RescaleSlope/BitsStored)")
    unit = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    if info["photometric_interpretation"] == "MONOCHROME1":
        unit = 1.0 - unit
    info["intensity_range"] = (low, high)
    return unit


def dicom_to_array(
    ds: Dataset, *, frame: int | None = None, intensity: str = "unit", source: str = ""
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM dataset's pixels to display intensities in ``[0, 1]`` (or stored values).

    Args:
        ds: a dataset read with ``pydicom.dcmread``.
        frame: the frame to take from a multi-frame dataset. ``None`` refuses
            multi-frame data, since frame 0 of a cine or tomosynthesis series is
            rarely the image one means.
        intensity: ``"unit"`` for the display pipeline scaled to ``[0, 1]``;
            ``"stored"`` for the Modality LUT output only (e.g. Hounsfield
            units, label values), with no window, inversion or scaling.
        source: the file name used in error messages.

    Returns:
        ``(array, info)``: float32 ``(rows, columns)`` for grayscale or
        ``(rows, columns, 3)`` for colour; with ``"unit"`` the values are in
        ``[0, 1]`` (bright = dense); and a dict with ``photometric_interpretation``, ``modality``,
        ``voi``, ``window``, ``intensity_range``, ``frames``, ``spacing``.

    Raises:
        ImageReadError: no pixel data, zero size, multi-frame without ``frame``,
            a compressed transfer syntax no installed decoder handles, or
            pixel data that does not match the header.
    """
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise ImageReadError(source, "the DICOM file has no pixel data")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows == 0 or columns == 0:
        raise ImageReadError(source, f"zero-size image ({rows} rows x {columns} columns)")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1 and frame is None:
        raise ImageReadError(
            source, f"multi-frame DICOM ({frames} frames); choose one with --frame N (frame=N in Python, 0-based)"
        )
    if frame is not None and not 0 <= frame < frames:
        raise ImageReadError(source, f"frame {frame} requested but the file has {frames} frame(s)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    info: dict[str, Any] = {
        "photometric_interpretation": photometric,
        "modality": str(ds.get("Modality")) if ds.get("Modality") else None,
        "frames": frames,
        "window": None,
        "spacing": _pixel_spacing(ds),
    }
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError by plugin
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise ImageReadError(
                source, f"cannot decode compressed transfer syntax {syntax.name} ({syntax}): {exc}"
            ) from exc
        raise ImageReadError(source, f"cannot decode pixel data: {exc}") from exc
    if frames > 1:
        pixels = pixels[frame]
    if intensity == "stored":
        stored = apply_color_lut(pixels, ds) if photometric == "PALETTE COLOR" else apply_modality_lut(pixels, ds)
        return np.asarray(stored, dtype=np.float32), info
    samples = int(ds.get("SamplesPerPixel") or 1)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        unit = rgb.astype(np.float64) / float(2**bits - 1)
        info["intensity_range"] = (0.0, float(2**bits - 1))
    elif samples > 1:
        # pydicom converts YBR_* to RGB when decoding, so colour is RGB here.
        low, high = _stored_range(ds)
        unit = (pixels.astype(np.float64) - low) / (high - low)
        info["intensity_range"] = (low, high)
    elif "PixelData" not in ds:
        # Float pixel data carries no stored-bit range: scale by the image's own extremes.
        values = pixels.astype(np.float64)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
        info["intensity_range"] = (low, high)
    else:
        unit = _grayscale_to_unit(pixels, ds, info, source)
    return np.clip(unit, 0.0, 1.0).astype(np.float32), info


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm from PixelSpacing, else ImagerPixelSpacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) >= 2:
                return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            continue
    return None


class WorkbenchDicomReader(PydicomReader):
    """MONAI ``PydicomReader`` that returns rows-first ``[0, 1]`` intensities.

    ``swap_ij=False`` keeps the array as (rows, columns), the order of the
    pixels in the file and in PIL, where MONAI's default swaps them to match
    NIfTI's (i, j). The pixel values come from :func:`dicom_to_array`.
    One instance reads one file: it keeps that file's ``info`` for the caller.

    Args:
        frame: the frame to read from a multi-frame file; ``None`` refuses them.
        intensity: ``"unit"`` or ``"stored"``, as in :func:`dicom_to_array`.
    """

    def __init__(self, frame: int | None = None, intensity: str = "unit"):
        super().__init__(swap_ij=False, prune_metadata=True)
        self.frame = frame
        self.intensity = intensity
        self.info: dict[str, Any] = {}

    def _get_array_data(self, img: Dataset, filename: Any) -> np.ndarray:  # MONAI's per-file pixel hook
        array, self.info = dicom_to_array(img, frame=self.frame, intensity=self.intensity, source=str(filename))
        return array

    def _get_meta_dict(self, img: Dataset) -> dict:
        # MONAI serialises the whole dataset to JSON (pixel data base64-encoded: a third of the
        # read time) and then keeps only the geometry tags; serialise just those tags.
        geometry = Dataset()
        for tag in _GEOMETRY_TAGS:
            if tag in img:
                geometry.add(img[tag])
        return geometry.to_json_dict(suppress_invalid_tags=True)

    def _get_seg_data(self, img: Dataset, filename: Any) -> tuple[np.ndarray, dict]:
        # MONAI assembles DICOM SEG frames into 3-D label volumes (and fails on single-frame
        # files); a 2-D mask is just its pixel frame, read like any other image.
        array = self._get_array_data(img, filename)
        metadata = self._get_meta_dict(img)
        metadata[MetaKeys.SPATIAL_SHAPE] = array.shape[:2]
        return array, metadata

    def _get_affine(self, metadata: dict, lps_to_ras: bool = True) -> np.ndarray:
        # 2-D work never uses the patient geometry; a malformed ImagePositionPatient must not
        # cost a readable image, so fall back to MONAI's own default (identity).
        try:
            return super()._get_affine(metadata, lps_to_ras)
        except (ValueError, TypeError, KeyError, IndexError):
            return np.eye(4)

    def get_data(self, data: Any) -> tuple[np.ndarray, dict]:
        """MONAI ``get_data``, with colour samples marked as the channel axis (MONAI leaves them spatial)."""
        array, meta = super().get_data(data)
        if array.ndim == 3 and array.shape[-1] in (3, 4):
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = -1
            meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(array.shape[:2])
        return array, meta
