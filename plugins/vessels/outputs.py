"""Vessel mask outputs: probability and mask PNGs, a NIfTI mask in the source's geometry, and DICOM SEG.

Orientation: every array here is ``(H, W)`` rows-first, as
:func:`workbench.data.readers.read_image` returns images. The NIfTI mask is
written so that ``nibabel.load(path).get_fdata()`` gives back that ``(H, W)``
array (with a trailing axis of size 1 for DICOM sources and NIfTI sources that
had one):

- NIfTI source: its spatial shape, affine and header (qform/sform codes, units) are kept.
- DICOM source: the affine is built from ImagePositionPatient,
  ImageOrientationPatient and PixelSpacing (PS3.3 C.7.6.2.1.1), converted from
  DICOM's LPS to NIfTI's RAS; array index ``i`` runs down the rows and ``j``
  along the columns. Without patient geometry: a diagonal of the pixel spacing.
- PNG, JPEG, TIFF, ...: the identity affine (pixel units).

The DICOM SEG (highdicom, BINARY, one segment) is made only for DICOM sources.
Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import gzip
import io
import logging
import re
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from workbench.data.readers import image_format
from workbench.errors import DataError
from workbench.fsutil import atomic_write_bytes

logger = logging.getLogger("workbench.vessels")

# Segment label, and the anatomic region (SNOMED CT) it lies in, by vessel kind.
VESSEL_SEGMENTS: dict[str, tuple[str, Any]] = {
    "retinal": ("Retinal vessel", codes.SCT.Retina),
    "blood": ("Blood vessel", None),
}
# Type 1 attributes a SEG copies from its source: without them there is no valid SEG to make.
SEG_REQUIRED_SOURCE_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns")
# Type 2 patient/study attributes (present, may be empty). Exported and anonymised files often drop them;
# highdicom reads them unconditionally, so a missing one is copied over as empty, which is what DICOM allows.
SEG_TYPE2_SOURCE_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                               "AccessionNumber", "ReferringPhysicianName")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MASK_FORMATS = ("nifti", "dicom-seg")


def _software_version() -> str:
    try:
        return package_metadata.version("medvl-workbench")
    except package_metadata.PackageNotFoundError:
        return "0"


def check_probability(probability: np.ndarray, threshold: float, source: str | Path, shape: tuple[int, int] | None) -> np.ndarray:
    """Validate a vessel probability map and return it as float32 ``(H, W)``.

    Args:
        probability: ``(H, W)`` (or ``(1, H, W)``) values in ``[0, 1]``.
        threshold: the vessel threshold, in ``(0, 1]``.
        source: the image the map was computed from (named in errors).
        shape: the source's ``(H, W)``, or None not to check it.

    Raises:
        DataError: wrong shape, NaN/Inf values, values outside ``[0, 1]``, or a bad threshold.
    """
    values = np.asarray(probability, dtype=np.float32)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise DataError(source, f"the probability map must be (H, W), got shape {tuple(np.shape(probability))}")
    if shape is not None and tuple(values.shape) != tuple(shape):
        raise DataError(source, f"the probability map is {tuple(values.shape)} but the source image is {tuple(shape)} (H, W)")
    finite = np.isfinite(values)
    if not finite.all():
        raise DataError(source, f"the probability map has {int(values.size - finite.sum())} NaN/Inf value(s)")
    if values.size and (float(values.min()) < -1e-6 or float(values.max()) > 1 + 1e-6):
        raise DataError(source, f"probabilities must lie in [0, 1], got [{float(values.min()):.4g}, {float(values.max()):.4g}]")
    if not 0.0 < float(threshold) <= 1.0:
        raise DataError(source, f"threshold must be in (0, 1], got {threshold}")
    return np.clip(values, 0.0, 1.0)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def read_dicom_header(path: str | Path) -> Dataset:
    """Read a DICOM file's attributes (no pixel data).

    Raises:
        DataError: the file is missing or pydicom cannot parse it (the message names the file).
    """
    try:
        dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error, ValueError... on bad bytes
        raise DataError(path, f"cannot read the DICOM source: {type(exc).__name__}: {exc}") from exc
    # pydicom stops quietly at a truncated or garbled element and returns what it had read.
    if "Rows" not in dataset or "Columns" not in dataset:
        raise DataError(path, "the DICOM source has no Rows/Columns: not an image, or a truncated or malformed file")
    return dataset


def _float_list(dataset: Dataset, keyword: str, count: int) -> list[float] | None:
    value = dataset.get(keyword)
    try:
        numbers = [float(item) for item in value] if value is not None else []
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count and all(np.isfinite(numbers)) else None


def dicom_affine(dataset: Dataset) -> tuple[np.ndarray, bool]:
    """The RAS affine of a 2-D DICOM image indexed ``(row, column, 0)``.

    Written here rather than taken from MONAI's ``PydicomReader`` because that
    reader swaps the axes to (column, row) and drops the slice normal; the
    workbench indexes rows first.

    Returns:
        ``(affine (4, 4), has_patient_geometry)``; without ImagePositionPatient
        and ImageOrientationPatient, a diagonal of the pixel spacing (1 mm when
        unknown) and ``False``.
    """
    spacing = _float_list(dataset, "PixelSpacing", 2) or _float_list(dataset, "ImagerPixelSpacing", 2) or [1.0, 1.0]
    thickness = _float_list(dataset, "SliceThickness", 1)
    orientation = _float_list(dataset, "ImageOrientationPatient", 6)
    position = _float_list(dataset, "ImagePositionPatient", 3)
    if orientation is None or position is None:
        return np.diag([spacing[0], spacing[1], 1.0, 1.0]), False
    along_row, along_column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(along_row, along_column)
    affine = np.eye(4)
    affine[:3, 0] = along_column * spacing[0]  # index i: down the rows, one row spacing per step
    affine[:3, 1] = along_row * spacing[1]  # index j: along a row, one column spacing per step
    affine[:3, 2] = normal * (thickness[0] if thickness and thickness[0] > 0 else 1.0)
    affine[:3, 3] = position
    return LPS_TO_RAS @ affine, True


def mask_nifti_image(mask: np.ndarray, source_path: str | Path, source_format: str) -> nib.Nifti1Image:
    """A uint8 NIfTI image of ``mask`` in the source image's geometry (see the module docstring).

    Args:
        mask: ``(H, W)`` 0/1 array, rows-first as ``read_image`` gives the source.
        source_path: the source image file.
        source_format: ``read_image``'s ``meta["format"]`` ("nifti", "dicom", "png", ...).

    Returns:
        The image; its array reads back as ``mask`` (``(H, W)``, or ``(H, W, 1)``
        for DICOM and for NIfTI sources stored with trailing axes of size 1).

    Raises:
        DataError: the source cannot be read, or its shape does not hold ``mask``.
    """
    values = np.asarray(mask, dtype=np.uint8)
    if source_format == "nifti":
        try:
            source = nib.load(str(source_path))
        except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError... on bad files
            raise DataError(source_path, f"cannot read the NIfTI source header: {type(exc).__name__}: {exc}") from exc
        shape = tuple(int(size) for size in source.shape)
        if shape[:2] != values.shape or int(np.prod(shape[2:], dtype=np.int64)) != 1:
            raise DataError(source_path, f"the NIfTI source has shape {shape}, which does not hold a {values.shape} mask")
        header = source.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
        return nib.Nifti1Image(values.reshape(shape), source.affine, header=header)
    if source_format == "dicom":
        affine, has_geometry = dicom_affine(read_dicom_header(source_path))
        image = nib.Nifti1Image(values[:, :, None], affine)
        code = 1 if has_geometry else 2  # 1: scanner coordinates; 2: aligned to something other than a scanner
    else:
        image = nib.Nifti1Image(values, np.eye(4))
        code = 2
    image.set_sform(image.affine, code=code)
    image.set_qform(image.affine, code=code)
    image.header.set_xyzt_units("mm" if source_format == "dicom" else "unknown")
    return image


def _seg_source(path: str | Path) -> tuple[Dataset, list[str]]:
    """The source header prepared for highdicom, and the Type 2 attributes filled in as empty."""
    source = read_dicom_header(path)
    missing = [keyword for keyword in SEG_REQUIRED_SOURCE_ATTRIBUTES if keyword not in source or source[keyword].value in (None, "")]
    if missing:
        raise DataError(path, f"cannot make a DICOM SEG: the source lacks the required attribute(s) {', '.join(missing)}")
    frames = int(source.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DataError(path, f"cannot make a DICOM SEG for one frame of a {frames}-frame source; only single-frame sources are supported")
    filled = [keyword for keyword in SEG_TYPE2_SOURCE_ATTRIBUTES if keyword not in source]
    for keyword in filled:
        setattr(source, keyword, "")
    return source, filled


def dicom_seg(mask: np.ndarray, source_path: str | Path, *, vessel_kind: str = "retinal", threshold: float = 0.5) -> hd.seg.Segmentation:
    """A BINARY DICOM Segmentation of ``mask`` referencing the DICOM source image.

    One segment: "Retinal vessel" (region: retina) or "Blood vessel", property
    category Anatomical Structure (SCT 91723000), property type Blood Vessel
    (SCT 59820001), algorithm type AUTOMATIC, family Artificial Intelligence.

    Args:
        mask: ``(rows, columns)`` 0/1 array, rows-first like the source's pixel data.
        source_path: the single-frame DICOM source.
        vessel_kind: a key of :data:`VESSEL_SEGMENTS`.
        threshold: the probability threshold the mask was made with (recorded in the description).

    Returns:
        The highdicom dataset (not yet written).

    Raises:
        DataError: unreadable source, a missing required attribute (named), a
            multi-frame source, a size mismatch, or highdicom refusing the source.
    """
    if vessel_kind not in VESSEL_SEGMENTS:
        raise ValueError(f"vessel_kind must be one of {sorted(VESSEL_SEGMENTS)}, got {vessel_kind!r}")
    source, filled = _seg_source(source_path)
    if filled:
        logger.info("%s: empty %s copied into the DICOM SEG (absent from the source)", source_path, ", ".join(filled))
    values = np.asarray(mask).astype(bool)
    if values.shape != (int(source.Rows), int(source.Columns)):
        raise DataError(source_path, f"the mask is {values.shape} but the DICOM source has {int(source.Rows)} rows x {int(source.Columns)} columns")
    label, region = VESSEL_SEGMENTS[vessel_kind]
    version = _software_version()
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.BloodVessel, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="medvl-workbench vessels", version=version,
                                                                    family=codes.cid7162.ArtificialIntelligence),
        anatomic_regions=[region] if region is not None else None,
    )
    pixel_measures = None
    spacing = _float_list(source, "PixelSpacing", 2)
    if spacing is not None and _float_list(source, "SliceThickness", 1) is None:
        # highdicom copies PixelSpacing without a SliceThickness, then cannot read its own SEG back
        # (and refuses patient-geometry sources outright); a 2-D image has no thickness, 1 mm is recorded.
        pixel_measures = hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=1.0)
    try:
        return hd.seg.Segmentation(
            source_images=[source], pixel_array=values, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment], series_instance_uid=generate_uid(), series_number=900,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="medvl-workbench",
            manufacturer_model_name="vessels", software_versions=version, device_serial_number="0",
            content_label="VESSELS", content_description=f"{label} mask, probability > {threshold:g}",
            pixel_measures=pixel_measures,
        )
    except AttributeError as exc:
        # highdicom reads what it needs with plain attribute access; name the attribute, not the traceback.
        found = re.search(r"has no attribute '([^']+)'", str(exc))
        missing = found.group(1) if found else str(exc)
        raise DataError(source_path, f"cannot make a DICOM SEG: the source lacks attribute {missing}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(source_path, f"cannot make a DICOM SEG from this source: {exc}") from exc


def write_mask_outputs(
    out_dir: str | Path,
    stem: str,
    probability: np.ndarray,
    threshold: float,
    source_path: str | Path,
    source_meta: Mapping[str, Any],
    *,
    formats: Sequence[str] = MASK_FORMATS,
    mask: np.ndarray | None = None,
    vessel_kind: str = "retinal",
) -> dict[str, Path]:
    """Write a vessel probability map and its mask as PNGs and, as asked, NIfTI and (DICOM sources) DICOM SEG.

    Args:
        out_dir: the folder to write into (created).
        stem: file name stem, e.g. the image id.
        probability: ``(H, W)`` float vessel probabilities in ``[0, 1]``, rows-first.
        threshold: vessel threshold in ``(0, 1]``.
        source_path: the image the probabilities were computed from.
        source_meta: ``read_image``'s metadata of the source (``format``, ``shape``); without
            ``format`` it is found from the file, without ``shape`` the size is not checked.
        formats: besides the two PNGs, ``"nifti"`` and/or ``"dicom-seg"`` (the SEG only for DICOM sources).
        mask: the ``(H, W)`` mask to write (e.g. after small components were removed);
            default ``probability > threshold``, as :func:`~.scoring.postprocess_mask` thresholds.
        vessel_kind: ``"retinal"`` or ``"blood"`` (the SEG segment label).

    Returns:
        Paths by kind: ``probability_png`` (uint8, 0..255), ``mask_png`` (0/255),
        ``mask_nifti`` (``<stem>_mask.nii.gz``, uint8 0/1) and ``dicom_seg``
        (``<stem>_seg.dcm``), the last two when written.

    Raises:
        DataError: a bad probability map, mask or threshold, an unreadable source, or
            a source a SEG cannot be made from (the file and the problem named).
        ValueError: an unknown format.
    """
    unknown = sorted(set(formats) - set(MASK_FORMATS))
    if unknown:
        raise ValueError(f"unknown mask format(s) {unknown}; known: {list(MASK_FORMATS)}")
    source_format = str(source_meta.get("format") or image_format(source_path))
    meta_shape = source_meta.get("shape")
    shape = (int(meta_shape[-2]), int(meta_shape[-1])) if meta_shape else None
    values = check_probability(probability, threshold, source_path, shape)
    if mask is None:
        mask = values > np.float32(threshold)
    else:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != values.shape:
            raise DataError(source_path, f"the mask is {mask.shape} but the probability map is {values.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Built before anything is written, so a source that cannot take a SEG leaves no partial set of files.
    nifti = mask_nifti_image(mask.astype(np.uint8), source_path, source_format) if "nifti" in formats else None
    seg = (dicom_seg(mask, source_path, vessel_kind=vessel_kind, threshold=threshold)
           if "dicom-seg" in formats and source_format == "dicom" else None)
    written = {
        "probability_png": atomic_write_bytes(out / f"{stem}_prob.png", _png_bytes(np.round(values * 255.0).astype(np.uint8))),
        "mask_png": atomic_write_bytes(out / f"{stem}_mask.png", _png_bytes(mask.astype(np.uint8) * 255)),
    }
    if nifti is not None:
        # nibabel picks gzip from the file name, and a temporary name has none: compress here.
        written["mask_nifti"] = atomic_write_bytes(out / f"{stem}_mask.nii.gz", gzip.compress(nifti.to_bytes(), compresslevel=6))
    if seg is not None:
        buffer = io.BytesIO()
        seg.save_as(buffer, enforce_file_format=True)
        written["dicom_seg"] = atomic_write_bytes(out / f"{stem}_seg.dcm", buffer.getvalue())
    return written
