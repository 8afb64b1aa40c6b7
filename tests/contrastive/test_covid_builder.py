"""The covid-chestxray builder on a tiny metadata.csv + images/ written here, and on the shared real set."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.shared_data import COVID_CHESTXRAY, requires_covid_chestxray
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench_plugins.contrastive.builders_covid import build_covid_chestxray, fit_sentences, imaging_first, is_imaging_sentence, note_sentences

HEADER = ["patientid", "offset", "finding", "view", "modality", "clinical_notes", "filename", "license"]
HISTORY = "A 65-year-old man with fever since January 17."
LABS = "His CRP was 80 mg/L."
IMAGING = "Chest radiograph showed an infiltrate in the left upper lobe."


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)


def _write_set(root: Path, rows: list[dict[str, str]], missing: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({"offset": "", "license": "CC BY", "modality": "X-ray", "view": "PA", **row})
    for name in {row["filename"] for row in rows} - set(missing):
        _png(root / "images" / name)
    return root


def _row(patient: str, filename: str, finding: str = "COVID-19", notes: str = f"{HISTORY} {LABS} {IMAGING}", **extra: str) -> dict[str, str]:
    return {"patientid": patient, "filename": filename, "finding": finding, "clinical_notes": notes, **extra}


@pytest.fixture()
def small_set(tmp_path: Path) -> Path:
    rows = [
        _row("1", "a.png"), _row("1", "b.jpg", view="AP"),
        _row("2", "c.png", finding="Streptococcus", notes="Large consolidation in the right upper lobe."),
        _row("3", "d.png", notes="   "),                                  # empty notes: skipped
        _row("4", "e.png"),                                               # image missing: skipped
        _row("5", "f.png", modality="CT"),                                # not an X-ray: left out silently
        _row("6", "shared.png", finding="Pneumonia"), _row("7", "shared.png", finding="Pneumonia"),  # one case, two ids
        _row("8", "g.png", finding="COVID-19, ARDS"), _row("9", "h.png", finding="No Finding", notes="CXR: Normal."),
    ]
    return _write_set(tmp_path / "covid", rows, missing=("e.png",))


def test_records_labels_and_imaging_first_text(small_set):
    skipped = SkippedRecords()
    records = build_covid_chestxray(small_set, skipped=skipped)
    by_id = {record["id"]: record for record in records}
    assert sorted(by_id) == ["p1-a", "p1-b", "p2-c", "p6-shared", "p7-shared", "p8-g", "p9-h"]
    first = by_id["p1-a"]
    assert first["report"] == f"{IMAGING} {HISTORY} {LABS}"
    assert first["image"] == str((small_set / "images" / "a.png").absolute())
    assert (first["finding"], first["view"], first["patientid"], first["modality"]) == ("COVID-19", "PA", "1", "X-ray")
    assert by_id["p1-b"]["view"] == "AP"
    assert {name: record["label"] for name, record in by_id.items()} == {
        "p1-a": 1, "p1-b": 1, "p2-c": 0, "p6-shared": 0, "p7-shared": 0, "p8-g": 1, "p9-h": 0}
    assert all(record["labels"] == {"covid_19": record["label"]} for record in records)
    assert all(record["report_sentences_dropped"] == 0 for record in records)
    reasons = {row[0]: (Path(row[1]).name, row[2]) for row in skipped.rows}
    assert reasons == {"p3-d": ("metadata.csv", "line 5: empty clinical_notes"), "p4-e": ("e.png", "image file missing")}


def test_report_text_all_keeps_the_note_order(small_set):
    records = build_covid_chestxray(small_set, report_text="all")
    assert next(record for record in records if record["id"] == "p1-a")["report"] == f"{HISTORY} {LABS} {IMAGING}"
    with pytest.raises(ConfigError, match="report_text"):
        build_covid_chestxray(small_set, report_text="imaging-last")


def test_patients_sharing_an_image_stay_on_one_side(small_set):
    for seed in range(8):
        records = build_covid_chestxray(small_set, seed=seed, val_fraction=0.3, test_fraction=0.3)
        split = {record["id"]: record["split"] for record in records}
        assert split["p6-shared"] == split["p7-shared"]
        assert split["p1-a"] == split["p1-b"]


def test_splits_by_patient_seeded_with_the_fractions(tmp_path):
    rows = [_row(str(patient), f"{patient}-{view}.png") for patient in range(60) for view in range(1 + patient % 3)]
    root = _write_set(tmp_path / "many", rows)
    records = build_covid_chestxray(root, seed=3, val_fraction=0.2, test_fraction=0.1)
    sides = defaultdict(set)
    for record in records:
        sides[record["patientid"]].add(record["split"])
    assert all(len(splits) == 1 for splits in sides.values())
    counts = Counter(record["split"] for record in records)
    assert len(records) == 120
    assert abs(counts["val"] - 24) <= 3 and abs(counts["test"] - 12) <= 3, counts
    again = build_covid_chestxray(root, seed=3, val_fraction=0.2, test_fraction=0.1)
    assert [record["split"] for record in again] == [record["split"] for record in records]
    other = build_covid_chestxray(root, seed=4, val_fraction=0.2, test_fraction=0.1)
    assert [record["split"] for record in other] != [record["split"] for record in records]
    with pytest.raises(ConfigError, match="val_fraction"):
        build_covid_chestxray(root, val_fraction=0.6, test_fraction=0.4)


def test_missing_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="metadata.csv"):
        build_covid_chestxray(tmp_path)


def test_note_sentences_and_imaging_order():
    assert note_sentences("Seen on March 5. Her CRP was high.") == ["Seen on March 5.", "Her CRP was high."]
    sentences = note_sentences("Fever for 3 days.Bilateral opacities at the lung bases. No pleural effusion.")
    assert sentences == ["Fever for 3 days.", "Bilateral opacities at the lung bases.", "No pleural effusion."]
    assert imaging_first(sentences) == ["Bilateral opacities at the lung bases.", "No pleural effusion.", "Fever for 3 days."]


@pytest.mark.parametrize(("lengths", "context", "kept"), [
    ([10, 10, 10], 26, 3),    # 2 + 8 + 8 + 8 = 26 tokens fit exactly
    ([10, 10, 10], 25, 2),
    ([40, 5], 30, 1),         # the first sentence is kept even when it alone is too long
    ([], 30, 0),
])
def test_fit_sentences_counts_tokens_of_the_joined_text(lengths, context, kept):
    assert fit_sentences(lengths, 2, context) == kept


@requires_covid_chestxray
def test_real_covid_chestxray_records_and_patient_splits():
    skipped = SkippedRecords()
    records = build_covid_chestxray(COVID_CHESTXRAY, skipped=skipped)
    assert len(records) == 341 and len(skipped) == 0  # every one of the 341 X-ray rows has notes and an image
    assert Counter(record["split"] for record in records) == {"train": 241, "val": 49, "test": 51}
    sides = defaultdict(set)
    for record in records:
        sides[record["patientid"]].add(record["split"])
    assert len(sides) == 193 and all(len(splits) == 1 for splits in sides.values())
    # patients 285 and 339 are one case filed twice (same image files): one side
    assert sides["285"] == sides["339"]
    assert sum(record["label"] for record in records) == 253  # 242 COVID-19 + 11 COVID-19, ARDS


@pytest.mark.slow
@requires_covid_chestxray
def test_real_covid_chestxray_cut_to_the_minilm_context():
    records = build_covid_chestxray(COVID_CHESTXRAY, context_length=64)
    cut = [record for record in records if record["report_sentences_dropped"]]
    assert len(cut) == 187 and sum(record["report_sentences_dropped"] for record in records) == 952


@pytest.mark.parametrize(("sentence", "imaging"), [
    ("Chest radiograph showed an infiltrate in the upper lobe of the left lung.", True),
    ("Both lungs are clear.", True),
    ("Large consolidations in the right upper lobe, with a bulging horizontal fissure.", True),
    ("A 65-year-old man with a history of hypertension and lung cancer was admitted.", False),
    ("On January 25 he received oxygen at 5 liters per minute.", False),
    ("The partial pressure of oxygen was 57.2 mm Hg.", False),
])
def test_imaging_sentences(sentence, imaging):
    assert is_imaging_sentence(sentence) is imaging
