"""Vessel dataset builders: each release layout from tiny files written here, and the real CHASE_DB1."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.helpers.shared_data import CHASE_DB1, requires_chase_db1
from workbench.catalogs import DatasetCatalog
from workbench.data.readers import read_image
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench.jobs import train_and_held_out
from workbench.builtin import build_fundus_phantoms
from workbench_plugins.vessels.builders import (build_chase_db1, build_drive, build_hrf, build_stare,
                                                register_vessel_datasets)
from workbench_plugins.vessels.topology.masks import fov_from_fundus

SIZE = 24
RECORD_KEYS = {"id", "image", "mask", "fov", "split", "dataset"}


def fundus(size: int = SIZE) -> np.ndarray:
    """An RGB disc (red 160 inside a circle of radius 10, black outside)."""
    rows, cols = np.mgrid[:size, :size]
    inside = (rows - size / 2 + 0.5) ** 2 + (cols - size / 2 + 0.5) ** 2 <= 10 ** 2
    image = np.zeros((size, size, 3), np.uint8)
    image[inside] = (160, 70, 30)
    return image


def vessels(size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[size // 2 - 1: size // 2 + 1, 4:-4] = 255
    return mask


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def write_drive(root: Path, training: tuple[str, ...] = ("21", "22"), test: tuple[str, ...] = ("01",)) -> None:
    for subset, numbers in (("training", training), ("test", test)):
        for number in numbers:
            save(root / subset / "images" / f"{number}_{subset}.tif", fundus())
            save(root / subset / "1st_manual" / f"{number}_manual1.gif", vessels())
            save(root / subset / "mask" / f"{number}_{subset}_mask.gif", (fov_from_fundus(fundus()) * 255).astype(np.uint8))
            if subset == "test":
                save(root / subset / "2nd_manual" / f"{number}_manual2.gif", vessels())


def check_paths(records: list[dict]) -> None:
    for record in records:
        assert RECORD_KEYS <= set(record)
        for key in ("image", "mask", "fov", "mask2"):
            if record.get(key) is not None:
                assert Path(record[key]).is_absolute() and Path(record[key]).is_file(), (key, record[key])


def test_drive_records_splits_and_second_observer(tmp_path):
    write_drive(tmp_path)
    records = build_drive(tmp_path)
    check_paths(records)
    by_id = {record["id"]: record for record in records}
    assert sorted(by_id) == ["01_test", "21_training", "22_training"]
    assert [by_id[name]["split"] for name in ("21_training", "22_training", "01_test")] == ["train", "train", "test"]
    assert by_id["01_test"]["mask2"].endswith("01_manual2.gif") and "mask2" not in by_id["21_training"]
    assert by_id["22_training"]["mask"].endswith("22_manual1.gif") and by_id["22_training"]["fov"].endswith("22_training_mask.gif")
    assert {record["dataset"] for record in records} == {"drive"}


def test_drive_bad_records_are_listed_and_skipped(tmp_path):
    write_drive(tmp_path)
    (tmp_path / "training" / "1st_manual" / "22_manual1.gif").unlink()
    save(tmp_path / "training" / "1st_manual" / "40_manual1.gif", vessels())  # an annotation without an image
    skipped = SkippedRecords(tmp_path / "run" / "skipped.csv")
    records = build_drive(tmp_path, skipped=skipped)
    assert sorted(record["id"] for record in records) == ["01_test", "21_training"]
    rows = {row[0]: row for row in skipped.rows}
    assert rows["22_training"][1].endswith("22_training.tif") and "22_manual1" in rows["22_training"][2]
    assert rows["40_manual1"][1].endswith("40_manual1.gif") and "without a matching image" in rows["40_manual1"][2]


def test_drive_missing_folders_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="neither training/ nor test/"):
        build_drive(tmp_path)
    write_drive(tmp_path)
    for path in (tmp_path / "test" / "mask").iterdir():
        path.unlink()
    (tmp_path / "test" / "mask").rmdir()
    with pytest.raises(DataError) as error:
        build_drive(tmp_path)
    assert error.value.path == str(tmp_path.resolve() / "test" / "mask")


def write_chase(root: Path, names: tuple[str, ...] = ("01L", "01R", "10R", "11L", "14R")) -> None:
    for name in names:
        save(root / f"Image_{name}.jpg", fundus(), quality=95)
        save(root / f"Image_{name}_1stHO.png", vessels())
        second = vessels()
        second[2, 2] = 255  # the observers differ
        save(root / f"Image_{name}_2ndHO.png", second)


def test_chase_split_by_subject_reference_and_fov_cache(tmp_path):
    write_chase(tmp_path / "chase")
    records = build_chase_db1(tmp_path / "chase", fov_dir=tmp_path / "fov")
    check_paths(records)
    assert {record["id"]: record["split"] for record in records} == {
        "Image_01L": "train", "Image_01R": "train", "Image_10R": "train", "Image_11L": "test", "Image_14R": "test"}
    first = records[0]
    assert first["mask"].endswith("Image_01L_1stHO.png") and first["mask2"].endswith("Image_01L_2ndHO.png")
    fov, _ = read_image(first["fov"], intensity="stored")
    expected = fov_from_fundus(read_image(first["image"])[0])
    assert np.array_equal(fov[0] > 0, expected) and 0.2 < expected.mean() < 0.45  # radius 10, eroded by 3
    stamp = os.stat(first["fov"]).st_mtime_ns
    again = build_chase_db1(tmp_path / "chase", reference="2ndHO", fov_dir=tmp_path / "fov")
    assert os.stat(again[0]["fov"]).st_mtime_ns == stamp  # derived once, then reused
    assert again[0]["mask"].endswith("_2ndHO.png") and again[0]["mask2"].endswith("_1stHO.png")
    assert all(record["fov"] is None for record in build_chase_db1(tmp_path / "chase"))  # derived when loaded


def test_chase_val_subjects_take_the_last_training_subjects_through_data_options(tmp_path):
    write_chase(tmp_path, ("01L", "01R", "08R", "09L", "09R", "10L", "10R", "11L"))
    catalog = DatasetCatalog()
    register_vessel_datasets(catalog.scoped("vessels"))
    data = SimpleNamespace(dataset="chase-db1", root=tmp_path, options={"reference": "1stHO", "val_subjects": 2},
                           train_split=["train"], eval_split=["val"], max_train=None, max_eval=None)
    train, val = train_and_held_out(data, catalog.builders, tmp_path)
    assert [record["id"] for record in train] == ["Image_01L", "Image_01R", "Image_08R"]
    assert [record["id"] for record in val] == ["Image_09L", "Image_09R", "Image_10L", "Image_10R"]
    splits = {record["id"]: record["split"] for record in build_chase_db1(tmp_path, val_subjects=1)}
    assert splits["Image_09R"] == "train" and splits["Image_10L"] == "val" and splits["Image_11L"] == "test"
    assert "val" not in {record["split"] for record in build_chase_db1(tmp_path)}  # the default keeps the usual split
    for bad in (-1, 10, 2.5, True, "2"):
        with pytest.raises(ConfigError, match="val_subjects must be an integer from 0 to 9"):
            build_chase_db1(tmp_path, val_subjects=bad)


def test_chase_bad_input(tmp_path):
    write_chase(tmp_path)
    (tmp_path / "Image_11L_1stHO.png").unlink()
    save(tmp_path / "Image_13L_1stHO.png", vessels())
    skipped = SkippedRecords()
    records = build_chase_db1(tmp_path, skipped=skipped)
    assert "Image_11L" not in {record["id"] for record in records} and len(records) == 4
    assert "Image_11L_1stHO" in dict((row[0], row[2]) for row in skipped.rows)["Image_11L"]
    assert any(row[1].endswith("Image_13L_1stHO.png") for row in skipped.rows)
    with pytest.raises(ConfigError, match="reference"):
        build_chase_db1(tmp_path, reference="3rdHO")
    with pytest.raises(DataError, match="no Image_NNL.jpg"):
        build_chase_db1(_empty(tmp_path / "empty"))
    with pytest.raises(DataError, match="folder not found"):
        build_chase_db1(tmp_path / "nowhere")


def _empty(path: Path) -> Path:
    path.mkdir()
    return path


def test_chase_image_without_field_of_view_is_skipped(tmp_path):
    write_chase(tmp_path / "chase", ("01L", "02L"))
    save(tmp_path / "chase" / "Image_02L.jpg", np.zeros((SIZE, SIZE, 3), np.uint8))  # black: no aperture
    skipped = SkippedRecords()
    records = build_chase_db1(tmp_path / "chase", fov_dir=tmp_path / "fov", skipped=skipped)
    assert [record["id"] for record in records] == ["Image_01L"]
    assert skipped.rows[0][0] == "Image_02L" and "field of view" in skipped.rows[0][2]


def test_stare_observers_split_and_unmatched(tmp_path):
    for stem in ("im0001", "im0002", "im0003"):
        save(tmp_path / f"{stem}.ppm", fundus())
    for stem in ("im0001", "im0002", "im0009"):
        save(tmp_path / "labels-ah" / f"{stem}.ah.ppm", np.repeat(vessels()[..., None], 3, axis=2))
    save(tmp_path / "labels-vk" / "im0001.vk.ppm", np.repeat(vessels()[..., None], 3, axis=2))
    skipped = SkippedRecords()
    records = build_stare(tmp_path, n_train=1, skipped=skipped)
    check_paths(records)
    assert [(record["id"], record["split"]) for record in records] == [("im0001", "train"), ("im0002", "test")]
    assert records[0]["mask2"].endswith("im0001.vk.ppm") and "mask2" not in records[1] and records[0]["fov"] is None
    assert [row[0] for row in skipped.rows] == ["im0009"]  # im0003 has no annotation: not in the vessel set, not a bad record
    vk = build_stare(tmp_path, reference="vk")
    assert [record["id"] for record in vk] == ["im0001"] and vk[0]["mask2"].endswith("im0001.ah.ppm")


def test_stare_gzipped_release_is_named(tmp_path):
    (tmp_path / "labels-ah").mkdir()
    (tmp_path / "im0001.ppm.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match="gunzip"):
        build_stare(tmp_path)


def test_hrf_records_and_split_per_category(tmp_path):
    for stem, suffix in (("01_dr", ".JPG"), ("02_dr", ".jpg"), ("01_h", ".jpg"), ("02_h", ".jpg")):
        save(tmp_path / "images" / f"{stem}{suffix}", fundus())
        save(tmp_path / "manual1" / f"{stem}.tif", vessels())
        fov_rgb = np.repeat((fov_from_fundus(fundus()) * 255).astype(np.uint8)[..., None], 3, axis=2)  # HRF masks are RGB
        save(tmp_path / "mask" / f"{stem}_mask.tif", fov_rgb)
    (tmp_path / "mask" / "02_h_mask.tif").unlink()
    skipped = SkippedRecords()
    records = build_hrf(tmp_path, n_train_per_category=1, skipped=skipped)
    check_paths(records)
    assert {record["id"]: record["split"] for record in records} == {"01_dr": "train", "02_dr": "test", "01_h": "train"}
    assert [row[0] for row in skipped.rows] == ["02_h"] and "02_h_mask.tif" in skipped.rows[0][2]
    (tmp_path / "other" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="HRF manual1"):
        build_hrf(tmp_path / "other")


def test_fundus_phantom_written_once_and_rewritten_for_new_options(tmp_path):
    records = build_fundus_phantoms(tmp_path / "ph", n=3, size=64, seed=1)
    check_paths(records)
    assert len(records) == 3
    assert {record["split"] for record in records} <= {"train", "val", "test"}
    stamp = os.stat(records[0]["image"]).st_mtime_ns
    assert build_fundus_phantoms(tmp_path / "ph", n=3, size=64, seed=1) == records
    assert os.stat(records[0]["image"]).st_mtime_ns == stamp
    assert len(build_fundus_phantoms(tmp_path / "ph", n=4, size=64, seed=1)) == 4


def test_builders_registered_by_name():
    catalog = DatasetCatalog()
    register_vessel_datasets(catalog.scoped("vessels"))
    assert set(catalog.builders.by_plugin("vessels")) == {"drive", "chase-db1", "stare", "hrf"}
    assert catalog.builders.get("chase-db1") is build_chase_db1


@requires_chase_db1
def test_real_chase_db1(tmp_path):
    skipped = SkippedRecords()
    records = build_chase_db1(CHASE_DB1, fov_dir=tmp_path / "fov", skipped=skipped)
    assert len(records) == 28 and len(skipped) == 0
    train = [record["id"] for record in records if record["split"] == "train"]
    test = [record["id"] for record in records if record["split"] == "test"]
    assert len(train) == 20 and len(test) == 8
    assert train[0] == "Image_01L" and train[-1] == "Image_10R"
    assert test == [f"Image_{n}{side}" for n in range(11, 15) for side in "LR"]
    check_paths(records)
    held = build_chase_db1(CHASE_DB1, val_subjects=2)  # the benchmark's split: 01..08 train, 09..10 val, 11..14 test
    assert [record["id"] for record in held if record["split"] == "val"] == ["Image_09L", "Image_09R", "Image_10L", "Image_10R"]
    assert [record["split"] for record in held].count("train") == 16 and [record["id"] for record in held if record["split"] == "test"] == test
    fractions = [float((read_image(record["fov"], intensity="stored")[0] > 0).mean()) for record in records]
    # a 999x960 frame around a round aperture: about two thirds of the pixels are retina
    assert 0.55 < min(fractions) and max(fractions) < 0.8
