"""Dataset builders for retinal vessel sets: their release layouts on disk -> records with absolute paths.

Every builder returns records ``{"id", "image", "mask", "fov", "split", "dataset"}``
(plus ``"mask2"``, the second human observer, where the set has one). ``fov`` is
the field-of-view file, or ``None`` for sets that ship none (CHASE_DB1, STARE)
when no ``fov_dir`` is given: the data pipeline then derives it from the image
(:func:`~.topology_masks.fov_from_fundus`) when it loads it. With ``fov_dir``
the derived masks are written there once, as PNG, and reused.

A missing dataset folder is a :class:`~workbench.errors.DataError` naming it.
One bad record (an image without its reference, an annotation without its
image) is listed in ``skipped`` (a :class:`~workbench.data.skipped.SkippedRecords`)
and left out; the others are returned.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from workbench.data.readers import read_image
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench.fsutil import atomic_path
from workbench_plugins.vessels.topology.masks import fov_from_fundus

logger = logging.getLogger("workbench.vessels")

CHASE_REFERENCES = ("1stHO", "2ndHO")
STARE_REFERENCES = ("ah", "vk")
CHASE_TRAIN_SUBJECTS = 10  # the usual protocol: subjects 01..10 (20 images) train, 11..14 (8 images) test
_CHASE_IMAGE = re.compile(r"^Image_(\d+)([LR])$", re.IGNORECASE)
_JPEG = (".jpg", ".jpeg")


def _skip(skipped: SkippedRecords | None, record_id: str, file: Path, reason: str) -> None:
    if skipped is not None:
        skipped.add({"id": record_id}, reason, file=str(file))
    else:
        logger.warning("skipped %s (%s): %s", record_id, file, reason)


def _folder(path: Path, what: str) -> Path:
    """``path`` when it is a directory; else a :class:`DataError` naming it and what it should hold."""
    if not path.is_dir():
        raise DataError(path, f"{what} folder not found" if not path.exists() else f"{what}: not a folder")
    return path


def _files(folder: Path, suffixes: Iterable[str]) -> dict[str, Path]:
    """``{name.lower(): path}`` of the files in ``folder`` whose suffix is one of ``suffixes`` (any case)."""
    wanted = tuple(suffix.lower() for suffix in suffixes)
    return {path.name.lower(): path for path in sorted(folder.iterdir()) if path.is_file() and path.name.lower().endswith(wanted)}


def _record(record_id: str, image: Path, mask: Path, fov: Path | None, split: str, dataset: str,
            mask2: Path | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"id": record_id, "image": str(image), "mask": str(mask), "fov": str(fov) if fov is not None else None,
                              "split": split, "dataset": dataset}
    if mask2 is not None:
        record["mask2"] = str(mask2)
    return record


def derived_fov_file(image: Path, fov_dir: Path, record_id: str) -> Path:
    """The field of view of a fundus photograph, derived once and kept as ``fov_dir/<id>_fov.png`` (0/255).

    Args:
        image: the RGB fundus photograph.
        fov_dir: the cache folder (created); delete it to derive again.
        record_id: the record's id (names the file).

    Returns:
        The PNG's path (an existing file is reused, not recomputed).

    Raises:
        DataError: the image cannot be read or has no field of view (nothing above the red threshold).
    """
    from PIL import Image

    target = Path(fov_dir) / f"{record_id}_fov.png"
    if target.is_file():
        return target
    pixels, _ = read_image(image)
    try:
        fov = fov_from_fundus(pixels)
    except DataError as error:
        raise DataError(image, error.reason) from error
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        Image.fromarray(fov.astype(np.uint8) * 255).save(temporary, format="PNG")
    return target


def _fov_for(image: Path, fov_dir: Path | None, record_id: str, skipped: SkippedRecords | None) -> tuple[bool, Path | None]:
    """``(ok, fov path or None)``; a failure is listed in ``skipped``."""
    if fov_dir is None:
        return True, None
    try:
        return True, derived_fov_file(image, Path(fov_dir).resolve(), record_id)
    except DataError as error:
        _skip(skipped, record_id, image, f"field of view: {error.reason}")
        return False, None


def _unmatched(annotations: dict[str, Path], used: set[str], skipped: SkippedRecords | None, what: str) -> None:
    for name, path in annotations.items():
        if name not in used:
            _skip(skipped, Path(name).stem, path, f"{what} without a matching image")


def build_drive(root: Path, *, skipped: SkippedRecords | None = None) -> list[dict[str, Any]]:
    """Records of DRIVE: ``training|test/images/NN_<subset>.tif``, ``1st_manual/NN_manual1.gif``, ``mask/NN_<subset>_mask.gif``.

    The test subset's ``2nd_manual/NN_manual2.gif`` (second observer) becomes ``mask2``.
    Split: ``training`` -> ``"train"``, ``test`` -> ``"test"``; a copy with only one subset folder is accepted.

    Args:
        root: the DRIVE folder holding ``training/`` and/or ``test/``.
        skipped: collects images without their manual or mask, and annotations without an image.

    Returns:
        Records with ``id`` = the image stem (``"21_training"``), absolute paths.

    Raises:
        DataError: ``root`` or both subsets are missing, or a subset lacks its ``images``, ``1st_manual`` or ``mask`` folder.
    """
    root = _folder(Path(root).resolve(), "DRIVE")
    subsets = [(name, split) for name, split in (("training", "train"), ("test", "test")) if (root / name).is_dir()]
    if not subsets:
        raise DataError(root, "not a DRIVE folder: neither training/ nor test/ found")
    records = []
    for subset, split in subsets:
        folder = root / subset
        images = _files(_folder(folder / "images", f"DRIVE {subset}/images"), (".tif", ".tiff"))
        manuals = _files(_folder(folder / "1st_manual", f"DRIVE {subset}/1st_manual"), (".gif", ".tif", ".png"))
        masks = _files(_folder(folder / "mask", f"DRIVE {subset}/mask"), (".gif", ".tif", ".png"))
        seconds = _files(folder / "2nd_manual", (".gif", ".tif", ".png")) if (folder / "2nd_manual").is_dir() else {}
        used_manuals: set[str] = set()
        used_masks: set[str] = set()
        for image in images.values():
            number = image.stem.split("_")[0]
            manual = next((name for name in manuals if name.startswith(f"{number.lower()}_manual1.")), None)
            mask = next((name for name in masks if name.startswith(f"{image.stem.lower()}_mask.")), None)
            if manual is None or mask is None:
                missing = f"1st_manual/{number}_manual1.gif" if manual is None else f"mask/{image.stem}_mask.gif"
                _skip(skipped, image.stem, image, f"no {missing} for this image")
                continue
            used_manuals.add(manual)
            used_masks.add(mask)
            second = next((path for name, path in seconds.items() if name.startswith(f"{number.lower()}_manual2.")), None)
            records.append(_record(image.stem, image, manuals[manual], masks[mask], split, "drive", second))
        _unmatched(manuals, used_manuals, skipped, f"DRIVE {subset} 1st_manual annotation")
        _unmatched(masks, used_masks, skipped, f"DRIVE {subset} FOV mask")
    return records


def build_chase_db1(root: Path, *, reference: str = "1stHO", val_subjects: int = 0, fov_dir: Path | None = None,
                    skipped: SkippedRecords | None = None) -> list[dict[str, Any]]:
    """Records of CHASE_DB1 in its flat release layout: ``Image_01L.jpg`` with ``Image_01L_1stHO.png`` and ``_2ndHO.png``.

    Split (the usual protocol): subjects 01..10 (``01L``..``10R``, 20 images) ``"train"``,
    11..14 (8 images) ``"test"``. With ``val_subjects`` = k, the last k training subjects become ``"val"``
    (k = 2: subjects 09 and 10, 4 images; 01..08 stay ``"train"``), both eyes of a subject always on one side.
    The set has no field-of-view masks: see the module docstring.

    Args:
        root: the folder holding the 28 JPEGs and 56 annotation PNGs.
        reference: ``"1stHO"`` (the usual reference) or ``"2ndHO"``; the other observer becomes ``mask2``.
        val_subjects: how many of the 10 training subjects (the last ones) form the validation split (0: none;
            ``data.options: {val_subjects: 2}`` in a config).
        fov_dir: where the derived FOV masks are written once (``None``: derived when loaded).
        skipped: collects images without the reference annotation, and annotations without an image.

    Returns:
        Records with ``id`` = ``"Image_01L"``..., absolute paths.

    Raises:
        ConfigError: an unknown ``reference``, or ``val_subjects`` not an integer in 0..9.
        DataError: ``root`` is missing or holds no ``Image_NNX.jpg`` file.
    """
    if reference not in CHASE_REFERENCES:
        raise ConfigError(f"chase-db1 reference must be one of {CHASE_REFERENCES}, got {reference!r}")
    if isinstance(val_subjects, bool) or not isinstance(val_subjects, int) or not 0 <= val_subjects < CHASE_TRAIN_SUBJECTS:
        raise ConfigError(f"chase-db1 val_subjects must be an integer from 0 to {CHASE_TRAIN_SUBJECTS - 1} "
                          f"(how many of the {CHASE_TRAIN_SUBJECTS} training subjects validate), got {val_subjects!r}")
    first_val_subject = CHASE_TRAIN_SUBJECTS - val_subjects + 1
    other = CHASE_REFERENCES[1 - CHASE_REFERENCES.index(reference)]
    root = _folder(Path(root).resolve(), "CHASE_DB1")
    images = {name: path for name, path in _files(root, _JPEG).items() if _CHASE_IMAGE.match(path.stem)}
    if not images:
        raise DataError(root, "not a CHASE_DB1 folder: no Image_NNL.jpg / Image_NNR.jpg files")
    annotations = _files(root, (".png", ".gif", ".tif"))
    used: set[str] = set()
    records = []
    for image in images.values():
        subject = int(_CHASE_IMAGE.match(image.stem).group(1))  # type: ignore[union-attr]
        found = {observer: next((name for name in annotations if name.startswith(f"{image.stem.lower()}_{observer.lower()}.")), None)
                 for observer in CHASE_REFERENCES}
        used.update(name for name in found.values() if name)
        if found[reference] is None:
            _skip(skipped, image.stem, image, f"no {image.stem}_{reference}.png reference annotation for this image")
            continue
        ok, fov = _fov_for(image, fov_dir, image.stem, skipped)
        if ok:
            split = "test" if subject > CHASE_TRAIN_SUBJECTS else "val" if subject >= first_val_subject else "train"
            second = annotations[found[other]] if found[other] else None
            records.append(_record(image.stem, image, annotations[found[reference]], fov, split, "chase-db1", second))
    _unmatched({name: path for name, path in annotations.items() if re.search(r"_(1st|2nd)ho\.", name)}, used, skipped,
               "CHASE_DB1 annotation")
    return records


def build_stare(root: Path, *, reference: str = "ah", n_train: int = 10, fov_dir: Path | None = None,
                skipped: SkippedRecords | None = None) -> list[dict[str, Any]]:
    """Records of STARE: ``imNNNN.ppm`` images with ``labels-ah/imNNNN.ah.ppm`` and ``labels-vk/imNNNN.vk.ppm``.

    The records are the images the reference observer annotated (20 in the vessel release); an image
    without an annotation is not part of the vessel set and is left out without a skip row. STARE has no
    official split: the first ``n_train`` records by name are ``"train"``, the rest ``"test"``.
    STARE has no field-of-view masks: see the module docstring.

    Args:
        root: the folder holding the ``.ppm`` images and the ``labels-ah``/``labels-vk`` folders.
        reference: ``"ah"`` (Hoover, the usual reference) or ``"vk"``; the other becomes ``mask2``.
        n_train: how many records (in name order) are the training split.
        fov_dir: where the derived FOV masks are written once (``None``: derived when loaded).
        skipped: collects annotations without an image.

    Returns:
        Records with ``id`` = ``"im0001"``..., absolute paths.

    Raises:
        ConfigError: an unknown ``reference`` or a negative ``n_train``.
        DataError: ``root`` or the reference's label folder is missing, or it holds only gzipped files.
    """
    if reference not in STARE_REFERENCES:
        raise ConfigError(f"stare reference must be one of {STARE_REFERENCES}, got {reference!r}")
    if n_train < 0:
        raise ConfigError(f"stare n_train must be >= 0, got {n_train}")
    other = STARE_REFERENCES[1 - STARE_REFERENCES.index(reference)]
    root = _folder(Path(root).resolve(), "STARE")
    label_dir = _folder(root / f"labels-{reference}", f"STARE labels-{reference}")
    images = {path.name.lower()[: -len(".ppm")]: path for path in _files(root, (".ppm",)).values()}
    labels = _files(label_dir, (f".{reference}.ppm",))
    if not images or not labels:
        where = root if not images else label_dir
        if _files(where, (".ppm.gz",)):
            raise DataError(where, "the STARE files are still gzipped (.ppm.gz): gunzip them first")
        raise DataError(where, "no .ppm images" if not images else f"no .{reference}.ppm annotations")
    seconds = _files(root / f"labels-{other}", (f".{other}.ppm",)) if (root / f"labels-{other}").is_dir() else {}
    records = []
    for name, label in labels.items():
        stem = name[: -len(f".{reference}.ppm")]
        image = images.get(stem)
        if image is None:
            _skip(skipped, stem, label, f"STARE labels-{reference} annotation without a matching image {stem}.ppm")
            continue
        ok, fov = _fov_for(image, fov_dir, image.stem, skipped)
        if ok:
            records.append(_record(image.stem, image, label, fov, "", "stare", seconds.get(f"{stem}.{other}.ppm")))
    records.sort(key=lambda record: record["id"])
    for index, record in enumerate(records):
        record["split"] = "train" if index < n_train else "test"
    return records


def build_hrf(root: Path, *, n_train_per_category: int = 5, skipped: SkippedRecords | None = None) -> list[dict[str, Any]]:
    """Records of HRF (High-Resolution Fundus): ``images/NN_c.jpg``, ``manual1/NN_c.tif``, ``mask/NN_c_mask.tif``.

    Split: HRF has no official one; as Orlando et al. (2017) do, the first ``n_train_per_category``
    images of each category (``_h`` healthy, ``_g`` glaucoma, ``_dr`` diabetic retinopathy) by name
    are ``"train"`` and the rest ``"test"`` (5 per category: 15 train, 30 test).

    Args:
        root: the folder holding ``images/``, ``manual1/`` and ``mask/``.
        n_train_per_category: training images per category.
        skipped: collects images without their manual or mask, and annotations without an image.

    Returns:
        Records with ``id`` = the image stem (``"01_dr"``), absolute paths.

    Raises:
        ConfigError: a negative ``n_train_per_category``.
        DataError: ``root`` or one of its three folders is missing, or ``images/`` holds no JPEG.
    """
    if n_train_per_category < 0:
        raise ConfigError(f"hrf n_train_per_category must be >= 0, got {n_train_per_category}")
    root = _folder(Path(root).resolve(), "HRF")
    images = _files(_folder(root / "images", "HRF images"), _JPEG)
    manuals = _files(_folder(root / "manual1", "HRF manual1"), (".tif", ".tiff", ".png", ".gif"))
    masks = _files(_folder(root / "mask", "HRF mask"), (".tif", ".tiff", ".png", ".gif"))
    if not images:
        raise DataError(root / "images", "no .jpg images")
    used: set[str] = set()
    per_category: dict[str, int] = {}
    records = []
    for image in images.values():
        stem = image.stem.lower()
        manual = next((name for name in manuals if name.rsplit(".", 1)[0] == stem), None)
        mask = next((name for name in masks if name.rsplit(".", 1)[0] == f"{stem}_mask"), None)
        used.update(name for name in (manual, mask) if name)
        if manual is None or mask is None:
            missing = f"manual1/{image.stem}.tif" if manual is None else f"mask/{image.stem}_mask.tif"
            _skip(skipped, image.stem, image, f"no {missing} for this image")
            continue
        category = stem.split("_", 1)[1] if "_" in stem else ""
        rank = per_category[category] = per_category.get(category, 0) + 1
        split = "train" if rank <= n_train_per_category else "test"
        records.append(_record(image.stem, image, manuals[manual], masks[mask], split, "hrf"))
    _unmatched({**manuals, **masks}, used, skipped, "HRF annotation")
    return records


VESSEL_BUILDERS: dict[str, tuple[Callable[..., list[dict[str, Any]]], str]] = {
    "drive": (build_drive, "DRIVE: training|test/images, 1st_manual, mask (2nd_manual on test)"),
    "chase-db1": (build_chase_db1, "CHASE_DB1 flat release (Image_01L.jpg, _1stHO/_2ndHO.png); FOV derived; 20 train / 8 test "
                                  "(val_subjects: the last training subjects validate)"),
    "stare": (build_stare, "STARE: imNNNN.ppm with labels-ah / labels-vk; FOV derived"),
    "hrf": (build_hrf, "HRF: images/*.jpg, manual1/*.tif, mask/*_mask.tif"),
}


def register_vessel_datasets(catalog: Any) -> None:
    """Add the vessel dataset builders (``drive``, ``chase-db1``, ``stare``, ``hrf``; the fundus phantoms are the built-in ``phantom-fundus``) to ``catalog``.

    Args:
        catalog: the plugin's view of the dataset catalog (``catalog.add_builder(name, fn, description=...)``).
    """
    for name, (builder, description) in VESSEL_BUILDERS.items():
        catalog.add_builder(name, builder, description=description)
