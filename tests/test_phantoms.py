"""The embedded phantoms: determinism, exact ground truth, reports, files and readers."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from PIL import Image
from scipy import ndimage
from skimage.measure import label
from skimage.morphology import skeletonize

from workbench.data.phantoms import (
    FINDINGS,
    drive_numbers,
    make_cxr_study,
    make_fundus,
    split_for_index,
    write_cxr_phantoms,
    write_fundus_phantoms,
)
from workbench.errors import ConfigError

N_STUDIES = 200
LUNG_FINDINGS = ("nodule", "consolidation", "pleural_effusion", "pneumothorax")
# Words that name each finding in a report sentence, and words that negate a sentence.
KEYWORDS = {
    "nodule": ("nodul",),
    "consolidation": ("consolidation",),
    "pleural_effusion": ("effusion",),
    "cardiomegaly": ("cardiomegaly", "cardiac", "heart"),
    "pneumothorax": ("pneumothorax",),
}
NEGATION = re.compile(r"\b(no|not|without|normal)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def studies():
    return [make_cxr_study(index, seed=0) for index in range(N_STUDIES)]


@pytest.fixture(scope="module")
def fundus_images():
    return [make_fundus(index, seed=0) for index in range(4)]


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


def column_extent(mask: np.ndarray) -> int:
    cols = np.nonzero(mask)[1]
    return int(cols.max() - cols.min() + 1)


def sentences(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"(?<=\.)\s+", text) if part.strip()]


# ---- chest studies -------------------------------------------------------------------------


def test_cxr_same_seed_and_index_give_identical_studies_and_others_differ():
    first, again = make_cxr_study(7, seed=3), make_cxr_study(7, seed=3)
    assert first.image.dtype == np.float32 and first.image.shape == (256, 256)
    assert np.array_equal(first.image, again.image)
    assert first.report == again.report and first.boxes == again.boxes and first.labels == again.labels
    assert first.masks.keys() == again.masks.keys()
    assert all(np.array_equal(first.masks[name], again.masks[name]) for name in first.masks)
    assert not np.array_equal(first.image, make_cxr_study(8, seed=3).image)
    assert not np.array_equal(first.image, make_cxr_study(7, seed=4).image)
    bigger = make_cxr_study(7, seed=3, size=384)
    assert bigger.image.shape == (384, 384) and 0.0 <= bigger.image.min() and bigger.image.max() <= 1.0


def test_cxr_prevalence_normal_fraction_and_labels(studies):
    normal = sum(not study.findings for study in studies) / len(studies)
    assert 0.25 <= normal <= 0.45
    counts = Counter(finding.name for study in studies for finding in study.findings)
    for name in FINDINGS:
        assert 0.12 <= counts[name] / len(studies) <= 0.32, (name, counts[name])
    assert any(len(study.findings) >= 2 for study in studies)
    for study in studies:
        assert list(study.labels) == list(FINDINGS)
        assert {name for name, value in study.labels.items() if value == 1} == {f.name for f in study.findings}
        assert set(study.masks) == {f.name for f in study.findings}
        for finding in study.findings:
            assert finding.size in ("small", "moderate", "large")
            assert finding.laterality in (("none",) if finding.name == "cardiomegaly" else ("left", "right"))


def test_cxr_masks_lie_where_each_finding_belongs(studies):
    for study in studies:
        union = np.zeros(study.image.shape, dtype=int)
        for finding in study.findings:
            union += finding.mask
            if finding.name == "cardiomegaly":
                assert np.array_equal(finding.mask, study.anatomy["heart"])
                continue
            lung = study.anatomy[f"lung_{finding.laterality}"]
            assert finding.mask.any() and not (finding.mask & ~lung).any(), (study.id, finding.name)
            lung_rows = np.nonzero(lung)[0]
            mask_rows = np.nonzero(finding.mask)[0]
            if finding.name == "pleural_effusion":  # at the base of its lung
                assert mask_rows.max() == lung_rows.max() and mask_rows.mean() > lung_rows.mean()
            if finding.name == "pneumothorax":  # the apex is where air collects
                assert mask_rows.min() == lung_rows.min()
        assert union.max() <= 1, f"{study.id}: finding masks overlap"
        label_map = study.label_map
        for name, mask in study.masks.items():
            assert np.array_equal(label_map == FINDINGS.index(name) + 1, mask)
        # Radiological convention: the heart bulges to the image's right (the patient's left).
        left_cols, right_cols = np.nonzero(study.anatomy["lung_left"])[1], np.nonzero(study.anatomy["lung_right"])[1]
        assert left_cols.min() > right_cols.max()
        assert np.nonzero(study.anatomy["heart"])[1].mean() > (right_cols.min() + left_cols.max()) / 2


def test_cxr_cardiothoracic_ratio_separates_cardiomegaly(studies):
    for study in studies:
        lungs = study.anatomy["lung_left"] | study.anatomy["lung_right"]
        ratio = column_extent(study.anatomy["heart"]) / column_extent(lungs)
        if study.labels["cardiomegaly"]:
            assert ratio > 0.5, (study.id, ratio)
        else:
            assert ratio < 0.5, (study.id, ratio)


def test_cxr_findings_are_visible_and_grow_with_their_size_word(studies):
    areas: dict[tuple[str, str], list[int]] = {}
    for study in studies:
        taken = np.zeros(study.image.shape, dtype=bool)
        for mask in study.masks.values():
            taken |= mask
        for finding in study.findings:
            areas.setdefault((finding.name, finding.size), []).append(int(finding.mask.sum()))
            if finding.name == "cardiomegaly":
                lungs = study.anatomy["lung_left"] | study.anatomy["lung_right"]
                assert study.image[finding.mask].mean() - study.image[lungs & ~taken].mean() > 0.2
                continue
            rest = study.anatomy[f"lung_{finding.laterality}"] & ~taken
            contrast = study.image[finding.mask].mean() - study.image[rest].mean()
            if finding.name == "pneumothorax":
                assert contrast < -0.05, (study.id, contrast)
            else:
                assert contrast > 0.07, (study.id, finding.name, contrast)
    for name in LUNG_FINDINGS:
        means = [np.mean(areas[(name, size)]) for size in ("small", "moderate", "large") if (name, size) in areas]
        assert len(means) == 3 and means[0] < means[1] < means[2], (name, means)


def test_cxr_boxes_are_mask_bounding_boxes_and_name_report_phrases(studies):
    for study in studies:
        assert [box["category"] for box in study.boxes] == [finding.name for finding in study.findings]
        for box, finding in zip(study.boxes, study.findings):
            assert (box["x"], box["y"], box["w"], box["h"]) == bounding_box(finding.mask) == finding.box
            assert box["phrase"] and box["phrase"] == finding.phrase and box["phrase"] in study.report
            assert finding.size in box["phrase"].lower() or finding.name == "cardiomegaly"
            if finding.laterality != "none":
                assert finding.laterality in box["phrase"].lower()
    phrases = Counter(box["category"] for study in studies for box in study.boxes)
    distinct = {name: len({box["phrase"] for study in studies for box in study.boxes if box["category"] == name}) for name in phrases}
    assert all(count >= 4 for count in distinct.values()), distinct


def test_cxr_reports_have_sections_negations_and_duplicates(studies):
    negated_anywhere = Counter()
    for study in studies:
        assert study.report.startswith("FINDINGS: ") and study.report.count("\n\nIMPRESSION: ") == 1
        findings_text, impression = study.report.removeprefix("FINDINGS: ").split("\n\nIMPRESSION: ")
        assert len(sentences(findings_text)) >= 2
        present = {finding.name for finding in study.findings}
        if not present:
            assert impression == "No acute cardiopulmonary process."
        for finding in study.findings:
            sentence = next(s for s in sentences(findings_text) if finding.phrase in s)
            assert not NEGATION.search(sentence), sentence
            assert any(word in impression.lower() for word in KEYWORDS[finding.name])
        mentioned_absent = 0
        for name in FINDINGS:
            if name in present:
                continue
            for sentence in sentences(findings_text):
                if any(word in sentence.lower() for word in KEYWORDS[name]):
                    assert NEGATION.search(sentence), (study.id, sentence)
                    mentioned_absent += 1
                    negated_anywhere[name] += 1
        assert mentioned_absent >= 1 or len(present) == len(FINDINGS)
    assert set(negated_anywhere) == set(FINDINGS)
    repeats = Counter(study.report for study in studies).most_common(1)[0]
    assert repeats[1] >= 2 and repeats[0].endswith("No acute cardiopulmonary process.")


def test_split_is_a_stable_hash_of_the_index():
    splits = [split_for_index(index) for index in range(2000)]
    counts = Counter(splits)
    assert abs(counts["train"] / 2000 - 0.8) < 0.04 and abs(counts["val"] / 2000 - 0.1) < 0.03
    assert splits == [split_for_index(index) for index in range(2000)]


# DX files carry no ImageOrientationPatient (not part of the DX IOD), which MONAI warns about; and
# MONAI warns when the optional nvImageCodec decoder is absent. Neither concerns the pixels tested here.
@pytest.mark.filterwarnings("ignore:.*ImageOrientationPatient:UserWarning", "ignore:.*nvImageCodec:UserWarning")
def test_written_cxr_files_round_trip_through_pydicom_pil_nibabel_and_monai(tmp_path):
    manifest = write_cxr_phantoms(tmp_path, 6, seed=5, formats=("dcm", "png", "nii"))
    assert manifest == tmp_path / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    with open(tmp_path / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(records) == len(rows) == 6
    for record, row in zip(records, rows):
        assert row["id"] == record["id"] and row["report"] == record["report"] and row["split"] == record["split"]
        for nested in ("boxes", "labels", "findings", "masks"):
            assert json.loads(row[nested]) == record[nested]

    dicom_reader, png_reader, nifti_reader = (LoadImage(reader=name, image_only=True) for name in ("PydicomReader", "PILReader", "NibabelReader"))
    uids = set()
    for index, record in enumerate(records):
        study = make_cxr_study(index, seed=5)
        assert record["id"] == study.id and record["report"] == study.report and record["split"] in ("train", "val", "test")
        assert record["findings"] == [f.name for f in study.findings] and record["labels"] == study.labels and record["boxes"] == study.boxes
        dataset = pydicom.dcmread(tmp_path / record["image"])
        assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" == dataset.file_meta.MediaStorageSOPClassUID
        assert dataset.Modality == "DX" and dataset.PhotometricInterpretation == "MONOCHROME2" and dataset.BitsStored == 12
        assert (dataset.Rows, dataset.Columns) == (256, 256) and float(dataset.PixelSpacing[0]) == pytest.approx(350 / 256, rel=1e-5)
        assert float(dataset.RescaleSlope) == 1.0 and float(dataset.RescaleIntercept) == 0.0 and float(dataset.WindowWidth) == 4096
        assert pydicom.uid.UID(dataset.StudyInstanceUID).is_valid and dataset.PatientID == f"PHANTOM-5-{index:05d}"
        uids.add(dataset.SOPInstanceUID)
        stored = dataset.pixel_array
        assert stored.dtype == np.uint16 and np.array_equal(stored, np.rint(study.image * 4095).astype(np.uint16))
        png = np.asarray(Image.open(tmp_path / record["image_png"]))
        assert png.dtype == np.uint8 and np.array_equal(png, np.rint(study.image * 255).astype(np.uint8))
        # Observed: MONAI's PydicomReader and PILReader both return 2-D images as (W, H), i.e. the
        # transpose of pydicom's and PIL's own (H, W) arrays; the images are not symmetric, so the
        # un-transposed comparison must fail.
        from_dicom = np.asarray(dicom_reader(str(tmp_path / record["image"])))
        from_png = np.asarray(png_reader(str(tmp_path / record["image_png"])))
        assert np.array_equal(from_dicom, stored.T.astype(np.float32))
        assert np.array_equal(from_png, png.T.astype(np.float32))
        assert np.abs(from_dicom / 4095 - from_png / 255).max() <= 0.5 / 255 + 0.5 / 4095 + 1e-6
        assert np.abs(from_dicom / 4095 - png / 255).max() > 0.2
        nifti = nib.load(tmp_path / record["image_nii"])
        assert np.array_equal(np.asarray(nifti.dataobj), stored.T)
        assert np.array_equal(np.asarray(nifti_reader(str(tmp_path / record["image_nii"]))), from_dicom)
        label_map = np.asarray(Image.open(tmp_path / record["mask"]))
        assert np.array_equal(label_map, study.label_map)
        for name, path in record["masks"].items():
            assert np.array_equal(np.asarray(Image.open(tmp_path / path)), study.masks[name].astype(np.uint8) * 255)
    assert len(uids) == 6


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="size"):
        make_cxr_study(0, size=32)
    with pytest.raises(ConfigError, match="formats"):
        write_cxr_phantoms(tmp_path, 2, formats=("jpeg",))
    with pytest.raises(ConfigError, match="layout"):
        write_fundus_phantoms(tmp_path, 2, layout="stare")
    with pytest.raises(ConfigError, match="at least 2"):
        write_fundus_phantoms(tmp_path, 1, layout="drive")


# ---- fundus images -------------------------------------------------------------------------


def test_fundus_same_seed_and_index_give_identical_images_and_others_differ():
    first, again = make_fundus(3, seed=1), make_fundus(3, seed=1)
    assert first.image.shape == (256, 256, 3) and first.image.dtype == np.uint8
    assert np.array_equal(first.image, again.image) and np.array_equal(first.vessels, again.vessels)
    other = make_fundus(4, seed=1)
    assert not np.array_equal(first.vessels, other.vessels) and not np.array_equal(first.image, other.image)


def test_fundus_fov_is_an_exact_disc_and_holds_everything(fundus_images):
    for fundus in fundus_images:
        rows, cols = np.mgrid[0:256, 0:256]
        assert np.array_equal(fundus.fov, np.hypot(rows - 127.5, cols - 127.5) <= 0.47 * 256)
        assert not (fundus.vessels & ~fundus.fov).any()
        assert not fundus.image[~fundus.fov].any() and fundus.image[fundus.fov].mean() > 30
        assert 0.04 < fundus.vessels[fundus.fov].mean() < 0.2


def test_fundus_trees_are_connected_with_thin_and_crossing_vessels(fundus_images):
    for fundus in fundus_images:
        assert np.array_equal(fundus.tree_masks.any(axis=0), fundus.vessels)
        assert len(fundus.tree_masks) >= 6 and {"artery", "vein"} <= set(fundus.tree_kinds)
        for tree in fundus.tree_masks:
            assert label(tree, connectivity=2).max() == 1
        assert 1 <= label(fundus.vessels, connectivity=2).max() <= len(fundus.tree_masks)
        skeleton = skeletonize(fundus.vessels)
        distance = ndimage.distance_transform_edt(fundus.vessels)
        assert (skeleton & (distance <= 1)).sum() > 0.3 * skeleton.sum()
        assert distance.max() >= 2.0  # the trunks are 4-6 px wide
        # Arteries cross veins away from the optic disc.
        disc_row, disc_col, disc_radius = fundus.optic_disc
        rows, cols = np.mgrid[0:256, 0:256]
        away = np.hypot(rows - disc_row, cols - disc_col) > 1.5 * disc_radius
        arteries = fundus.tree_masks[[kind == "artery" for kind in fundus.tree_kinds]].any(axis=0)
        veins = fundus.tree_masks[[kind == "vein" for kind in fundus.tree_kinds]].any(axis=0)
        assert label(arteries & veins & away, connectivity=2).max() >= 2


def test_fundus_vessels_are_darker_than_nearby_background(fundus_images):
    for fundus in fundus_images:
        green = fundus.image[..., 1].astype(float)
        near = ndimage.binary_dilation(fundus.vessels, iterations=4) & ~ndimage.binary_dilation(fundus.vessels, iterations=1) & fundus.fov
        assert green[fundus.vessels].mean() < green[near].mean() - 10
        # Thin vessels alone (1-2 px wide, 3 px away from any wider one) are still visibly darker.
        distance = ndimage.distance_transform_edt(fundus.vessels)
        thin = fundus.vessels & (distance <= 1) & ~ndimage.binary_dilation(distance > 1.5, iterations=3)
        assert thin.sum() > 200 and green[thin].mean() < green[near].mean() - 5


def test_fundus_manifest_and_drive_layout(tmp_path):
    manifest = write_fundus_phantoms(tmp_path / "plain", 3, seed=2, size=128)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [sorted(record) for record in records] == [["fov", "id", "image", "mask", "split"]] * 3
    for index, record in enumerate(records):
        fundus = make_fundus(index, seed=2, size=128)
        assert np.array_equal(np.asarray(Image.open(manifest.parent / record["image"])), fundus.image)
        assert np.array_equal(np.asarray(Image.open(manifest.parent / record["mask"])) > 0, fundus.vessels)
        assert np.array_equal(np.asarray(Image.open(manifest.parent / record["fov"])) > 0, fundus.fov)

    root = write_fundus_phantoms(tmp_path / "drive", 5, seed=2, size=128, layout="drive")
    assert root == tmp_path / "drive"
    assert drive_numbers(5) == [("training", "03"), ("training", "04"), ("training", "05"), ("test", "01"), ("test", "02")]
    expected = {
        "training/images": {"03_training.tif", "04_training.tif", "05_training.tif"},
        "training/1st_manual": {"03_manual1.gif", "04_manual1.gif", "05_manual1.gif"},
        "training/mask": {"03_training_mask.gif", "04_training_mask.gif", "05_training_mask.gif"},
        "test/images": {"01_test.tif", "02_test.tif"},
        "test/1st_manual": {"01_manual1.gif", "02_manual1.gif"},
        "test/mask": {"01_test_mask.gif", "02_test_mask.gif"},
    }
    for folder, names in expected.items():
        assert {path.name for path in (root / folder).iterdir()} == names
    first_test = make_fundus(3, seed=2, size=128)  # index 3 is the first test image
    with Image.open(root / "test/images/01_test.tif") as image:
        assert image.mode == "RGB" and image.size == (128, 128)
        assert np.array_equal(np.asarray(image), first_test.image)
    for path, truth in ((root / "test/1st_manual/01_manual1.gif", first_test.vessels), (root / "test/mask/01_test_mask.gif", first_test.fov)):
        with Image.open(path) as gif:
            values = np.asarray(gif.convert("L"))
        assert set(np.unique(values)) == {0, 255} and np.array_equal(values == 255, truth)
    assert drive_numbers(2) == [("training", "02"), ("test", "01")]
    assert [subset for subset, _ in drive_numbers(120)].count("training") == 72 and drive_numbers(120)[0][1] == "049"
