"""Dataset builders for reporting: MIMIC-CXR-JPG studies with CheXpert labels and, optionally, each patient's prior report.

Layout (PhysioNet's): ``mimic-cxr-2.0.0-metadata.csv`` (required),
``mimic-cxr-2.0.0-chexpert.csv`` (required: the labels questions come from)
and ``mimic-cxr-2.0.0-split.csv`` beside ``files/``, each possibly
``.csv.gz``; images ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg``; reports
``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` under ``reports_root`` (MIMIC-CXR's
report archive). One record per study: its first frontal image (PA before
AP), its FINDINGS and IMPRESSION, its CheXpert labels (1, 0, -1, or ``None``
for blank). With ``prior_pairs`` each record also gets ``draft``: the same
patient's previous study's report (by StudyDate and StudyTime), the real-data
editing pair; studies with no prior are left out unless ``keep_first``.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from workbench.data.skipped import SkippedRecords
from workbench.errors import DataError
from workbench_plugins.reporting.findings import label_key

METADATA, CHEXPERT, SPLIT = "mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-split.csv"
_VIEW_ORDER = {"PA": 0, "AP": 1}
_HEADER = re.compile(r"(?im)^\s*([A-Z][A-Z /&()-]{1,40}):")


def _csv_path(root: Path, name: str, required: bool) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise DataError(root / name, "required MIMIC-CXR table not found (neither .csv nor .csv.gz)")
    return None


def _rows(path: Path, columns: Sequence[str]) -> Iterator[dict[str, str]]:
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [column for column in columns if column not in (reader.fieldnames or [])]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}")
    yield from reader


def report_sections(text: str) -> str:
    """FINDINGS and IMPRESSION of a MIMIC-CXR free-text report as ``"FINDINGS: ...\\n\\nIMPRESSION: ..."``.

    A report with neither header is used whole (after its last other header's text, e.g. a bare paragraph).
    Placeholders (``___``) are kept.

    Raises:
        DataError: (no path) an empty report.
    """
    headers = list(_HEADER.finditer(text))
    sections: dict[str, list[str]] = {}
    for index, header in enumerate(headers):
        name = header.group(1).strip().upper()
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        body = " ".join(text[header.end():end].split())
        key = "FINDINGS" if name.startswith("FINDING") else "IMPRESSION" if name in ("IMPRESSION", "IMPRESSIONS", "CONCLUSION") else None
        if key and body:
            sections.setdefault(key, []).append(body)
    if sections:
        return "\n\n".join(f"{key}: {' '.join(sections[key])}" for key in ("FINDINGS", "IMPRESSION") if key in sections)
    body = " ".join((text[headers[-1].end():] if headers else text).split())
    if not body:
        raise DataError(None, "empty report")
    return body


def chexpert_labels(row: dict[str, str]) -> dict[str, float | None]:
    """CheXpert columns of a row -> ``{label_key(name): 1.0 | 0.0 | -1.0 | None}`` (blank: not mentioned)."""
    labels: dict[str, float | None] = {}
    for name, value in row.items():
        if name in ("subject_id", "study_id"):
            continue
        value = (value or "").strip()
        labels[label_key(name)] = float(value) if value else None
    return labels


def _study_dir(root: Path, subject: str, study: str) -> Path:
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


def build_mimic_cxr_reporting(root: Path, *, reports_root: Path | None = None, views: Sequence[str] = ("PA", "AP"),
                              prior_pairs: bool = False, keep_first: bool = False, skipped: SkippedRecords | None = None,
                              **_: Any) -> list[dict[str, Any]]:
    """Dataset builder ``mimic-cxr-reporting`` (layout in the module docstring).

    Args:
        root: the MIMIC-CXR-JPG folder.
        reports_root: the folder holding the reports' ``files/`` (default ``root``).
        views: the view positions kept, in order of preference.
        prior_pairs: add ``draft`` = the same patient's previous report.
        keep_first: with ``prior_pairs``, keep a patient's first study (its ``draft`` is ``""``).
        skipped: the run's bad-record list (missing image or report, empty report).

    Returns:
        Records ``{"id": study, "image", "report", "labels", "split"?, "subject_id", "study_id", "view", "study_time", "draft"?}``
        ordered by patient and time.

    Raises:
        DataError: a required table is missing or lacks a column (naming it).
    """
    root = Path(root)
    reports_root = Path(reports_root) if reports_root else root
    skipped = skipped if skipped is not None else SkippedRecords()
    labels = {row["study_id"]: chexpert_labels(row) for row in _rows(_csv_path(root, CHEXPERT, True), ("subject_id", "study_id"))}
    split_path = _csv_path(root, SPLIT, False)
    split_of = {row["study_id"]: row["split"] for row in _rows(split_path, ("study_id", "split"))} if split_path else {}
    order = {view: rank for rank, view in enumerate(views)}
    chosen: dict[str, dict[str, str]] = {}
    for row in _rows(_csv_path(root, METADATA, True), ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")):
        view = row["ViewPosition"].strip()
        if view not in order:
            continue
        best = chosen.get(row["study_id"])
        if best is None or order[view] < order[best["ViewPosition"].strip()]:
            chosen[row["study_id"]] = row
    records = []
    for study, row in chosen.items():
        subject = row["subject_id"]
        folder = _study_dir(root, subject, study)
        record: dict[str, Any] = {"id": f"s{study}", "image": str(folder / f"{row['dicom_id']}.jpg"), "subject_id": subject, "study_id": study,
                                  "view": row["ViewPosition"].strip(), "study_time": f"{row['StudyDate']}{float(row['StudyTime'] or 0):011.3f}",
                                  "labels": labels.get(study, {})}
        report_file = _study_dir(reports_root, subject, study).with_suffix(".txt")
        try:
            if not Path(record["image"]).is_file():
                raise DataError(record["image"], "image file not found")
            if not report_file.is_file():
                raise DataError(report_file, "report file not found")
            record["report"] = report_sections(report_file.read_text(encoding="utf-8", errors="replace"))
        except DataError as error:
            skipped.add(record, DataError(error.path or report_file, error.reason))
            continue
        if study not in labels:
            skipped.add(record, DataError(root / CHEXPERT, f"study {study} has no CheXpert row"))
            continue
        if study in split_of:
            record["split"] = split_of[study]
        records.append(record)
    records.sort(key=lambda r: (r["subject_id"], r["study_time"]))
    if not prior_pairs:
        return records
    paired, previous = [], None
    for record in records:
        prior = previous if previous is not None and previous["subject_id"] == record["subject_id"] else None
        if prior is not None or keep_first:
            paired.append(dict(record, draft=prior["report"] if prior else "", prior_id=prior["id"] if prior else None))
        previous = record
    return paired
