"""The class-folders builder on tiny class folders written here, through the classifier's data settings, and on the shared paediatric set."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.shared_data import PEDIATRIC_CXR, requires_pediatric_cxr
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError
from workbench_plugins.counterfactual.builders import PEDIATRIC_CXR_GROUPS, build_class_folders
from workbench_plugins.counterfactual.data import labelled_records
from workbench_plugins.counterfactual.settings import LabelledDataSettings


def _write_folders(root: Path, files: dict[str, list[str]]) -> Path:
    for name, file_names in files.items():
        (root / name).mkdir(parents=True)
        for file_name in file_names:
            path = root / name / file_name
            if path.suffix in (".png", ".jpeg"):
                Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
            else:
                path.write_text("not an image")
    return root


@pytest.fixture()
def folders(tmp_path: Path) -> Path:
    normal = [f"IM-{patient:04d}-{view:04d}.jpeg" for patient in range(20) for view in range(1 + patient % 2)]
    pneumonia = [f"person{patient}_bacteria_{view}.jpeg" for patient in range(20) for view in range(1 + patient % 3)] + ["notes.txt", ".DS_Store"]
    return _write_folders(tmp_path / "cxr", {"NORMAL": normal, "PNEUMONIA": pneumonia})


def test_records_labels_and_non_images_listed(folders):
    skipped = SkippedRecords()
    records = build_class_folders(folders, skipped=skipped)
    assert len(records) == 30 + 39
    assert Counter((record["class_name"], record["label"]) for record in records) == {("NORMAL", 0): 30, ("PNEUMONIA", 1): 39}
    assert records[0]["id"] == "NORMAL/IM-0000-0000.jpeg" and records[0]["image"] == str((folders / "NORMAL" / "IM-0000-0000.jpeg").absolute())
    assert skipped.rows == [("PNEUMONIA/notes.txt", str((folders / "PNEUMONIA" / "notes.txt").absolute()),
                             "not an image file (.png, .jpg, .jpeg, .dcm)")]
    flipped = build_class_folders(folders, classes=["PNEUMONIA", "NORMAL"])
    assert flipped[0]["class_name"] == "PNEUMONIA" and flipped[0]["label"] == 0


def test_seeded_splits_keep_a_patient_on_one_side(folders):
    records = build_class_folders(folders, group_pattern=PEDIATRIC_CXR_GROUPS, val_fraction=0.2, test_fraction=0.2, seed=5)
    sides = defaultdict(set)
    for record in records:
        sides[record["group"]].add(record["split"])
    assert len(sides) == 40 and all(len(splits) == 1 for splits in sides.values())
    counts = Counter(record["split"] for record in records)
    assert abs(counts["val"] - 14) <= 3 and abs(counts["test"] - 14) <= 3, counts
    again = build_class_folders(folders, group_pattern=PEDIATRIC_CXR_GROUPS, val_fraction=0.2, test_fraction=0.2, seed=5)
    assert [record["split"] for record in again] == [record["split"] for record in records]
    other = build_class_folders(folders, group_pattern=PEDIATRIC_CXR_GROUPS, val_fraction=0.2, test_fraction=0.2, seed=6)
    assert [record["split"] for record in other] != [record["split"] for record in records]


def test_bad_layouts_are_clear_errors(tmp_path, folders):
    with pytest.raises(ConfigError, match="not a folder"):
        build_class_folders(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no folder EFFUSION"):
        build_class_folders(folders, classes=["NORMAL", "EFFUSION"])
    with pytest.raises(ConfigError, match="not a regular expression"):
        build_class_folders(folders, group_pattern="(person")
    empty = _write_folders(tmp_path / "empty", {"a": ["x.png"], "b": ["readme.txt"]})
    with pytest.raises(ConfigError, match="class 'b' has no image file"):
        build_class_folders(empty)


def test_classifier_folder_source_uses_the_seeded_builder(folders, tmp_path):
    data = LabelledDataSettings(source="folder", root=folders, group_pattern=PEDIATRIC_CXR_GROUPS, val_fraction=0.2, test_fraction=0.2,
                                split_seed=5)
    skipped = SkippedRecords()
    records, classes = labelled_records(data, builders=None, output_root=tmp_path, skipped=skipped)
    built = build_class_folders(folders, group_pattern=PEDIATRIC_CXR_GROUPS, val_fraction=0.2, test_fraction=0.2, seed=5)
    assert classes == ["NORMAL", "PNEUMONIA"]
    assert [(record["id"], record["split"], record["label"]) for record in records] == [
        (record["id"], record["split"], record["label"]) for record in built]
    assert len(skipped) == 1


@requires_pediatric_cxr
def test_real_pediatric_cxr_splits_by_patient():
    records = build_class_folders(PEDIATRIC_CXR, group_pattern=PEDIATRIC_CXR_GROUPS)
    assert Counter(record["class_name"] for record in records) == {"NORMAL": 1000, "PNEUMONIA": 1000}
    assert Counter(record["split"] for record in records) == {"train": 1600, "val": 200, "test": 200}
    sides = defaultdict(set)
    for record in records:
        sides[re.match(PEDIATRIC_CXR_GROUPS, Path(record["image"]).name).group(1)].add(record["split"])
    assert len(sides) == 1765 and all(len(splits) == 1 for splits in sides.values())
    # without the pattern each file is its own group, and 66 patients' images straddle two splits
    per_file = build_class_folders(PEDIATRIC_CXR)
    straddling = defaultdict(set)
    for record in per_file:
        straddling[re.match(PEDIATRIC_CXR_GROUPS, Path(record["image"]).name).group(1)].add(record["split"])
    assert sum(len(splits) > 1 for splits in straddling.values()) == 66
