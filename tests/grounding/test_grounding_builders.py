"""The MS-CXR builder (release CSV layout over resized JPG/PNG files) and the box-manifest builder, bad rows included."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError
from workbench.host import create_plugin_manager
from workbench_plugins.grounding.builders import MS_CXR_COLUMNS, build_box_manifest, build_ms_cxr


def _write_image(path: Path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), 128, dtype=np.uint8)).save(path)


def _ms_cxr(tmp_path: Path) -> Path:
    """Two images stored at a quarter of their original DICOM size, and four bad rows."""
    root = tmp_path / "ms-cxr"
    _write_image(root / "files/p10/p1000/s1/aaa.jpg", 512, 640)  # original 2048 x 2560 (H x W)
    _write_image(root / "files/p10/p1001/s2/bbb.jpg", 250, 250)  # original 1000 x 1000
    _write_image(root / "files/p10/p1002/s3/ddd.jpg", 100, 100)
    rows = [
        ("aaa", "Pneumonia", "left lower lobe consolidation", 1600, 1200, 400, 300, 2560, 2048, "files/p10/p1000/s1/aaa.jpg"),
        ("aaa", "Pleural effusion", "small left effusion", 2000, 1600, 200, 200, 2560, 2048, "files/p10/p1000/s1/aaa.jpg"),
        ("bbb", "Cardiomegaly", "enlarged heart", 100, 200, 800, 600, 1000, 1000, "files/p10/p1001/s2/bbb.jpg"),
        ("ccc", "Edema", "edema", 10, 10, 10, 10, 1000, 1000, "files/p10/p1009/s9/ccc.jpg"),  # missing file
        ("ddd", "Atelectasis", "basal atelectasis", 900, 900, 300, 300, 1000, 1000, "files/p10/p1002/s3/ddd.jpg"),  # outside
        ("bbb", "Pneumothorax", "", 10, 10, 10, 10, 1000, 1000, "files/p10/p1001/s2/bbb.jpg"),  # empty phrase
        ("bbb", "Pneumothorax", "apical pneumothorax", "ten", 10, 10, 10, 1000, 1000, "files/p10/p1001/s2/bbb.jpg"),  # bad number
    ]
    with open(root / "MS_CXR_Local_Alignment_v1.0.0.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MS_CXR_COLUMNS)
        writer.writerows(rows)
    return root


def test_ms_cxr_rescales_boxes_to_the_files_found_and_lists_bad_rows(tmp_path):
    skipped = SkippedRecords(tmp_path / "skipped.csv")
    records = build_ms_cxr(_ms_cxr(tmp_path), skipped=skipped)
    assert [record["id"] for record in records] == ["aaa", "bbb"]
    first = records[0]
    assert first["image"].endswith("aaa.jpg") and first["split"] in ("train", "val", "test")
    assert [box["phrase"] for box in first["boxes"]] == ["left lower lobe consolidation", "small left effusion"]
    assert first["boxes"][0] == {"phrase": "left lower lobe consolidation", "category": "Pneumonia", "x": 400.0, "y": 300.0, "w": 100.0, "h": 75.0}
    assert records[1]["boxes"][0] == {"phrase": "enlarged heart", "category": "Cardiomegaly", "x": 25.0, "y": 50.0, "w": 200.0, "h": 150.0}
    reasons = {row[0]: row[2] for row in skipped.rows}
    assert set(reasons) == {"ccc", "ddd", "bbb"} and len(skipped.rows) == 4
    assert "not found" in reasons["ccc"] and "outside" in reasons["ddd"]
    assert any("empty label_text" in row[2] for row in skipped.rows) and any("ten" in row[2] for row in skipped.rows)


def test_ms_cxr_builder_is_registered_and_refuses_a_csv_without_its_columns(tmp_path):
    host = create_plugin_manager()
    assert "ms-cxr" in host.datasets.builders and "box-manifest" in host.datasets.builders
    bad = tmp_path / "other.csv"
    bad.write_text("dicom_id,x,y\n1,2,3\n")
    with pytest.raises(ConfigError, match="missing columns category_name"):
        build_ms_cxr(bad)
    with pytest.raises(ConfigError, match="no MS-CXR CSV"):
        build_ms_cxr(tmp_path / "empty-folder-that-is-missing")


def test_box_manifest_keeps_good_lines_and_lists_bad_ones(tmp_path):
    _write_image(tmp_path / "a.png", 20, 20)
    lines = [
        {"id": "a", "image": "a.png", "boxes": [{"phrase": "nodule", "x": 1, "y": 2, "w": 3, "h": 4}]},
        {"id": "b", "image": "a.png", "boxes": [{"phrase": "", "x": 1, "y": 2, "w": 3, "h": 4}]},
    ]
    (tmp_path / "boxes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    skipped = SkippedRecords()
    records = build_box_manifest(tmp_path / "boxes.jsonl", skipped=skipped)
    assert [record["id"] for record in records] == ["a"] and Path(records[0]["image"]).is_absolute()
    assert len(skipped.rows) == 1 and "phrase" in skipped.rows[0][2]
