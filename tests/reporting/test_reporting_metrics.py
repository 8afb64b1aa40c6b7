"""Reporting scores: BLEU-4/ROUGE-L wrappers, edit totals, answer-explanation consistency, faithfulness judges, the diff page."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from workbench_plugins.reporting.corrupt import Corruption
from workbench_plugins.reporting.faithful import GroundingJudge, mask_judge
from workbench_plugins.reporting.features import ImageTokens
from workbench_plugins.reporting.metrics import EditTotals, bleu4, explanation_consistent, rouge_l, score_edit
from workbench_plugins.reporting.pages import highlight_changes


def test_bleu_and_rouge_are_one_for_identical_text_and_lower_otherwise():
    text = ["there is a small left pleural effusion blunting the costophrenic angle."]
    assert bleu4(text, text) == pytest.approx(1.0)
    assert rouge_l(text, text) == pytest.approx(1.0)
    other = ["no pleural effusion."]
    assert bleu4(other, text) < 0.2 and 0.0 < rouge_l(other, text) < 0.5


def test_edit_totals_count_fixes_per_injected_error_and_damage_per_correct_sentence():
    truth = "FINDINGS: There is a small left pneumothorax. No pleural effusion.\n\nIMPRESSION: Small left pneumothorax."
    swapped = Corruption("laterality", truth.replace("small left pneumothorax. No", "small right pneumothorax. No"), truth, "pneumothorax",
                         "There is a small left pneumothorax.", "There is a small right pneumothorax.")
    same = lambda text: " ".join(text.lower().split())  # noqa: E731
    totals = EditTotals()
    totals.add(score_edit(swapped, truth, same))  # fixed, nothing damaged
    totals.add(score_edit(swapped, truth.replace("No pleural effusion.", "No effusion."), same))  # fixed, one correct sentence changed
    totals.add(score_edit(Corruption("none", truth, truth), truth, same))  # a correct draft kept
    summary = totals.aggregate()
    assert summary["edit_fix_rate"] == 1.0 and summary["injected_errors"] == 2
    assert summary["edit_damage_rate"] == pytest.approx(1 / 7)  # 2 + 2 + 3 correct sentences, one changed
    assert summary["per_kind"]["none"]["edit_fix_rate"] is None


@pytest.mark.parametrize("answer, explanation, finding, kind, expected", [
    ("yes", "there is a small left pneumothorax.", "pneumothorax", "presence", True),
    ("yes", "no pneumothorax.", "pneumothorax", "presence", False),
    ("no", "no pneumothorax.", "pneumothorax", "presence", True),
    ("pleural effusion", "a large right pleural effusion is seen.", "pleural_effusion", "main", True),
    ("pleural effusion", "mild cardiomegaly is present.", "pleural_effusion", "main", False),
    ("no finding", "no acute cardiopulmonary process.", "", "main", True),
])
def test_explanations_are_checked_against_their_answers(answer, explanation, finding, kind, expected):
    assert explanation_consistent(answer, explanation, finding, kind) is expected


class _PeakHead(torch.nn.Module):
    """A grounding head whose heatmap always peaks at one patch of a 4x4 grid."""

    def __init__(self, row: int, col: int):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.row, self.col = row, col

    def forward(self, tokens, phrases):
        heatmap = torch.zeros(tokens.shape[0], 4, 4)
        heatmap[:, self.row, self.col] = 5.0
        return {"heatmap_logits": heatmap * self.scale}


def test_faithfulness_judges_read_masks_and_heatmap_peaks(tmp_path):
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:8, 24:] = 255  # the top-right patch of a 4x4 grid
    Image.fromarray(mask).save(tmp_path / "ptx.png")
    records = [{"masks": {"pneumothorax": str(tmp_path / "ptx.png")}}]
    assert mask_judge(records)(0, "", ["pneumothorax"]) and not mask_judge(records)(0, "", ["pleural_effusion"])
    encoder = SimpleNamespace(model=SimpleNamespace(tokenize=lambda texts: torch.zeros(len(texts), 3, dtype=torch.long),
                                                    encode_text=lambda ids: torch.zeros(ids.shape[0], 5)), device=torch.device("cpu"))
    tokens = ImageTokens(torch.zeros(1, 16, 6), torch.zeros(1, 6), [0])
    inside = GroundingJudge(_PeakHead(0, 3), encoder, tokens, records)
    outside = GroundingJudge(_PeakHead(3, 0), encoder, tokens, records)
    assert inside(0, "there is a small right pneumothorax.", ["pneumothorax"])
    assert not outside(0, "there is a small right pneumothorax.", ["pneumothorax"])
    assert not inside(0, "there is a pleural effusion.", ["pleural_effusion"])  # no mask: the finding is not in the image


def test_changes_are_highlighted_word_by_word_and_escaped():
    left, right = highlight_changes("There is a small <left> effusion.", "There is a small right effusion.")
    assert left == "There is a small <del>&lt;left&gt;</del> effusion."
    assert right == "There is a small <ins>right</ins> effusion."
