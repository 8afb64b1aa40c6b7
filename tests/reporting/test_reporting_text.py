"""Reporting text mechanics: finding mentions, derived questions, corruptions found exactly, vocabulary, the MIMIC-CXR builder."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pytest

from workbench.data.phantoms import make_cxr_study
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench_plugins.reporting.builders import build_mimic_cxr_reporting, report_sections
from workbench_plugins.reporting.corrupt import KINDS, applicable_kinds, corrupt_report, restored_at_end, sentence_changes
from workbench_plugins.reporting.datasets import changed_positions
from workbench_plugins.reporting.findings import mention, report_sentences, side_of, size_of
from workbench_plugins.reporting.metrics import score_edit
from workbench_plugins.reporting.questions import MAIN_QUESTION, record_questions, split_answer
from workbench_plugins.reporting.vocab import ReportVocabulary

FINDINGS = ["nodule", "consolidation", "pleural_effusion", "cardiomegaly", "pneumothorax"]


@pytest.mark.parametrize("sentence, finding, expected", [
    ("There is a small right-sided pleural effusion.", "pleural_effusion", "positive"),
    ("The costophrenic angles are sharp, without pleural effusion.", "pleural_effusion", "negative"),
    ("No focal consolidation, pleural effusion or pneumothorax.", "pneumothorax", "negative"),
    ("Heart size is normal.", "cardiomegaly", "negative"),
    ("The heart is not enlarged.", "cardiomegaly", "negative"),
    ("Moderately enlarged cardiac silhouette is noted.", "cardiomegaly", "positive"),
    ("The lungs are clear.", "nodule", None),
    ("Small right pneumothorax, no pleural effusion.", "pneumothorax", "positive"),
    ("Small right pneumothorax, no pleural effusion.", "pleural_effusion", "negative"),
])
def test_mentions_read_polarity(sentence, finding, expected):
    assert mention(sentence, finding) == expected


def test_phantom_reports_name_exactly_their_labelled_findings():
    for index in range(60):
        study = make_cxr_study(index, seed=3, size=128)
        sentences = report_sentences(study.report)
        for name, value in study.labels.items():
            positive = [s for s in sentences if mention(s.text, name) == "positive"]
            assert bool(positive) == bool(value), (name, study.report)


def test_questions_answer_from_labels_and_explain_with_the_naming_sentence():
    record = {"report": "FINDINGS: There is a small left pneumothorax. No pleural effusion.\n\nIMPRESSION: Small left pneumothorax.",
              "labels": {"pneumothorax": 1, "pleural_effusion": 0, "cardiomegaly": 0}}
    items = {item.question: item for item in record_questions(record, 7, ["pneumothorax", "pleural_effusion", "cardiomegaly"])}
    assert items["Is there a pneumothorax?"].target == "yes because There is a small left pneumothorax."
    assert items["Is there a pleural effusion?"].explanation == "No pleural effusion." and not items["Is there a pleural effusion?"].templated
    assert items["Is there cardiomegaly?"].explanation == "There is no cardiomegaly." and items["Is there cardiomegaly?"].templated
    main = items[MAIN_QUESTION]
    assert (main.answer, main.explanation, main.record_index) == ("pneumothorax", "There is a small left pneumothorax.", 7)
    chexpert = {"report": "FINDINGS: Possible small effusion.", "labels": {"Pleural Effusion": -1.0, "Edema": None, "Pneumothorax": 0.0}}
    asked = [item.question for item in record_questions(chexpert, 0)]
    assert asked == ["Is there a pneumothorax?", MAIN_QUESTION]  # uncertain and blank labels ask nothing
    assert [item.answer for item in record_questions(chexpert, 0, uncertain="positive")][:1] == ["yes"]
    assert split_answer("yes because there is a small left pneumothorax.") == ("yes", "there is a small left pneumothorax.")
    assert split_answer("no") == ("no", "")


@pytest.mark.parametrize("kind", KINDS)
def test_each_corruption_changes_exactly_the_sentence_it_records(kind):
    found = 0
    for index in range(80):
        study = make_cxr_study(index, seed=5, size=128)
        corruption = corrupt_report(study.report, study.labels, FINDINGS, np.random.default_rng(index), kinds=[kind])
        if corruption.kind == "none":
            continue
        found += 1
        truth = [s.text for s in report_sentences(corruption.truth)]
        draft = [s.text for s in report_sentences(corruption.draft)]
        removed, added = sentence_changes(truth, draft)
        assert [truth[i] for i in removed] == ([corruption.true_sentence] if corruption.true_sentence else [])
        assert [draft[i] for i in added] == ([corruption.draft_sentence] if corruption.draft_sentence else [])
        if kind == "laterality":
            assert {side_of(corruption.true_sentence), side_of(corruption.draft_sentence)} == {"left", "right"}
        if kind == "size":
            assert size_of(corruption.true_sentence) != size_of(corruption.draft_sentence)
        if kind == "invent":
            assert study.labels[corruption.finding] == 0 and mention(corruption.draft_sentence, corruption.finding) == "positive"
        # scoring: the truth itself fixes the error and damages nothing; the draft left as it is fixes nothing
        identity = lambda text: " ".join(text.lower().split())  # noqa: E731
        assert score_edit(corruption, corruption.truth, identity).fixed is True
        assert score_edit(corruption, corruption.truth, identity).damaged == 0
        assert score_edit(corruption, corruption.draft, identity).fixed is False
    assert found >= 10


def test_vocabulary_round_trip_and_extended_ids_for_words_outside_it():
    vocab = ReportVocabulary.from_texts(["There is a small left pneumothorax."])
    encoded = vocab.encode("small left pneumothorax with zebra", bos=True, eos=True)
    assert encoded.ids[0] == vocab.bos and encoded.ids[-1] == vocab.eos
    assert len(encoded.oov) >= 1 and vocab.unk in encoded.ids
    assert max(encoded.extended) == len(vocab) + len(encoded.oov) - 1
    assert vocab.decode(encoded.extended[1:], encoded.oov) == "small left pneumothorax with zebra"
    assert vocab.decode(encoded.ids[1:]).count("[UNK]") == len([i for i in encoded.ids if i == vocab.unk])
    cut = vocab.encode("small " * 50, max_tokens=10, bos=True, eos=True)
    assert len(cut.ids) == 10 and cut.truncated == 42 and cut.ids[-1] == vocab.eos


def _write_csv(path, header, rows, compress=False):
    text_rows = [header] + rows
    if compress:
        with gzip.open(path, "wt", newline="") as handle:
            csv.writer(handle).writerows(text_rows)
    else:
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows(text_rows)


def test_mimic_builder_reads_labels_sections_and_pairs_prior_reports(tmp_path):
    studies = [("10000032", "50000001", "d1", "PA", "21800101", "1200"), ("10000032", "50000002", "d2", "AP", "21800305", "0900"),
               ("10000032", "50000002", "d2b", "LATERAL", "21800305", "0900"), ("10000099", "50000003", "d3", "PA", "21810101", "1000"),
               ("10000099", "50000004", "d4", "PA", "21810202", "1000")]
    _write_csv(tmp_path / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"],
               [[d, s, st, v, date, time] for s, st, d, v, date, time in studies])
    _write_csv(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", "Pleural Effusion", "Cardiomegaly"],
               [["10000032", "50000001", "1.0", ""], ["10000032", "50000002", "0.0", "-1.0"], ["10000099", "50000003", "", "1.0"],
                ["10000099", "50000004", "0.0", "0.0"]], compress=True)
    _write_csv(tmp_path / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
               [["d1", "50000001", "10000032", "train"], ["d2", "50000002", "10000032", "train"], ["d3", "50000003", "10000099", "test"],
                ["d4", "50000004", "10000099", "test"]])
    reports = {"50000001": "FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS: Small right effusion.\n\n IMPRESSION: Right effusion.",
               "50000002": "FINDINGS: No effusion. Heart size borderline.\nIMPRESSION: No acute process.",
               "50000003": "IMPRESSION: Cardiomegaly."}
    for subject, study, dicom, view, _, _ in studies:
        folder = tmp_path / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{dicom}.jpg").write_bytes(b"jpg")
        if study in reports:
            folder.with_suffix(".txt").write_text(reports[study])
    skipped = SkippedRecords()
    records = build_mimic_cxr_reporting(tmp_path, skipped=skipped)
    assert [r["id"] for r in records] == ["s50000001", "s50000002", "s50000003"]  # 50000004 has no report file
    assert len(skipped) == 1 and "report file not found" in skipped.rows[0][2]
    first = records[0]
    assert first["report"] == "FINDINGS: Small right effusion.\n\nIMPRESSION: Right effusion." and first["view"] == "PA"
    assert first["labels"] == {"pleural_effusion": 1.0, "cardiomegaly": None} and first["split"] == "train"
    assert records[1]["image"].endswith("d2.jpg")  # the frontal AP image, not the lateral one
    paired = build_mimic_cxr_reporting(tmp_path, prior_pairs=True, skipped=SkippedRecords())
    assert [(r["id"], r["prior_id"]) for r in paired] == [("s50000002", "s50000001")]
    assert paired[0]["draft"] == first["report"]
    assert len(build_mimic_cxr_reporting(tmp_path, prior_pairs=True, keep_first=True, skipped=SkippedRecords())) == 3
    with pytest.raises(DataError, match="empty report"):
        report_sections("   ")
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-metadata.csv"):
        build_mimic_cxr_reporting(tmp_path)


def test_kind_weights_set_the_mix_of_corruptions_and_reject_zero_odds():
    study = next(s for s in (make_cxr_study(i, seed=5, size=128) for i in range(40))
                 if len(applicable_kinds(s.report, s.labels, FINDINGS)) == len(KINDS))

    def mix(weights):
        drawn = [corrupt_report(study.report, study.labels, FINDINGS, np.random.default_rng(seed), kind_weights=weights).kind
                 for seed in range(400)]
        return {kind: drawn.count(kind) / len(drawn) for kind in set(drawn)}

    even, skewed = mix(None), mix({"invent": 0.0, "drop": 3.0})
    assert "invent" in even and "invent" not in skewed
    assert skewed["drop"] > even["drop"] + 0.2
    with pytest.raises(ConfigError, match="kind_weights"):
        corrupt_report(study.report, study.labels, FINDINGS, np.random.default_rng(0), kinds=["invent"], kind_weights={"invent": 0.0})


def test_changed_positions_mark_the_edited_sentence_whichever_way_difflib_aligns_a_deletion():
    vocab = ReportVocabulary.from_texts(["findings: there is a small left pneumothorax. there is a large right effusion. no effusion. "
                                         "impression: small left pneumothorax."])
    stops = set(vocab.encode(". :").ids)
    truth = "findings: there is a small left pneumothorax. no effusion. impression: small left pneumothorax."
    target = vocab.extend_target(truth, [])

    def marked(draft: str, with_stops: bool = True) -> str:
        flags = changed_positions(vocab.encode(draft, bos=True, eos=True).extended[1:], target, stops if with_stops else ())
        return vocab.decode([token for token, flag in zip(target, flags) if flag])

    assert marked(truth) == ""
    assert marked(truth.replace("a small left", "a large left", 1), with_stops=False) == "small left"  # the word, then where copying resumes
    assert marked(truth.replace("a small left", "a large left", 1)) == "there is a small left pneumothorax."
    invented = marked(truth.replace("pneumothorax. no", "pneumothorax. there is a large right effusion. no", 1))
    assert "no effusion." in invented and "impression" not in invented  # the token that resumes the copy ("no") is marked
    dropped = marked("findings: no effusion. impression: small left pneumothorax.")
    assert dropped.startswith("there is a small left pneumothorax.") and "impression" not in dropped


def test_a_dropped_sentence_restored_at_the_end_of_findings_still_scores_as_fixed():
    restored = 0
    for index in range(40):
        study = make_cxr_study(index, seed=5, size=128)
        corruption = corrupt_report(study.report, study.labels, FINDINGS, np.random.default_rng(index), kinds=["drop"])
        moved = restored_at_end(corruption)
        if corruption.kind != "drop":
            assert moved == corruption
            continue
        restored += 1
        sentences = report_sentences(moved.truth)
        body = [s.text for s in sentences if s.section == "findings"]
        draft_body = [s.text for s in report_sentences(corruption.draft) if s.section == "findings"]
        assert body[-1] == corruption.true_sentence and body[:-1] == draft_body
        impression = [s.text for s in report_sentences(corruption.truth) if s.section == "impression"]
        assert [s.text for s in sentences if s.section == "impression"] == impression
        identity = lambda text: " ".join(text.lower().split())  # noqa: E731
        score = score_edit(corruption, moved.truth, identity)
        assert score.fixed is True and score.damaged == 0
    assert restored >= 10
    study = make_cxr_study(3, seed=5, size=128)
    invented = corrupt_report(study.report, study.labels, FINDINGS, np.random.default_rng(0), kinds=["invent"])
    assert restored_at_end(invented) == invented
