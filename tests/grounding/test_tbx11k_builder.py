"""The tbx11k builder on a tiny YOLO tree written here (with bad label lines), and on the shared real set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.shared_data import TBX11K_SMALL, requires_tbx11k
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench_plugins.grounding.builders_tbx11k import build_tbx11k, chest_place, finding_phrase, parse_label_line

CLASSES = "Active Tuberculosis\nObsolete Pulmonary TB\nPulmonary Tuberculosis\n"


def _write_tree(root: Path, labels: dict[str, str | None], size: tuple[int, int] = (200, 300)) -> Path:
    """``labels``: image stem -> label file text (``None``: no label file). ``size`` is (width, height)."""
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text(CLASSES, encoding="utf-8")
    for stem, text in labels.items():
        Image.fromarray(np.zeros((size[1], size[0]), dtype=np.uint8)).save(root / "images" / "train" / f"{stem}.png")
        if text is not None:
            (root / "labels" / "train" / f"{stem}.txt").write_text(text, encoding="utf-8")
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return _write_tree(tmp_path / "tbx", {
        # image left (x centre 0.25), upper third (y 0.1): the patient's right upper zone; then the left lower zone
        "tb0001": "0 0.25 0.1 0.1 0.1\n1 0.75 0.9 0.2 0.1\n",
        "tb0002": "0 0.5 0.5 0.2 0.2\nnot a box\n7 0.5 0.5 0.1 0.1\n2 0.95 0.5 0.2 0.2\n",  # 1 good, 3 bad
        "tb0003": "0 0.5 0.5 0.1\n",  # every line bad: the image goes
        "tb0004": "",                 # empty label file
        "tb0005": None,               # no label file
    })


def test_boxes_in_pixels_with_place_phrases(tree):
    records = {record["id"]: record for record in build_tbx11k(tree, val_fraction=0.0, test_fraction=0.0)}
    assert sorted(records) == ["tb0001", "tb0002"]
    first = records["tb0001"]
    assert (first["width"], first["height"], first["split"]) == (200, 300, "train")
    assert first["image"] == str((tree / "images" / "train" / "tb0001.png").absolute())
    upper, lower = first["boxes"]
    assert upper["phrase"] == "active tuberculosis in the right upper zone"
    assert (upper["category"], upper["finding"], upper["place"]) == ("active_tuberculosis", "active tuberculosis", "right upper zone")
    assert [upper[key] for key in ("x", "y", "w", "h")] == pytest.approx([40.0, 15.0, 20.0, 30.0])
    assert lower["phrase"] == "obsolete pulmonary TB in the left lower zone"
    assert [lower[key] for key in ("x", "y", "w", "h")] == pytest.approx([130.0, 255.0, 40.0, 30.0])


def test_phrase_form_without_place(tree):
    records = build_tbx11k(tree, phrase_form="without-place")
    phrases = sorted(box["phrase"] for record in records for box in record["boxes"])
    assert phrases == ["active tuberculosis", "active tuberculosis", "obsolete pulmonary TB"]
    assert all(box["place"] for record in records for box in record["boxes"])
    with pytest.raises(ConfigError, match="phrase_form"):
        build_tbx11k(tree, phrase_form="sideways")


def test_bad_lines_and_empty_images_are_listed_never_fatal(tree):
    skipped = SkippedRecords()
    records = build_tbx11k(tree, skipped=skipped)
    assert [len(record["boxes"]) for record in records] == [2, 1]
    rows = {row[0]: (Path(row[1]).name, row[2]) for row in skipped.rows}
    assert rows["tb0002:2"] == ("tb0002.txt", "line 2: expected 5 fields (class x_center y_center width height), got 3")
    assert rows["tb0002:3"][1].startswith("line 3: class 7 is out of range: classes.txt names 3 (0..2)")
    assert rows["tb0002:4"][1].startswith("line 4: box (x_center 0.95") and "out of range" in rows["tb0002:4"][1]
    assert rows["tb0003:1"][1] == "line 1: expected 5 fields (class x_center y_center width height), got 4"
    assert rows["tb0003"][1] == "no usable box: all 1 label line(s) were bad"
    assert rows["tb0004"][1] == "empty label file (empty_images=skip)"
    assert rows["tb0005"] == ("tb0005.txt", "no label file labels/train/tb0005.txt (empty_images=skip)")
    assert len(rows) == 7


def test_empty_images_kept_on_request(tree):
    records = {record["id"]: record for record in build_tbx11k(tree, empty_images="keep")}
    assert sorted(records) == ["tb0001", "tb0002", "tb0004", "tb0005"]
    assert records["tb0004"]["boxes"] == [] and records["tb0005"]["boxes"] == []


def test_seeded_image_splits(tmp_path):
    root = _write_tree(tmp_path / "many", {f"tb{index:04d}": "0 0.5 0.5 0.1 0.1\n" for index in range(40)}, size=(16, 16))
    splits = [record["split"] for record in build_tbx11k(root, seed=1, val_fraction=0.25, test_fraction=0.25)]
    assert Counter(splits) == {"train": 20, "val": 10, "test": 10}
    assert splits == [record["split"] for record in build_tbx11k(root, seed=1, val_fraction=0.25, test_fraction=0.25)]
    assert splits != [record["split"] for record in build_tbx11k(root, seed=2, val_fraction=0.25, test_fraction=0.25)]


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="classes.txt"):
        build_tbx11k(tmp_path)
    (tmp_path / "classes.txt").write_text(CLASSES, encoding="utf-8")
    with pytest.raises(DataError, match="images folder not found"):
        build_tbx11k(tmp_path)


@pytest.mark.parametrize(("x", "y", "place"), [
    (10, 10, "right upper zone"), (90, 10, "left upper zone"), (10, 50, "right middle zone"),
    (60, 99, "left lower zone"), (49.9, 33.2, "right upper zone"), (50, 33.4, "left middle zone"),
])
def test_chest_place_is_the_patients_side(x, y, place):
    assert chest_place(x, y, 100, 100) == place


def test_label_line_parsing_and_phrases():
    assert parse_label_line(" 2 0.5 0.5 0.2 0.4 ", 3) == (2, 0.5, 0.5, 0.2, 0.4)
    for line, problem in [("0 0.5 0.5 0 0.1", "must be in (0, 1]"), ("x 0.5 0.5 0.1 0.1", "not an integer"),
                          ("0 0.5 nan 0.1 0.1", "finite"), ("0 0.5 a 0.1 0.1", "not all numbers"), ("-1 0.5 0.5 0.1 0.1", "out of range")]:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            parse_label_line(line, 3)
    assert finding_phrase("Obsolete Pulmonary TB") == "obsolete pulmonary TB"


@requires_tbx11k
def test_real_tbx11k_records_and_splits():
    skipped = SkippedRecords()
    records = build_tbx11k(TBX11K_SMALL, skipped=skipped)
    assert len(records) == 599  # 600 images, one with an empty label file
    assert [row[0] for row in skipped.rows] == ["tb1199"]
    assert Counter(record["split"] for record in records) == {"train": 419, "val": 90, "test": 90}
    boxes = [box for record in records for box in record["boxes"]]
    assert len(boxes) == 902
    assert Counter(box["category"] for box in boxes) == {"active_tuberculosis": 724, "obsolete_pulmonary_tb": 178}
    assert all(0 <= box["x"] and box["x"] + box["w"] <= 512 and 0 <= box["y"] and box["y"] + box["h"] <= 512 for box in boxes)
    assert Counter(box["place"] for box in boxes)["right upper zone"] == 358
