"""Dataset builder "class-folders": ``root/<class>/<image>`` read in place, with seeded splits by patient.

Class-folder sets (the Guangzhou paediatric chest X-rays' ``NORMAL/`` and
``PNEUMONIA/``, most Kaggle releases) give no validation or test split, and
often several images of one patient under file names that say so
(``person1002_bacteria_2933.jpeg``). A split by file would put a patient on
both sides; ``group_pattern`` names the patient inside a file name, and whole
patients are then assigned to one split (:mod:`workbench.data.splits`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

from workbench.data.skipped import SkippedRecords
from workbench.data.splits import grouped_splits
from workbench.errors import ConfigError

logger = logging.getLogger("workbench.counterfactual")

FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
# The Guangzhou paediatric set (Kermany et al. 2018): "person<N>_bacteria|virus_<k>" and "[NORMAL2-]IM-<N>-<k>" name patient N.
PEDIATRIC_CXR_GROUPS = r"^(person\d+|(?:NORMAL2-)?IM-\d+)"


def _group_regex(group_pattern: str | None) -> re.Pattern[str] | None:
    if group_pattern is None:
        return None
    try:
        return re.compile(group_pattern)
    except re.error as error:
        raise ConfigError(f"class-folders group_pattern {group_pattern!r} is not a regular expression: {error}") from error


def group_of(file_name: str, pattern: re.Pattern[str]) -> str:
    """The patient (group) named in a file name: ``pattern``'s first group, or its whole match; the name itself if none."""
    match = pattern.search(file_name)
    if match is None:
        return file_name
    return match.group(1) if match.groups() else match.group(0)


def build_class_folders(
    root: Path,
    *,
    classes: Sequence[str] | None = None,
    group_pattern: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    skipped: SkippedRecords | None = None,
) -> list[dict[str, Any]]:
    """Records of a class-folder layout: one per image file, labelled by its folder.

    Files other than PNG, JPEG and DICOM (``.dcm``) are listed in ``skipped``
    and left out; hidden files (``.DS_Store``) are ignored. Splits are seeded
    and by group: with ``group_pattern`` (a regular expression searched in the
    file name; its first group, or the whole match, names the patient) a
    patient's images share one split (across class folders too). The shares
    are met over all images, so each class's share in a split is near, not
    exactly, its share overall.

    Args:
        root: the folder holding one sub-folder per class.
        classes: class names in label order (default: the sub-folders, sorted).
        group_pattern: the patient inside a file name, e.g. :data:`PEDIATRIC_CXR_GROUPS`;
            ``None``: each file is its own group. A name it does not match is its own group.
        val_fraction: share of each class's images for ``val``.
        test_fraction: share of each class's images for ``test``.
        seed: the split's seed.
        skipped: collects the files left out.

    Returns:
        Records ``{"id": "<class>/<file>", "image", "label" (class index), "class_name",
        "group", "split"}``, class by class, files sorted by name.

    Raises:
        ConfigError: ``root`` is not a folder, a named class has no folder, a class
            folder holds no image, fewer than two classes, a bad pattern, or bad shares.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder (class-folders layout: root/<class>/*.png|*.jpg|*.jpeg|*.dcm)")
    found = sorted(path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    names = list(classes) if classes else found
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        raise ConfigError(f"classes: no folder {', '.join(missing)} under {root} (found: {', '.join(found) or 'none'})")
    if len(names) < 2:
        raise ConfigError(f"{root}: a class-folder set needs at least two class folders, found {names}")
    pattern = _group_regex(group_pattern)
    files: list[tuple[int, str, Path]] = []
    for index, name in enumerate(names):
        found_files = 0
        for path in sorted((root / name).iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() not in FOLDER_SUFFIXES:
                if skipped is not None:
                    skipped.add({"id": f"{name}/{path.name}"}, f"not an image file ({', '.join(FOLDER_SUFFIXES)})", file=str(path))
                continue
            files.append((index, name, path))
            found_files += 1
        if not found_files:
            raise ConfigError(f"{root / name}: class {name!r} has no image file")
    # a patient is one group across classes too, so a patient filed under two classes cannot straddle a split
    group_of_file = {path: group_of(path.name, pattern) if pattern is not None and pattern.search(path.name) else f"{name}/{path.name}"
                     for _, name, path in files}
    sizes: dict[str, int] = {}
    for group in group_of_file.values():
        sizes[group] = sizes.get(group, 0) + 1
    split_of = grouped_splits(sizes, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return [{"id": f"{name}/{path.name}", "image": str(path), "label": index, "class_name": name, "group": group_of_file[path],
             "split": split_of[group_of_file[path]]} for index, name, path in files]
