"""Dataset builder "tbx11k": tuberculosis boxes in a YOLO layout (TBX11K, Liu et al. CVPR 2020) read in place.

Layout: ``classes.txt`` (one class name a line, line ``i`` naming class ``i``),
``images/<folder>/<stem>.png`` and ``labels/<folder>/<stem>.txt`` with one box
a line, ``class x_center y_center width height``, normalised to [0, 1].

Each box becomes a pixel box of the image as read (its header's width and
height) with a phrase made from its class and its place on the chest:
"active tuberculosis in the right upper zone". The place is the patient's:
a radiograph is viewed facing the patient, so the image's left half is the
patient's right. The zone is the third of the image height holding the box's
centre (upper, middle, lower), the side the half holding its centre.

TBX11K's small release gives only a ``train`` folder, so ``train``/``val``/
``test`` are carved from it by a seeded split of the images (no patient ids
are given; each image is its own group).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from workbench.data.skipped import SkippedRecords
from workbench.data.splits import grouped_splits
from workbench.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PHRASE_FORMS = ("with-place", "without-place")
EMPTY_IMAGE_RULES = ("skip", "keep")
_EDGE_TOLERANCE = 1e-3  # normalised units: a box may overhang the image edge by rounding, not more


def finding_phrase(class_name: str) -> str:
    """A class name as running text: ``"Active Tuberculosis"`` -> ``"active tuberculosis"``; acronyms kept (``"TB"``)."""
    return " ".join(word if len(word) > 1 and word.isupper() else word.lower() for word in class_name.split())


def category_name(class_name: str) -> str:
    """A class name as a category key in lower snake case: ``"Obsolete Pulmonary TB"`` -> ``"obsolete_pulmonary_tb"``."""
    return "_".join(class_name.lower().split())


def chest_place(centre_x: float, centre_y: float, width: int, height: int) -> str:
    """The patient's side and lung zone of an image point, e.g. ``"right upper zone"``.

    Args:
        centre_x: the column of the point, pixels (the image's left is the patient's right).
        centre_y: the row of the point, pixels.
        width: the image width in pixels.
        height: the image height in pixels.

    Returns:
        ``"<right|left> <upper|middle|lower> zone"``.
    """
    side = "right" if centre_x < width / 2 else "left"
    third = min(int(3 * centre_y / height), 2) if height > 0 else 0
    return f"{side} {('upper', 'middle', 'lower')[max(third, 0)]} zone"


def read_classes(path: Path) -> list[str]:
    """The class names of ``classes.txt`` in order (blank lines ignored).

    Raises:
        DataError: the file is missing or names no class.
    """
    if not path.is_file():
        raise DataError(path, "missing: the YOLO layout needs classes.txt beside images/ and labels/")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(path, "names no class")
    return names


def parse_label_line(text: str, class_count: int) -> tuple[int, float, float, float, float]:
    """One YOLO label line -> ``(class, x_center, y_center, width, height)``, normalised.

    Raises:
        ValueError: the line's problem in words (field count, a non-number, a class out of
            range, a size not in (0, 1], a box reaching outside the image).
    """
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (class x_center y_center width height), got {len(fields)}")
    try:
        class_index = int(fields[0])
    except ValueError:
        raise ValueError(f"class {fields[0]!r} is not an integer") from None
    try:
        cx, cy, w, h = (float(field) for field in fields[1:])
    except ValueError:
        raise ValueError(f"coordinates {' '.join(fields[1:])!r} are not all numbers") from None
    if not 0 <= class_index < class_count:
        raise ValueError(f"class {class_index} is out of range: classes.txt names {class_count} (0..{class_count - 1})")
    if not all(math.isfinite(value) for value in (cx, cy, w, h)):
        raise ValueError("coordinates must be finite")
    if not (0 < w <= 1 and 0 < h <= 1):
        raise ValueError(f"width {w:g} and height {h:g} must be in (0, 1]")
    if min(cx - w / 2, cy - h / 2) < -_EDGE_TOLERANCE or max(cx + w / 2, cy + h / 2) > 1 + _EDGE_TOLERANCE:
        raise ValueError(f"box (x_center {cx:g}, y_center {cy:g}, width {w:g}, height {h:g}) is out of range: it reaches outside [0, 1]")
    return class_index, cx, cy, w, h


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (no pixels decoded)."""
    try:
        with Image.open(path) as image:
            return int(image.width), int(image.height)
    except (OSError, ValueError) as error:
        raise DataError(path, f"cannot read the image header: {error}") from error


def _pixel_box(parsed: tuple[int, float, float, float, float], classes: list[str], width: int, height: int,
               phrase_form: str) -> dict[str, Any]:
    class_index, cx, cy, w, h = parsed
    finding = finding_phrase(classes[class_index])
    place = chest_place(cx * width, cy * height, width, height)
    x, y = max(cx - w / 2, 0.0) * width, max(cy - h / 2, 0.0) * height
    return {"phrase": f"{finding} in the {place}" if phrase_form == "with-place" else finding,
            "category": category_name(classes[class_index]), "finding": finding, "place": place,
            "x": x, "y": y, "w": min(w * width, width - x), "h": min(h * height, height - y)}


def build_tbx11k(
    root: Path,
    *,
    folder: str = "train",
    phrase_form: Literal["with-place", "without-place"] = "with-place",
    empty_images: Literal["skip", "keep"] = "skip",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    skipped: SkippedRecords | None = None,
) -> list[dict[str, Any]]:
    """Grounding records of a YOLO-layout TBX11K folder: one per image, its boxes in pixels with phrases.

    A label line that is malformed or out of range is left out and listed in
    ``skipped`` as ``(<stem>:<line>, label file, "line N: reason")``; the
    image keeps its other boxes. An image whose every line was bad is skipped
    and listed. An image with no label file or an empty one (TBX11K's healthy
    and sick-but-not-TB images) is skipped and listed by default
    (``empty_images="skip"``: the grounding jobs need a box); with
    ``empty_images="keep"`` it is kept with ``boxes: []`` (negatives for
    localisation scores).

    Args:
        root: the folder holding ``classes.txt``, ``images/`` and ``labels/``.
        folder: the sub-folder of ``images/`` and ``labels/`` to read.
        phrase_form: ``"with-place"`` ("active tuberculosis in the right upper zone")
            or ``"without-place"`` ("active tuberculosis"); every box carries both
            parts as ``finding`` and ``place`` either way.
        empty_images: ``"skip"`` or ``"keep"`` images without boxes (see above).
        val_fraction: share of images for ``val``.
        test_fraction: share of images for ``test``.
        seed: the split's seed.
        skipped: collects the lines and images left out, with their reasons.

    Returns:
        Records ``{"id": stem, "image", "boxes", "split", "width", "height"}``; each box is
        ``{"phrase", "category" (snake case class), "finding", "place", "x", "y", "w", "h"}``
        in pixels of the image (x = column, y = row, from the top-left corner).

    Raises:
        ConfigError: an unknown ``phrase_form`` or ``empty_images``, or bad split shares.
        DataError: ``classes.txt`` or ``images/<folder>`` is missing.
    """
    if phrase_form not in PHRASE_FORMS:
        raise ConfigError(f"tbx11k phrase_form must be one of {', '.join(PHRASE_FORMS)}; got {phrase_form!r}")
    if empty_images not in EMPTY_IMAGE_RULES:
        raise ConfigError(f"tbx11k empty_images must be one of {', '.join(EMPTY_IMAGE_RULES)}; got {empty_images!r}")
    root = Path(root).absolute()
    classes = read_classes(root / "classes.txt")
    image_dir, label_dir = root / "images" / folder, root / "labels" / folder
    if not image_dir.is_dir():
        raise DataError(image_dir, "images folder not found (YOLO layout: images/<folder>/*.png)")
    images = sorted(path for path in image_dir.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    split_of = grouped_splits({path.stem: 1 for path in images}, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    skipped = skipped if skipped is not None else SkippedRecords()

    records = []
    for image in images:
        label_file = label_dir / f"{image.stem}.txt"
        try:
            width, height = _image_size(image)
        except DataError as error:
            skipped.add({"id": image.stem}, error)
            continue
        lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines() if label_file.is_file() else []
        boxes, bad_lines = [], 0
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                boxes.append(_pixel_box(parse_label_line(text, len(classes)), classes, width, height, phrase_form))
            except ValueError as error:
                bad_lines += 1
                skipped.add({"id": f"{image.stem}:{number}"}, f"line {number}: {error}", file=str(label_file))
        if not boxes:
            if bad_lines:
                skipped.add({"id": image.stem}, f"no usable box: all {bad_lines} label line(s) were bad", file=str(label_file))
                continue
            if empty_images == "skip":
                reason = "empty label file" if label_file.is_file() else f"no label file labels/{folder}/{label_file.name}"
                skipped.add({"id": image.stem}, f"{reason} (empty_images=skip)", file=str(label_file))
                continue
        records.append({"id": image.stem, "image": str(image), "boxes": boxes, "split": split_of[image.stem],
                        "width": width, "height": height})
    return records
