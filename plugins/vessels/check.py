"""``workbench check-topology``: connectivity checks of many vessel masks, JSON lines out.

Each prediction is read (PNG, GIF, TIFF, NIfTI, DICOM, through
:func:`workbench.data.readers.read_image` with stored values), binarised at
``> 0`` (0/255 PNGs and label maps are masks; probability maps and photographs
are refused), checked with :func:`~.topology.check_mask` and printed as one
JSON object per line on stdout. A file that cannot be used is named on stderr
with the reason and skipped; the exit status is 0 when every file was checked,
3 when some were skipped and 4 when all were (:func:`workbench.errors.batch_exit_status`).
``--frame N`` reads frame N of multi-frame DICOM masks.
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from workbench.data.masks import mask_plane, read_mask_values
from workbench.data.readers import SUFFIX_FORMATS, read_image
from workbench.errors import DataError, batch_exit_status
from workbench.fsutil import atomic_write_text
from workbench.report import HtmlReport, fmt, save_png
from workbench_plugins.vessels.topology.check import DEFAULT_BREAK_DISTANCE, DEFAULT_FRAGMENT_AREA, TopologyReport, check_mask
from workbench_plugins.vessels.topology.masks import binarise_mask, fov_from_fundus

TABLE_COLUMNS = ("file", "dice", "cldice", "cal", "betti0_error", "betti1_error", "n_components", "n_holes", "n_breaks", "n_spurious_fragments")
MAX_FIGURES = 60


def mask_stem(path: Path) -> str:
    """The file name without its image extension (``a.nii.gz`` -> ``a``)."""
    return path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and (name.endswith(".nii.gz") or path.suffix.lower() in SUFFIX_FORMATS)


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Files named directly, the image files of folders (sorted, not recursive) and glob matches.

    Args:
        items: file paths, folder paths or glob patterns.

    Returns:
        The files, in the order given (each folder and glob sorted).

    Raises:
        click.BadParameter: an item matches nothing.
    """
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(child for child in path.iterdir() if _is_image_file(child)))
        elif path.exists():
            found.append(path)
        elif glob.has_magic(str(item)):
            found.extend(sorted(Path(match) for match in glob.glob(str(item)) if _is_image_file(Path(match))))
        else:
            raise click.BadParameter(f"{item}: no such file or folder", param_hint="PRED/--reference/--fov")
    return found


@dataclass
class _Companions:
    """Finds the reference (or FOV) of a prediction: one file for all, one per prediction, or by stem in folders."""

    single: Path | None = None
    ordered: list[Path] | None = None
    by_stem: dict[str, Path] | None = None

    @classmethod
    def build(cls, items: Sequence[str], n_predictions: int, what: str, allow_single: bool) -> "_Companions | None":
        if not items:
            return None
        if all(Path(item).is_dir() for item in items):
            by_stem: dict[str, Path] = {}
            for path in expand_inputs(items):
                by_stem.setdefault(mask_stem(path), path)
            return cls(by_stem=by_stem)
        files = expand_inputs(items)
        if allow_single and len(files) == 1:
            return cls(single=files[0])
        if len(files) != n_predictions:
            raise click.UsageError(f"{len(files)} {what} files for {n_predictions} predictions: give one per prediction, or a folder matched by file name")
        return cls(ordered=files)

    def find(self, index: int, prediction: Path, what: str) -> Path:
        if self.single is not None:
            return self.single
        if self.ordered is not None:
            return self.ordered[index]
        match = (self.by_stem or {}).get(mask_stem(prediction))
        if match is None:
            raise DataError(prediction, f"no {what} named {mask_stem(prediction)}.* in the {what} folder")
        return match


def read_mask(path: Path, frame: int | None = None) -> np.ndarray:
    """Read a 2-D mask file as ``(H, W)`` bool (binarised at > 0; a two-colour image by its brighter colour).

    Args:
        path: the mask file.
        frame: the frame of a multi-frame DICOM.

    Raises:
        DataError: unreadable, not 2-D, a colour image, or not binary-like.
    """
    return binarise_mask(read_mask_values(path, frame=frame), path)


def read_fov(path: Path, frame: int | None = None) -> np.ndarray:
    """Read a field-of-view mask; a colour fundus photograph gives its derived FOV (:func:`fov_from_fundus`)."""
    image, _ = read_image(path, intensity="stored", frame=frame)
    try:
        plane = mask_plane(image, path)
    except DataError:
        if image.shape[0] != 3:
            raise
        return fov_from_fundus(image)  # more than two colours: a photograph
    return binarise_mask(plane, path)


class _Outputs:
    """The ``--out`` folder: an overlay PNG per mask, ``metrics.jsonl`` and ``index.html``."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "overlays").mkdir(parents=True, exist_ok=True)
        self._names: set[str] = set()

    def overlay(self, prediction: np.ndarray, report: TopologyReport, reference: np.ndarray | None, fov: np.ndarray | None, source: Path) -> str:
        from workbench_plugins.vessels.topology.overlay import draw_topology_overlay

        name, counter = mask_stem(source), 1
        while name in self._names:  # same stem from different folders
            counter += 1
            name = f"{mask_stem(source)}-{counter}"
        self._names.add(name)
        relative = f"overlays/{name}.png"
        save_png(self.folder / relative, draw_topology_overlay(prediction, report, reference, fov))
        return relative

    def finish(self, records: list[dict[str, Any]], failures: list[tuple[str, str]]) -> None:
        atomic_write_text(self.folder / "metrics.jsonl", "".join(json.dumps(record) + "\n" for record in records))
        key = "betti0_error" if records and "betti0_error" in records[0] else "n_components"
        ranked = sorted(records, key=lambda record: (-(record.get(key) or 0), record["file"]))
        page = HtmlReport("Vessel connectivity check", self.folder)
        page.section("Summary", lead="The connectivity of each vessel mask checked: how many pieces it falls into and, against a "
                                     "reference, where it breaks or adds vessels.")
        page.text(f"{len(records)} masks checked, {len(failures)} skipped. Sorted by {key}, worst first.")
        page.text("Overlay colours: white = prediction (blue where the reference disagrees), red = reference vessels missed, "
                  "yellow lines and circles = likely breaks, orange circles = spurious fragments, grey = outside the field of view.")
        page.section("Per mask", lead=f"One row per mask, the worst {key} first.").table(ranked, columns=[column for column in TABLE_COLUMNS if any(column in row for row in ranked)])
        page.section(f"Overlays (the {min(MAX_FIGURES, len(ranked))} worst)",
                     lead="Each of the worst masks drawn over its reference: breaks, missed vessels and spurious fragments marked.")
        page.figures((self.folder / row["overlay"], f"{Path(row['file']).name}: {key} {fmt(row.get(key))}") for row in ranked[:MAX_FIGURES])
        if failures:
            page.section("Skipped files", lead=f"The {len(failures)} files that could not be checked, and why.").table([{"file": name, "reason": reason} for name, reason in failures])
        page.write()


def check_files(predictions: Sequence[Path], references: _Companions | None, fovs: _Companions | None, out: Path | None,
                options: dict[str, Any], progress: bool = True, frame: int | None = None) -> Iterator[tuple[Path, dict[str, Any] | None, str | None]]:
    """Check each prediction, writing ``--out`` files as it goes and the report at the end.

    Args:
        predictions: the mask files.
        references, fovs: finders of each prediction's reference and field of view, or None.
        out: the output folder, or None.
        options: keyword options of :func:`~.topology.check_mask`.
        progress: show a progress bar on stderr.
        frame: the frame to read from multi-frame DICOM files (predictions, references and FOVs).

    Returns:
        An iterator of ``(path, record, None)`` for a checked file and ``(path, None, reason)`` for a skipped one.
    """
    outputs = _Outputs(out) if out is not None else None
    cached_fov: dict[Path, np.ndarray] = {}
    records: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    bar = Progress(TextColumn("[bold]check-topology"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=not progress, transient=True)
    with bar:
        task = bar.add_task("masks", total=len(predictions))
        for index, path in enumerate(predictions):
            try:
                prediction = read_mask(path, frame)
                reference_path = references.find(index, path, "reference") if references else None
                reference = read_mask(reference_path, frame) if reference_path else None
                fov_path = fovs.find(index, path, "field of view") if fovs else None
                if fov_path is not None and fov_path not in cached_fov:
                    cached_fov = {fov_path: read_fov(fov_path, frame)}  # one FOV for all is read once; per-file FOVs are not kept
                fov = cached_fov[fov_path] if fov_path is not None else None
                for name, other in ((reference_path, reference), (fov_path, fov)):
                    if other is not None and other.shape != prediction.shape:
                        raise DataError(name, f"shape {other.shape} does not match the prediction {path.name} {prediction.shape}")
                report = check_mask(prediction, reference, fov, **options)
            except DataError as error:
                reason = str(error) if error.path and error.path != str(path) else error.reason
                failures.append((str(path), reason))
                yield path, None, reason
            else:
                record = {"file": str(path), "reference": str(reference_path) if reference_path else None,
                          "fov": str(fov_path) if fov_path else None, **report.to_dict()}
                if outputs is not None:
                    record["overlay"] = outputs.overlay(prediction, report, reference, fov, path)
                records.append(record)
                yield path, record, None
            bar.advance(task)
    if outputs is not None:
        outputs.finish(records, failures)


@click.command("check-topology")
@click.argument("predictions", nargs=-1, required=True, metavar="PRED...")
@click.option("--reference", "references", multiple=True, metavar="REF",
              help="reference mask per prediction (same count, same order), or a folder matched by file name")
@click.option("--fov", "fovs", multiple=True, metavar="FOV",
              help="field-of-view mask (one for all, one per prediction, or a folder); a colour fundus photo gives its derived FOV")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="write overlays, metrics.jsonl and index.html here")
@click.option("--break-distance", type=click.FloatRange(min=0), default=DEFAULT_BREAK_DISTANCE, show_default=True,
              help="largest end-point gap (pixels) reported as a likely break")
@click.option("--fragment-area", type=click.IntRange(min=0), default=DEFAULT_FRAGMENT_AREA, show_default=True,
              help="largest component area (pixels) that can be a spurious fragment")
@click.option("--frame", type=click.IntRange(min=0), default=None, help="frame of multi-frame DICOM masks to check (0-based)")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def check_topology_command(predictions: tuple[str, ...], references: tuple[str, ...], fovs: tuple[str, ...], out: Path | None,
                           break_distance: float, fragment_area: int, frame: int | None, no_progress: bool) -> None:
    """Connectivity of vessel masks (PRED: files, folders or globs): Dice, clDice, Betti errors, CAL, breaks.

    Masks are binarised at > 0 (0/255 PNGs and label maps work; a two-colour image by its brighter colour).
    Prints one JSON object per mask. Exit status: 0 all checked, 3 some skipped, 4 all skipped.
    """
    files = expand_inputs(predictions)
    if not files:
        raise click.UsageError("no image files found in PRED")
    reference_finder = _Companions.build(references, len(files), "reference", allow_single=len(files) == 1)
    fov_finder = _Companions.build(fovs, len(files), "field-of-view", allow_single=True)
    options = {"break_distance": break_distance, "fragment_area": fragment_area}
    failed = 0
    for path, record, reason in check_files(files, reference_finder, fov_finder, out, options, progress=not no_progress, frame=frame):
        if record is not None:
            click.echo(json.dumps(record))
        else:
            failed += 1
            click.echo(f"skipped {path}: {reason}", err=True)
    status = batch_exit_status(len(files), failed)
    if status:
        click.echo(f"{failed} of the {len(files)} files failed", err=True)
        click.get_current_context().exit(status)
