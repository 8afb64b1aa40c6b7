"""Dataset builders on tiny MIMIC-CXR-JPG, IU X-ray and manifest layouts written here."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data.skipped import SkippedRecords
from workbench.errors import DataError, ManifestError
from workbench_plugins.contrastive.builders import build_iu_xray, build_mimic_cxr_jpg, build_report_manifest, label_name
from workbench_plugins.contrastive.text import usable_report

CHEXPERT_COLUMNS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
                    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]


def _write_image(path: Path, value: int, suffix: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), value, dtype=np.uint8)).save(path, suffix)


def _write_csv(path: Path, header: list[str], rows: list[list[str]], gz: bool = False) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(buffer.getvalue().encode("utf-8")))
    else:
        path.write_text(buffer.getvalue(), encoding="utf-8")


# (dicom_id, subject_id, study_id, view, split)
MIMIC_IMAGES = [
    ("d1", "10000032", "50414267", "PA", "train"),
    ("d2", "10000032", "50414267", "LATERAL", "train"),
    ("d3", "10000032", "53189527", "AP", "validate"),
    ("d4", "11000011", "52000001", "PA", "test"),      # image file missing
    ("d5", "12000022", "58000002", "AP", "train"),     # report file missing
    ("d6", "x1200002", "58000003", "PA", "train"),     # unreadable subject id
]
MIMIC_REPORTS = {
    ("10000032", "50414267"): "FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS:\n Small left pleural effusion.\n\n IMPRESSION:\n Effusion.\n",
    ("10000032", "53189527"): "FINAL REPORT\n FINDINGS: The lungs are clear.\n IMPRESSION: No acute process.\n",
    ("11000011", "52000001"): "FINDINGS: Clear.\n",
}


def _mimic_layout(root: Path, gz: bool) -> None:
    for dicom_id, subject, study, _, _ in MIMIC_IMAGES:
        if dicom_id not in ("d4", "d6"):
            _write_image(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg", 100)
    for (subject, study), text in MIMIC_REPORTS.items():
        report = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text)
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns"],
               [[d, s, t, "CHEST (PA AND LAT)", v, "32", "32"] for d, s, t, v, _ in MIMIC_IMAGES], gz=gz)
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
               [[d, t, s, split] for d, s, t, _, split in MIMIC_IMAGES], gz=gz)
    chexpert = {name: "" for name in CHEXPERT_COLUMNS}
    first = {**chexpert, "Pleural Effusion": "1.0", "Cardiomegaly": "0.0", "Edema": "-1.0"}
    second = {**chexpert, "No Finding": "1.0"}
    _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_COLUMNS],
               [["10000032", "50414267", *first.values()], ["10000032", "53189527", *second.values()]], gz=gz)


@pytest.mark.parametrize("gz", [False, True])
def test_mimic_builder_reads_the_layout_and_lists_skips(tmp_path, gz):
    _mimic_layout(tmp_path, gz)
    skipped = SkippedRecords()
    records = build_mimic_cxr_jpg(tmp_path, skipped=skipped)
    assert [record["id"] for record in records] == ["d1", "d3"]  # LATERAL d2 is not a kept view
    first, second = records
    assert first["image"] == str(tmp_path.absolute() / "files/p10/p10000032/s50414267/d1.jpg")
    assert Path(first["image"]).is_absolute() and Path(first["image"]).is_file()
    assert usable_report(first["report"]) == "Small left pleural effusion. Effusion."
    assert first["labels"] == {"pleural_effusion": 1, "cardiomegaly": 0}  # -1.0 and blanks are absent
    assert (first["split"], first["view"], first["subject_id"], first["study_id"]) == ("train", "PA", "10000032", "50414267")
    assert second["labels"] == {"no_finding": 1}
    assert (second["split"], second["view"]) == ("validate", "AP")
    rows = {row[0]: row for row in skipped.rows}
    assert set(rows) == {"d4", "d5", "d6"}
    assert rows["d4"][1].endswith("s52000001/d4.jpg") and rows["d4"][2] == "image file missing"
    assert rows["d5"][1].endswith("p12/p12000022/s58000002.txt") and "report file missing" in rows["d5"][2]
    assert "line 7" in rows["d6"][2] and rows["d6"][1].endswith("metadata.csv" + (".gz" if gz else ""))


def test_mimic_builder_filters_views_and_splits_and_takes_a_reports_root(tmp_path):
    images, reports = tmp_path / "jpg", tmp_path / "reports"
    _mimic_layout(images, gz=True)
    (reports / "files").parent.mkdir(parents=True)
    (images / "files").rename(reports / "files")  # move everything, then put the images back
    for dicom_id, subject, study, _, _ in MIMIC_IMAGES:
        if dicom_id not in ("d4", "d6"):
            _write_image(images / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg", 50)
    every_view = build_mimic_cxr_jpg(images, reports_root=reports, views=None)
    assert [record["id"] for record in every_view] == ["d1", "d2", "d3"]
    assert every_view[1]["view"] == "LATERAL"
    only_validate = build_mimic_cxr_jpg(images, reports_root=reports, splits="validate")
    assert [record["id"] for record in only_validate] == ["d3"]
    assert build_mimic_cxr_jpg(images, reports_root=reports, splits=("train", "test"), views=("PA",))[0]["id"] == "d1"


def test_mimic_builder_without_the_metadata_csv_raises(tmp_path):
    (tmp_path / "files").mkdir()
    with pytest.raises(DataError) as caught:
        build_mimic_cxr_jpg(tmp_path)
    assert caught.value.path == str(tmp_path / "mimic-cxr-2.0.0-metadata.csv")
    assert "mimic-cxr-2.0.0-metadata.csv.gz" in caught.value.reason


def test_mimic_builder_needs_the_split_csv_only_to_filter_splits(tmp_path):
    _mimic_layout(tmp_path, gz=False)
    (tmp_path / "mimic-cxr-2.0.0-split.csv").unlink()
    (tmp_path / "mimic-cxr-2.0.0-chexpert.csv").unlink()
    records = build_mimic_cxr_jpg(tmp_path)
    assert [record["id"] for record in records] == ["d1", "d3"]
    assert all("split" not in record and record["labels"] == {} for record in records)
    with pytest.raises(DataError, match="split"):
        build_mimic_cxr_jpg(tmp_path, splits="train")


def test_mimic_builder_names_a_missing_column(tmp_path):
    _write_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject"], [["d1", "1"]])
    with pytest.raises(DataError, match="missing column"):
        build_mimic_cxr_jpg(tmp_path)


def _iu_layout(root: Path) -> None:
    images = root / "images" / "images_normalized"
    for name in ("1_IM-0001-4001.dcm.png", "1_IM-0001-3001.dcm.png", "2_IM-0652-1001.dcm.png", "4_IM-2050-1001.dcm.png"):
        _write_image(images / name, 80, "PNG")
    _write_csv(root / "indiana_reports.csv", ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"], [
        ["1", "normal", "normal", "Xray Chest PA and Lateral", "Positive TB test", "None.",
         "The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema.", "Normal chest x-XXXX."],
        ["2", "Cardiomegaly/borderline;Pulmonary Artery/enlarged", "Cardiomegaly;Pulmonary Artery",
         "Chest, 2 views", "XXXX-year-old male", "None.", "Borderline cardiomegaly. Midline sternotomy XXXX.", "No acute pulmonary findings."],
        ["3", "normal", "normal", "PA", "", "", "", ""],
        ["4", "Opacity/lung", "Opacity;Lung/hypoinflation", "PA", "", "", "", "Hypoinflation with basilar opacity."],
    ])
    _write_csv(root / "indiana_projections.csv", ["uid", "filename", "projection"], [
        ["1", "1_IM-0001-4001.dcm.png", "Frontal"],
        ["1", "1_IM-0001-3001.dcm.png", "Lateral"],
        ["2", "2_IM-0652-1001.dcm.png", "Frontal"],
        ["3", "3_IM-1384-1001.dcm.png", "Frontal"],  # image missing
        ["4", "4_IM-2050-1001.dcm.png", "Frontal"],
        ["9", "9_IM-9999-1001.dcm.png", "Frontal"],  # no image and no report row
    ])


def test_iu_builder_reads_the_layout_and_lists_skips(tmp_path):
    _iu_layout(tmp_path)
    skipped = SkippedRecords(tmp_path / "run" / "skipped.csv")
    records = build_iu_xray(tmp_path, skipped=skipped)
    assert [record["id"] for record in records] == ["1_IM-0001-4001.dcm.png", "2_IM-0652-1001.dcm.png", "4_IM-2050-1001.dcm.png"]
    normal, cardio, hypo = records
    assert normal["image"] == str(tmp_path.absolute() / "images/images_normalized/1_IM-0001-4001.dcm.png")
    assert normal["report"] == ("FINDINGS: The cardiac silhouette and mediastinum size are within normal limits. There is no pulmonary edema.\n"
                                "IMPRESSION: Normal chest x-XXXX.")
    assert usable_report(normal["report"]).endswith("There is no pulmonary edema. Normal chest x-___.")
    assert normal["labels"] == {"normal": 1} and normal["view"] == "Frontal" and normal["uid"] == "1"
    assert cardio["labels"] == {"normal": 0, "cardiomegaly": 1, "pulmonary_artery": 1}
    assert hypo["report"] == "IMPRESSION: Hypoinflation with basilar opacity."
    assert hypo["labels"] == {"normal": 0, "opacity": 1, "lung_hypoinflation": 1}
    assert "split" not in normal
    with open(tmp_path / "run" / "skipped.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "file", "reason"]
    assert {row[0]: row[2] for row in rows[1:]} == {"3_IM-1384-1001.dcm.png": "image file missing", "9_IM-9999-1001.dcm.png": "image file missing"}


def test_iu_builder_projections_and_an_empty_report(tmp_path):
    _iu_layout(tmp_path)
    _write_image(tmp_path / "images" / "images_normalized" / "3_IM-1384-1001.dcm.png", 10, "PNG")
    skipped = SkippedRecords()
    both = build_iu_xray(tmp_path, projections=None, skipped=skipped)
    assert [record["view"] for record in both] == ["Frontal", "Lateral", "Frontal", "Frontal"]
    reasons = {row[0]: row[2] for row in skipped.rows}
    assert reasons["3_IM-1384-1001.dcm.png"] == "uid 3: report has neither findings nor impression"
    lateral = build_iu_xray(tmp_path, projections="Lateral")
    assert [record["id"] for record in lateral] == ["1_IM-0001-3001.dcm.png"]


def test_iu_builder_without_projections_csv_raises(tmp_path):
    _iu_layout(tmp_path)
    (tmp_path / "indiana_projections.csv").unlink()
    with pytest.raises(DataError) as caught:
        build_iu_xray(tmp_path)
    assert caught.value.path == str(tmp_path.absolute() / "indiana_projections.csv")


def test_report_manifest_builder_skips_bad_lines_and_missing_images(tmp_path):
    _write_image(tmp_path / "a.png", 1, "PNG")
    _write_image(tmp_path / "b.png", 2, "PNG")
    lines = [
        {"id": "a", "image": "a.png", "report": "FINDINGS: Clear lungs.", "labels": {"nodule": 0}},
        {"id": "b", "image": "b.png"},                                  # no report
        {"id": "c", "image": "missing.png", "report": "No effusion."},   # image missing
        {"id": "d", "image": str((tmp_path / "b.png").absolute()), "report": "Small nodule."},
    ]
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    skipped = SkippedRecords()
    records = build_report_manifest(manifest, skipped=skipped, unused_option=3)
    assert [(record["id"], Path(record["image"]).name, record["report"]) for record in records] == [
        ("a", "a.png", "FINDINGS: Clear lungs."), ("d", "b.png", "Small nodule.")]
    assert records[0]["image"] == str(tmp_path.absolute() / "a.png") and records[0]["labels"] == {"nodule": 0}
    reasons = {row[0]: row[2] for row in skipped.rows}
    assert reasons == {"pairs-2": "line 2: field 'report': required but missing or empty", "c": "image file missing"}


def test_report_manifest_builder_reads_csv_and_refuses_a_missing_file(tmp_path):
    _write_image(tmp_path / "img" / "x.png", 3, "PNG")
    _write_csv(tmp_path / "pairs.csv", ["image", "report"], [["img/x.png", "IMPRESSION: Normal."]])
    records = build_report_manifest(tmp_path / "pairs.csv")
    assert records == [{"image": str(tmp_path.absolute() / "img/x.png"), "report": "IMPRESSION: Normal.", "id": "pairs-2"}]
    with pytest.raises(DataError, match="manifest file not found"):
        build_report_manifest(tmp_path / "absent.csv")
    (tmp_path / "pairs.txt").write_text("image\n")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        build_report_manifest(tmp_path / "pairs.txt")


@pytest.mark.parametrize(("text", "name"), [("Pleural Effusion", "pleural_effusion"), ("Lung/hypoinflation", "lung_hypoinflation"),
                                             ("No Finding", "no_finding"), ("  Support  Devices ", "support_devices")])
def test_label_names_are_snake_case(text, name):
    assert label_name(text) == name
