"""Dataset builders: real image-report layouts -> records with absolute paths.

Each builder returns records ``{"id", "image", "report", "labels", "split",
"view"}`` (``split`` and ``view`` when the dataset says). A row whose image
or report file is missing, or whose fields cannot be read, is skipped and
listed in ``skipped`` (a :class:`~workbench.data.skipped.SkippedRecords`)
when one is given, never fatal; a missing top-level file (the metadata CSV)
raises :class:`~workbench.errors.DataError`. Report text is passed through
as written; the dataset's ``ReportTextd`` checks it (empty, placeholders
only) so those records are listed with the rest of the run's skips.

Label names are lower snake case (``"Pleural Effusion"`` -> ``"pleural_effusion"``),
the same spelling as the chest phantoms' findings, so zero-shot evaluation
uses one name per finding across datasets.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from workbench.data.manifests import read_manifest
from workbench.data.skipped import SkippedRecords
from workbench.errors import DataError

logger = logging.getLogger("workbench.contrastive")

MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
IU_REPORTS = "indiana_reports.csv"
IU_PROJECTIONS = "indiana_projections.csv"
_MIMIC_ID_COLUMNS = ("subject_id", "study_id")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a dicom_id becomes a file name: no separators, no "..".


def label_name(text: str) -> str:
    """A label's key in lower snake case.

    Args:
        text: a label as a dataset writes it, e.g. ``"Pleural Effusion"``, ``"Lung/hypoinflation"``.

    Returns:
        ``"pleural_effusion"``, ``"lung_hypoinflation"``: letters and digits joined by ``_``.
    """
    return "_".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _csv_file(root: Path, name: str, required: bool) -> Path | None:
    """``root/name`` or ``root/name.gz``; a missing required one is a :class:`DataError` naming what was looked for."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise DataError(root / name, f"missing (looked for {name} and {name}.gz in {root})")
    return None


def _read_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` for each row of a CSV (gzip when it ends in ``.gz``), cells stripped.

    Raises:
        DataError: the file cannot be read, or lacks one of ``columns``.
    """
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read: {error}") from error
    rows = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(rows, [])]
    missing = [column for column in columns if column not in header]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}; the header has {', '.join(header) or 'nothing'}")
    line = rows.line_num + 1
    for cells in rows:
        if any(cell.strip() for cell in cells):
            # a short row reads as blanks in its missing columns, so the row is judged by its fields, not a KeyError
            yield line, {name: (cells[index].strip() if index < len(cells) else "") for index, name in enumerate(header)}
        line = rows.line_num + 1


def _skip(skipped: SkippedRecords | None, record_id: str, file: Path | str, reason: str) -> None:
    if skipped is not None:
        skipped.add({"id": record_id}, reason, file=str(file))
    else:
        logger.warning("skipped %s (%s): %s", record_id, file, reason)


def _chexpert_labels(row: dict[str, str]) -> dict[str, int]:
    """1.0 -> 1 and 0.0 -> 0; uncertain (-1.0) and blank are left out, as neither is a known answer."""
    labels = {}
    for column, value in row.items():
        if column in _MIMIC_ID_COLUMNS or not value:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if number in (0.0, 1.0):
            labels[label_name(column)] = int(number)
    return labels


def _as_set(values: str | Sequence[str] | None) -> set[str] | None:
    if values is None:
        return None
    return {values} if isinstance(values, str) else set(values)


def _mimic_study_dir(root: Path, subject_id: str, study_id: str) -> Path:
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}"


def build_mimic_cxr_jpg(
    root: Path,
    *,
    reports_root: Path | None = None,
    views: Sequence[str] | None = ("PA", "AP"),
    splits: str | Sequence[str] | None = None,
    skipped: SkippedRecords | None = None,
) -> list[dict[str, Any]]:
    """Records of MIMIC-CXR-JPG: one per image, with its study's report and CheXpert labels.

    Layout: ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg`` with
    ``mimic-cxr-2.0.0-metadata.csv`` (required), ``-split.csv`` and
    ``-chexpert.csv`` beside ``files/`` (each may be ``.csv.gz``), and the
    reports ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` under ``reports_root``.
    Labels: 1.0 -> 1, 0.0 -> 0; uncertain (-1.0) and blank are absent
    from the dict, so a consumer decides how to treat unknowns instead of
    inheriting a silent "negative".

    Args:
        root: the MIMIC-CXR-JPG folder (holding ``files/`` and the CSVs).
        reports_root: the folder holding the reports' ``files/``; default ``root``.
        views: ``ViewPosition`` values to keep; ``None`` keeps every view.
        splits: ``"train"``, ``"validate"``, ``"test"`` or several; ``None`` keeps all.
        skipped: collects rows skipped for a missing image or report or unreadable ids.

    Returns:
        Records ``{"id": dicom_id, "image", "report", "labels", "split", "view",
        "subject_id", "study_id"}`` (``split`` when the split CSV is present).

    Raises:
        DataError: the metadata CSV is missing or lacks its columns, or
            ``splits`` is given without a split CSV.
    """
    root = Path(root).absolute()
    reports_root = Path(reports_root).absolute() if reports_root is not None else root
    metadata_path = _csv_file(root, MIMIC_METADATA, required=True)
    split_path = _csv_file(root, MIMIC_SPLIT, required=splits is not None)
    chexpert_path = _csv_file(root, MIMIC_CHEXPERT, required=False)
    keep_views, keep_splits = _as_set(views), _as_set(splits)

    split_of = {row["dicom_id"]: row["split"] for _, row in _read_rows(split_path, ("dicom_id", "split"))} if split_path else {}
    labels_of = {}
    if chexpert_path is not None:
        labels_of = {(row["subject_id"], row["study_id"]): _chexpert_labels(row) for _, row in _read_rows(chexpert_path, _MIMIC_ID_COLUMNS)}
    reports: dict[Path, str | None] = {}
    records = []
    for line, row in _read_rows(metadata_path, ("dicom_id", *_MIMIC_ID_COLUMNS)):
        dicom_id, subject_id, study_id = row["dicom_id"], row["subject_id"], row["study_id"]
        view = row.get("ViewPosition", "")
        if keep_views is not None and view not in keep_views:
            continue
        split = split_of.get(dicom_id)
        if keep_splits is not None and split not in keep_splits:
            continue
        if not _SAFE_ID.fullmatch(dicom_id) or not subject_id.isdigit() or not study_id.isdigit():
            _skip(skipped, dicom_id or f"{metadata_path.name}-{line}", metadata_path, f"line {line}: unreadable dicom_id/subject_id/study_id")
            continue
        image = _mimic_study_dir(root, subject_id, study_id) / f"{dicom_id}.jpg"
        if not image.is_file():
            _skip(skipped, dicom_id, image, "image file missing")
            continue
        report_path = _mimic_study_dir(reports_root, subject_id, study_id).with_suffix(".txt")
        if report_path not in reports:
            try:
                reports[report_path] = report_path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                reports[report_path] = None
        if reports[report_path] is None:
            _skip(skipped, dicom_id, report_path, "report file missing or unreadable")
            continue
        record = {"id": dicom_id, "image": str(image), "report": reports[report_path], "labels": labels_of.get((subject_id, study_id), {}),
                  "view": view or None, "subject_id": subject_id, "study_id": study_id}
        if split is not None:
            record["split"] = split
        records.append({key: value for key, value in record.items() if value is not None})
    return records


def _iu_report(findings: str, impression: str) -> str:
    sections = [f"{name}: {text}" for name, text in (("FINDINGS", findings), ("IMPRESSION", impression)) if text]
    return "\n".join(sections)


def _iu_labels(problems: str) -> dict[str, int]:
    """``"normal"`` -> ``{"normal": 1}``; ``"Cardiomegaly;Opacity"`` -> ``{"normal": 0, "cardiomegaly": 1, "opacity": 1}``."""
    terms = [label_name(term) for term in problems.split(";") if label_name(term)]
    if not terms:
        return {}
    if terms == ["normal"]:
        return {"normal": 1}
    return {"normal": 0, **{term: 1 for term in terms if term != "normal"}}


def build_iu_xray(
    root: Path,
    *,
    images_dir: str | Path = "images/images_normalized",
    projections: str | Sequence[str] | None = ("Frontal",),
    skipped: SkippedRecords | None = None,
) -> list[dict[str, Any]]:
    """Records of IU X-ray (the Kaggle "chest-xrays-indiana-university" layout): one per image.

    ``indiana_reports.csv`` (uid, Problems, findings, impression, ...) and
    ``indiana_projections.csv`` (uid, filename, projection) beside the PNG
    folder. The report is ``"FINDINGS: ...\\nIMPRESSION: ..."`` from the two
    columns (de-identification ``XXXX`` kept as written). Labels come from
    ``Problems``: ``{"normal": 1}`` for a normal study, else ``"normal": 0``
    and 1 for each problem term listed; terms not listed are unknown, not 0.
    IU X-ray has no official split, so records carry none.

    Args:
        root: the dataset folder.
        images_dir: the PNG folder, relative to ``root`` (or absolute).
        projections: projections to keep (``"Frontal"``, ``"Lateral"``); ``None`` keeps both.
        skipped: collects images that are missing, have no report row, or whose
            report has neither findings nor impression.

    Returns:
        Records ``{"id": filename, "image", "report", "labels", "view", "uid"}``.

    Raises:
        DataError: either CSV is missing or lacks its columns.
    """
    root = Path(root).absolute()
    image_root = root / images_dir
    reports_path = _csv_file(root, IU_REPORTS, required=True)
    projections_path = _csv_file(root, IU_PROJECTIONS, required=True)
    keep = _as_set(projections)
    reports_of = {row["uid"]: row for _, row in _read_rows(reports_path, ("uid", "findings", "impression"))}
    records = []
    for line, row in _read_rows(projections_path, ("uid", "filename", "projection")):
        uid, filename, projection = row["uid"], row["filename"], row["projection"]
        if keep is not None and projection not in keep:
            continue
        record_id = filename or f"{projections_path.name}-{line}"
        if not filename or not uid:
            _skip(skipped, record_id, projections_path, f"line {line}: empty uid or filename")
            continue
        image = image_root / filename
        if not image.is_file():
            _skip(skipped, record_id, image, "image file missing")
            continue
        study = reports_of.get(uid)
        if study is None:
            _skip(skipped, record_id, reports_path, f"no report row for uid {uid}")
            continue
        report = _iu_report(study.get("findings", ""), study.get("impression", ""))
        if not report:
            _skip(skipped, record_id, reports_path, f"uid {uid}: report has neither findings nor impression")
            continue
        records.append({"id": record_id, "image": str(image), "report": report, "labels": _iu_labels(study.get("Problems", "")),
                        "view": projection, "uid": uid})
    return records


def build_report_manifest(path: Path, *, skipped: SkippedRecords | None = None, **_: Any) -> list[dict[str, Any]]:
    """Records of a generic CSV / JSONL manifest of image-report pairs.

    Every record needs ``image`` and ``report``; relative image paths resolve
    against the manifest's folder. A malformed line or a missing image is
    skipped and listed.

    Args:
        path: the ``.csv`` or ``.jsonl`` (or ``.json``) manifest.
        skipped: collects the lines skipped.

    Returns:
        The records as :func:`~workbench.data.manifests.read_manifest` gives them.

    Raises:
        DataError: the manifest file does not exist.
        ManifestError: it cannot be read at all (unknown format, bad encoding, duplicate ids).
    """
    path = Path(path).absolute()
    if not path.is_file():
        raise DataError(path, "manifest file not found")
    records, problems = read_manifest(path, require=("image", "report"), on_error="skip")
    for line, reason in problems:
        _skip(skipped, f"{path.stem}-{line}", path, f"line {line}: {reason}")
    present = []
    for record in records:
        if Path(record["image"]).is_file():
            present.append(record)
        else:
            _skip(skipped, record["id"], record["image"], "image file missing")
    return present
