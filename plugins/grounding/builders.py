"""Dataset builders for phrase grounding: MS-CXR and generic box manifests.

MS-CXR (Boecking et al., ECCV 2022; PhysioNet ``ms-cxr``) releases one CSV
row per (image, phrase, box): ``dicom_id, category_name, label_text, x, y, w,
h, image_width, image_height, path`` (``path`` relative to the MIMIC-CXR-JPG
root; v1.1 adds ``split``). Boxes are in pixels of the original DICOM
(``image_width`` x ``image_height``); MIMIC-CXR-JPG files are often resized,
so each box is rescaled to the JPG actually found. One record per image, all
its phrases in ``boxes``. A bad row (missing file, bad numbers, a box outside
the image) is listed in ``skipped.csv`` and left out.
"""

from __future__ import annotations

import csv
import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

from workbench.data.manifests import read_manifest
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench_plugins.grounding.boxes import check_box, scale_box

MS_CXR_COLUMNS: tuple[str, ...] = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width", "image_height", "path")


def hashed_split(key: str) -> str:
    """``train``/``val``/``test`` (about 70/15/15) from a hash of ``key`` (MS-CXR v1.0 has no split column)."""
    bucket = int.from_bytes(hashlib.sha256(f"ms-cxr-{key}".encode()).digest()[:4], "little") % 100
    return "train" if bucket < 70 else "val" if bucket < 85 else "test"


def _find_csv(root: Path, csv_file: str | None) -> Path:
    if csv_file:
        path = Path(csv_file)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise ConfigError(f"{path}: MS-CXR CSV not found")
        return path
    if root.is_file():
        return root
    candidates = sorted(root.glob("MS_CXR*.csv")) or sorted(root.glob("*.csv"))
    if not candidates:
        raise ConfigError(f"{root}: no MS-CXR CSV (MS_CXR_Local_Alignment_*.csv) found; give csv_file")
    return candidates[0]


def _image_size(path: Path, cache: dict[Path, tuple[int, int]]) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header (PIL reads no pixels here)."""
    if path not in cache:
        try:
            with Image.open(path) as image:
                cache[path] = (int(image.height), int(image.width))
        except (OSError, ValueError) as error:
            raise DataError(path, f"cannot read the image header: {error}") from error
    return cache[path]


def build_ms_cxr(root: Path, csv_file: str | None = None, images: str | None = None, skipped: SkippedRecords | None = None) -> list[dict[str, Any]]:
    """Dataset builder "ms-cxr": the MS-CXR CSV over MIMIC-CXR-JPG images -> grounding records.

    Args:
        root: the folder holding the MS-CXR CSV (or the CSV itself).
        csv_file: the CSV's name or path when ``root`` holds several.
        images: the MIMIC-CXR-JPG root that ``path`` is relative to (default: ``root``).
        skipped: where bad rows are listed.

    Returns:
        One record per image: ``id`` (dicom_id), ``image``, ``boxes`` (``phrase`` =
        label_text, ``category`` = category_name, pixel ``x, y, w, h`` of the file found),
        ``split`` (the CSV's, else hashed from the dicom_id).

    Raises:
        ConfigError: no CSV, or a CSV without the MS-CXR columns.
    """
    root = Path(root)
    csv_path = _find_csv(root, csv_file)
    image_root = Path(images) if images else (root if root.is_dir() else root.parent)
    skipped = skipped if skipped is not None else SkippedRecords()
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in MS_CXR_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{csv_path}: not an MS-CXR CSV, missing columns {', '.join(missing)}")
        rows = list(reader)
    records: OrderedDict[str, dict[str, Any]] = OrderedDict()
    bad_images: set[str] = set()
    sizes: dict[Path, tuple[int, int]] = {}
    for line, row in enumerate(rows, start=2):
        dicom_id = (row.get("dicom_id") or "").strip()
        where = {"id": dicom_id or f"{csv_path.name}:{line}", "image": row.get("path", "")}
        if dicom_id in bad_images:
            continue
        try:
            image_path = image_root / (row.get("path") or "").strip()
            if not (row.get("path") or "").strip() or not image_path.is_file():
                raise DataError(image_path, "image file not found")
            height, width = _image_size(image_path, sizes)
            original = (float(row["image_height"]), float(row["image_width"]))
            if original[0] <= 0 or original[1] <= 0:
                raise DataError(csv_path, f"line {line}: image_width/image_height must be > 0")
            box = {"phrase": (row.get("label_text") or "").strip(), "category": (row.get("category_name") or "").strip(),
                   **{key: float(row[key]) for key in ("x", "y", "w", "h")}}
            check_box(box, int(original[0]), int(original[1]), f"{csv_path} line {line}")
            if not box["phrase"]:
                raise DataError(csv_path, f"line {line}: empty label_text")
            box = scale_box(box, original, (height, width))
        except (DataError, ValueError, TypeError) as error:
            skipped.add(where, error if isinstance(error, DataError) else DataError(csv_path, f"line {line}: {error}"))
            continue
        record = records.setdefault(dicom_id, {"id": dicom_id, "image": str(image_path), "boxes": [],
                                               "split": (row.get("split") or "").strip() or hashed_split(dicom_id)})
        record["boxes"].append(box)
    return list(records.values())


def build_box_manifest(root: Path, skipped: SkippedRecords | None = None) -> list[dict[str, Any]]:
    """Dataset builder "box-manifest": a CSV/JSONL manifest whose records carry ``image`` and ``boxes``.

    Lines that fail validation are listed in ``skipped`` and left out.
    """
    skipped = skipped if skipped is not None else SkippedRecords()
    records, problems = read_manifest(Path(root), require=("image", "boxes"), on_error="skip")
    for line, reason in problems:
        skipped.add({"id": f"{Path(root).name}:{line}", "image": str(root)}, reason)
    return records
