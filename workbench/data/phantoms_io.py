"""Writing the phantoms to disk: DICOM, PNG, NIfTI, TIFF/GIF (DRIVE layout) and manifests.

Chest studies under ``out_dir``::

    dicom/cxr-00000.dcm          DX, 12-bit MONOCHROME2, Explicit VR Little Endian
    png/cxr-00000.png            8-bit, the same image, PNG row r = DICOM row r
    masks/cxr-00000_labels.png   uint8 label map: 0 background, FINDINGS.index(name) + 1 per finding
    masks/cxr-00000_<name>.png   one 0/255 mask per finding present (the masks are disjoint)
    nifti/cxr-00000.nii.gz       only with "nii" in formats (also the label map as *_labels.nii.gz)
    manifest.jsonl, manifest.csv

Paths in the manifests are relative to the manifest's folder. Image files are
written directly; the manifests are written last and atomically, so a manifest
exists only once every file it names does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import track

from workbench.data.phantoms_cxr import FINDINGS, CxrStudy, make_cxr_study
from workbench.data.phantoms_fundus import make_fundus
from workbench.errors import ConfigError
from workbench.fsutil import atomic_write_text

CXR_FORMATS = ("dcm", "png", "nii")
DICOM_MAX_VALUE = 4095  # BitsStored 12
DIGITAL_XRAY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
_UID_ROOT = "medvl-workbench phantom"


def split_for_index(index: int) -> str:
    """``"train"``/``"val"``/``"test"`` (about 80/10/10) from a hash of ``index`` alone."""
    bucket = int.from_bytes(hashlib.sha256(f"phantom-split-{int(index)}".encode()).digest()[:4], "little") % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float ``(H, W)`` or ``(H, W, C)`` -> uint8 by rounding ``x * 255``."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def to_uint16(image: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float ``(H, W)`` -> 12-bit values ``round(x * 4095)`` as uint16 (the DICOM pixels)."""
    return np.clip(np.rint(image * DICOM_MAX_VALUE), 0, DICOM_MAX_VALUE).astype(np.uint16)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, compress_level=1)


def write_cxr_dicom(path: str | Path, study: CxrStudy, seed: int, index: int) -> Path:
    """Write ``study`` as a DX DICOM file (Explicit VR Little Endian, 12 bits stored, MONOCHROME2).

    UIDs are derived from ``(seed, index)``, so rewriting a dataset gives the same files.
    ``PatientOrientation`` is ``L\\F``: columns run towards the patient's left, rows towards the feet.

    Args:
        path: the ``.dcm`` file to write.
        study: the study; its ``(H, W)`` image becomes ``round(image * 4095)``.
        seed: the dataset seed (part of the UIDs and patient ID).
        index: the study index.

    Returns:
        The path written.
    """
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def uid(kind: str) -> str:
        """A UID fixed by (seed, index, kind), so a rewrite gives the same files."""
        return generate_uid(entropy_srcs=[_UID_ROOT, str(seed), str(index), kind])

    pixels = to_uint16(study.image)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_XRAY_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = DIGITAL_XRAY_FOR_PRESENTATION, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", f"A{index:07d}", "1"
    ds.Modality, ds.Manufacturer, ds.PresentationIntentType = "DX", "medvl-workbench", "FOR PRESENTATION"
    ds.PatientName, ds.PatientID, ds.PatientSex = f"Phantom^Cxr{index:05d}", f"PHANTOM-{seed}-{index:05d}", "O"
    ds.PatientBirthDate, ds.ReferringPhysicianName, ds.ContentDate, ds.ContentTime = "", "", "20240101", "120000"
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
    ds.ImageLaterality, ds.DetectorType, ds.BurnedInAnnotation, ds.LossyImageCompression = "U", "DIRECT", "NO", "00"
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    ds.ImageComments = "synthetic phantom; findings: " + (", ".join(f.name for f in study.findings) or "none")
    spacing = f"{study.pixel_spacing_mm:.6g}"
    ds.PixelSpacing = ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign, ds.PresentationLUTShape = "LIN", 1, "IDENTITY"
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.PixelData = pixels.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_nifti_2d(path: str | Path, pixels: np.ndarray, spacing_mm: float) -> Path:
    """Write an ``(H, W)`` image as NIfTI holding ``pixels.T``, i.e. voxel ``(i, j)`` = column i, row j.

    The affine maps i (columns) to +x (the patient's left, RAS) and j (rows) to -z (feet), which is
    what a frontal film shows; MONAI's NibabelReader then returns ``(W, H)`` like its PIL and pydicom readers.
    """
    import nibabel as nib

    affine = np.array([[spacing_mm, 0, 0, 0], [0, 0, 1.0, 0], [0, -spacing_mm, 0, 0], [0, 0, 0, 1]])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(pixels.T), affine), str(path))
    return path


def write_manifests(out_dir: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``records`` as ``manifest.jsonl`` and ``manifest.csv`` (lists/dicts JSON-encoded in CSV cells).

    Returns:
        The JSONL manifest's path.
    """
    columns: list[str] = []
    for record in records:
        columns.extend(key for key in record if key not in columns)
    jsonl = "".join(json.dumps(record, sort_keys=False) + "\n" for record in records)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: json.dumps(value) if isinstance(value, (list, dict)) else value for key, value in record.items()})
    atomic_write_text(out_dir / "manifest.csv", buffer.getvalue())
    return atomic_write_text(out_dir / "manifest.jsonl", jsonl)


def _progress(items: Iterable[int], total: int, description: str) -> Iterable[int]:
    # stderr, so a command that prints the manifest path on stdout stays machine-readable.
    return track(items, total=total, description=description, console=Console(stderr=True), transient=True)


def write_cxr_study(out_dir: Path, study: CxrStudy, seed: int, index: int, formats: Sequence[str]) -> dict[str, Any]:
    """Write one study's files under ``out_dir`` and return its manifest record."""
    record: dict[str, Any] = {"id": study.id}
    if "dcm" in formats:
        write_cxr_dicom(out_dir / "dicom" / f"{study.id}.dcm", study, seed, index)
        record["image"] = f"dicom/{study.id}.dcm"
    if "png" in formats:
        _save_png(out_dir / "png" / f"{study.id}.png", to_uint8(study.image))
        record["image_png"] = f"png/{study.id}.png"
    record.setdefault("image", record.get("image_png"))
    _save_png(out_dir / "masks" / f"{study.id}_labels.png", study.label_map)
    record["mask"] = f"masks/{study.id}_labels.png"
    record["masks"] = {}
    for name, mask in study.masks.items():
        _save_png(out_dir / "masks" / f"{study.id}_{name}.png", mask.astype(np.uint8) * 255)
        record["masks"][name] = f"masks/{study.id}_{name}.png"
    if "nii" in formats:
        write_nifti_2d(out_dir / "nifti" / f"{study.id}.nii.gz", to_uint16(study.image), study.pixel_spacing_mm)
        write_nifti_2d(out_dir / "nifti" / f"{study.id}_labels.nii.gz", study.label_map, study.pixel_spacing_mm)
        record["image_nii"], record["mask_nii"] = f"nifti/{study.id}.nii.gz", f"nifti/{study.id}_labels.nii.gz"
        if record["image"] is None:
            record["image"] = record["image_nii"]
    record.update(
        report=study.report,
        findings=[finding.name for finding in study.findings],
        labels=dict(study.labels),
        boxes=[dict(box) for box in study.boxes],
        split=split_for_index(index),
    )
    return record


def write_cxr_phantoms(out_dir: str | Path, n: int, seed: int = 0, size: int = 256, formats: tuple[str, ...] = ("dcm", "png")) -> Path:
    """Generate ``n`` chest studies and write them with their manifests (layout in the module docstring).

    Args:
        out_dir: the folder to write into (created).
        n: number of studies, indices ``0 .. n-1``.
        seed: the dataset seed.
        size: image side in pixels.
        formats: any of ``"dcm"``, ``"png"``, ``"nii"``; the record's ``image`` is the DICOM when written,
            else the PNG, else the NIfTI. Masks are always written as PNG.

    Returns:
        The path of ``out_dir/manifest.jsonl`` (``manifest.csv`` holds the same records).

    Raises:
        ConfigError: for an unknown format, no format, ``n < 1`` or a size out of range.
    """
    formats = tuple(formats)
    unknown = [name for name in formats if name not in CXR_FORMATS]
    if unknown or not formats:
        raise ConfigError(f"chest phantom formats must be a non-empty subset of {CXR_FORMATS}, got {formats!r}")
    if n < 1:
        raise ConfigError(f"chest phantom count must be at least 1, got {n}")
    out_dir = Path(out_dir)
    records = []
    for index in _progress(range(n), n, f"chest phantoms -> {out_dir}"):
        records.append(write_cxr_study(out_dir, make_cxr_study(index, seed=seed, size=size), seed, index, formats))
    return write_manifests(out_dir, records)


def drive_numbers(n: int) -> list[tuple[str, str]]:
    """``(subset, number)`` per index for the DRIVE layout.

    The first 60% of the indices (at least 1, and at least 1 left over) go to ``training``, the rest
    to ``test``. As in DRIVE, test images are numbered first (``01``..) and training images after them.
    """
    n_train = min(max(int(round(0.6 * n)), 1), n - 1)
    digits = max(2, len(str(n)))
    n_test = n - n_train
    return [("training", f"{n_test + 1 + index:0{digits}d}") if index < n_train else ("test", f"{index - n_train + 1:0{digits}d}") for index in range(n)]


def write_fundus_phantoms(out_dir: str | Path, n: int, seed: int = 0, size: int = 256, layout: str = "manifest") -> Path:
    """Generate ``n`` fundus images and write them as PNG + manifest or in the DRIVE layout.

    ``layout="manifest"``: ``images/<id>.png`` (RGB), ``vessels/<id>.png`` and ``fov/<id>.png`` (0/255),
    and ``manifest.jsonl``/``manifest.csv`` with ``id``, ``image``, ``mask``, ``fov``, ``split``.
    ``layout="drive"``: ``training|test/images/XX_<subset>.tif`` (RGB TIFF), ``.../1st_manual/XX_manual1.gif``
    and ``.../mask/XX_<subset>_mask.gif`` (0/255 GIF); numbering as in :func:`drive_numbers`.

    Args:
        out_dir: the folder to write into (created).
        n: number of images (at least 2 for ``"drive"``, which needs a training and a test image).
        seed: the dataset seed.
        size: image side in pixels.
        layout: ``"manifest"`` or ``"drive"``.

    Returns:
        The JSONL manifest path for ``"manifest"``, ``out_dir`` itself for ``"drive"``.

    Raises:
        ConfigError: for an unknown layout, too few images or a size out of range.
    """
    if layout not in ("manifest", "drive"):
        raise ConfigError(f"fundus phantom layout must be 'manifest' or 'drive', got {layout!r}")
    if n < (2 if layout == "drive" else 1):
        raise ConfigError(f"fundus phantom count must be at least {2 if layout == 'drive' else 1} for layout {layout!r}, got {n}")
    out_dir = Path(out_dir)
    numbers = drive_numbers(n) if layout == "drive" else []
    records = []
    for index in _progress(range(n), n, f"fundus phantoms -> {out_dir}"):
        fundus = make_fundus(index, seed=seed, size=size)
        vessels, fov = fundus.vessels.astype(np.uint8) * 255, fundus.fov.astype(np.uint8) * 255
        if layout == "drive":
            subset, number = numbers[index]
            folder = out_dir / subset
            for sub in ("images", "1st_manual", "mask"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(fundus.image).save(folder / "images" / f"{number}_{subset}.tif")
            Image.fromarray(vessels).save(folder / "1st_manual" / f"{number}_manual1.gif")
            Image.fromarray(fov).save(folder / "mask" / f"{number}_{subset}_mask.gif")
            continue
        _save_png(out_dir / "images" / f"{fundus.id}.png", fundus.image)
        _save_png(out_dir / "vessels" / f"{fundus.id}.png", vessels)
        _save_png(out_dir / "fov" / f"{fundus.id}.png", fov)
        records.append({"id": fundus.id, "image": f"images/{fundus.id}.png", "mask": f"vessels/{fundus.id}.png", "fov": f"fov/{fundus.id}.png", "split": split_for_index(index)})
    return out_dir if layout == "drive" else write_manifests(out_dir, records)


__all__ = ["FINDINGS", "write_cxr_phantoms", "write_fundus_phantoms", "write_cxr_dicom", "split_for_index", "drive_numbers"]
