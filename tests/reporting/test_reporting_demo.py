"""The reporting demo step's helpers: the majority-answer baseline, the tables and which examples the page shows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workbench.report import HtmlReport
from workbench_plugins.reporting.demo import edit_kind_rows, finding_rows, majority_accuracy, majority_answers, shown_edits, shown_records


def _item(question: str, answer: str) -> SimpleNamespace:
    return SimpleNamespace(question=question, answer=answer)


def test_majority_baseline_answers_each_question_with_its_most_frequent_training_answer():
    train = [_item("Is there X?", "no"), _item("Is there X?", "no"), _item("Is there X?", "yes"), _item("Main?", "x"), _item("Main?", "no finding"),
             _item("Main?", "no finding")]
    assert majority_answers(train) == {"Is there X?": "no", "Main?": "no finding"}
    held_out = [_item("Is there X?", "no"), _item("Is there X?", "yes"), _item("Main?", "no finding"), _item("Never asked?", "no")]
    assert majority_accuracy(train, held_out) == pytest.approx(2 / 4)  # a question never trained on counts as wrong
    assert majority_accuracy(train, []) is None


def test_finding_rows_give_accuracy_and_baseline_per_question_and_overall():
    train = [_item("A?", "no"), _item("A?", "no"), _item("B?", "yes")]
    held_out = [_item("A?", "no"), _item("A?", "yes"), _item("B?", "yes")]
    rows = [{"correct": True}, {"correct": True}, {"correct": False}]
    table = finding_rows(held_out, rows, train)
    assert [row["question"] for row in table] == ["A?", "B?", "all questions"]
    assert table[0]["answer accuracy"] == 1.0 and table[0]["majority baseline"] == 0.5 and table[0]["held-out questions"] == 2
    assert table[1]["answer accuracy"] == 0.0 and table[1]["majority baseline"] == 1.0
    assert table[2]["answer accuracy"] == pytest.approx(2 / 3) and table[2]["majority baseline"] == pytest.approx(2 / 3)


def test_shown_records_prefer_studies_with_a_finding():
    records = [{"labels": {"nodule": 0}}, {"labels": {"nodule": 1}}, {"labels": {}}, {"labels": {"effusion": 1.0}}]
    assert shown_records(records, [0, 0, 1, 2, 3], 2) == [1, 3]
    assert shown_records(records, [0, 1, 2], 3) == [1, 0, 2]


def _edit(kind: str, fixed: bool | None, damaged: int = 0) -> dict:
    return {"kind": kind, "fixed": fixed, "damaged": damaged}


def test_edit_figures_count_fixed_errors_per_kind_and_overall():
    rows = [_edit("invent", True), _edit("invent", False, 1), _edit("drop", True, 2), _edit("none", None, 1)]
    table = {row["injected error"]: row for row in edit_kind_rows(rows)}
    assert table["invent"]["errors fixed"] == "1 of 2" and table["invent"]["fix rate"] == 0.5
    assert table["none"]["errors fixed"] == "0 of 0" and table["none"]["fix rate"] == ""
    assert table["all"]["errors fixed"] == "2 of 3" and table["all"]["correct sentences changed"] == 4 and table["all"]["drafts"] == 4


def test_shown_edits_take_one_draft_of_each_kind_first_and_skip_correct_drafts():
    rows = [_edit("invent", True), _edit("none", None), _edit("invent", False), _edit("invent", True), _edit("drop", False), _edit("size", True)]
    assert [rows.index(row) for row in shown_edits(rows, 3)] == [0, 4, 5]
    assert [rows.index(row) for row in shown_edits(rows, 4)] == [0, 2, 4, 5]
    assert shown_edits(rows, 0) == []


def test_html_diff_marks_removed_and_inserted_words_and_escapes_them(tmp_path):
    page = HtmlReport("t", tmp_path)
    page.diff("a small <left> effusion.", "a large <left> effusion.", titles=("draft", "edit"), note="size & side")
    html = page.render()
    assert '<del style="background:#fbb">small</del>' in html
    assert 'large</ins>' in html and "&lt;left&gt;" in html and "<left>" not in html
    assert "size &amp; side" in html and "<b>draft</b>" in html
