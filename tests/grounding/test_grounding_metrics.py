"""Grounding metric maths on exact fixtures: CNR, pointing game, IoU, the sweep, boxes from heatmaps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench.errors import DataError
from workbench_plugins.grounding.boxes import (
    box_iou, box_mask, boxes_to_cxcywh, check_box, cxcywh_to_pixel_box, cxcywh_to_xyxy, heatmap_to_boxes, scale_box,
)
from workbench_plugins.grounding.metrics import GroundingScores, contrast_to_noise, iou_sweep, mask_iou, pointing_hit


def test_cnr_of_a_perfect_heatmap_is_infinite_and_of_a_flat_one_zero():
    inside = box_mask({"x": 2, "y": 3, "w": 4, "h": 2}, 10, 10)
    assert contrast_to_noise(inside.astype(float), inside) == math.inf
    assert contrast_to_noise(np.full((10, 10), 0.3), inside) == 0.0


def test_cnr_matches_its_formula_on_known_values():
    heatmap = np.zeros((4, 4))
    inside = np.zeros((4, 4), dtype=bool)
    inside[0, :2] = True
    heatmap[0, 0], heatmap[0, 1] = 1.0, 3.0  # inside: mean 2, variance 1
    heatmap[3, 3] = 14.0  # outside: 14 pixels, one at 14: mean 1, variance 13
    assert contrast_to_noise(heatmap, inside) == pytest.approx(abs(2.0 - 1.0) / math.sqrt(1.0 + 13.0))
    # CNR is the absolute contrast: an inverted map scores the same.
    assert contrast_to_noise(-heatmap, inside) == pytest.approx(contrast_to_noise(heatmap, inside))


def test_cnr_refuses_an_empty_or_full_region():
    with pytest.raises(ValueError):
        contrast_to_noise(np.ones((3, 3)), np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError):
        contrast_to_noise(np.ones((3, 3)), np.ones((3, 3), dtype=bool))


@pytest.mark.parametrize("peak, hit", [((5, 5), True), ((0, 0), False), ((4, 7), True), ((4, 8), False)])
def test_pointing_game(peak, hit):
    heatmap = np.zeros((10, 10))
    heatmap[peak] = 1.0
    inside = box_mask({"x": 4, "y": 3, "w": 4, "h": 4}, 10, 10)  # columns 4..7, rows 3..6
    assert pointing_hit(heatmap, inside) is hit


@pytest.mark.parametrize(
    "first, second, expected",
    [
        ({"x": 0, "y": 0, "w": 2, "h": 2}, {"x": 1, "y": 1, "w": 2, "h": 2}, 1 / 7),
        ({"x": 0, "y": 0, "w": 4, "h": 4}, {"x": 0, "y": 0, "w": 4, "h": 4}, 1.0),
        ({"x": 0, "y": 0, "w": 4, "h": 4}, {"x": 0, "y": 0, "w": 2, "h": 4}, 0.5),
        ({"x": 0, "y": 0, "w": 1, "h": 1}, {"x": 5, "y": 5, "w": 1, "h": 1}, 0.0),
        ({"x": 2.5, "y": 1.25, "w": 3.5, "h": 2.0}, {"x": 4.0, "y": 0.0, "w": 4.0, "h": 4.0}, 4.0 / 19.0),
        ({"x": 3, "y": 3, "w": 0, "h": 0}, {"x": 3, "y": 3, "w": 0, "h": 0}, 0.0),  # two empty boxes: 0, not NaN
    ],
)
def test_box_iou(first, second, expected):
    assert box_iou(first, second) == pytest.approx(expected)
    assert box_iou(second, first) == pytest.approx(expected)


def test_mask_iou_and_the_threshold_sweep():
    target = np.zeros((4, 4), dtype=bool)
    target[:2, :2] = True
    predicted = np.zeros((4, 4), dtype=bool)
    predicted[:2, :3] = True
    assert mask_iou(predicted, target) == pytest.approx(4 / 6)
    heatmap = np.zeros((4, 4))
    heatmap[:2, :2] = 1.0
    heatmap[:2, 2] = 0.5
    assert iou_sweep(heatmap, target, (0.25, 0.75)) == pytest.approx([4 / 6, 1.0])


def test_box_checks_name_the_file_and_rescale():
    assert check_box({"x": 0, "y": 0, "w": 10, "h": 5}, 5, 10) == (0.0, 0.0, 10.0, 5.0)
    with pytest.raises(DataError, match=r"scan\.png.*outside the 10x5 image"):
        check_box({"phrase": "effusion", "x": 8, "y": 0, "w": 6, "h": 2}, 5, 10, "scan.png")
    with pytest.raises(DataError, match="w, h > 0"):
        check_box({"x": 0, "y": 0, "w": 0, "h": 2}, 5, 10)
    scaled = scale_box({"phrase": "p", "x": 100, "y": 50, "w": 20, "h": 10}, (1000, 2000), (250, 500))
    assert scaled == {"phrase": "p", "x": 25.0, "y": 12.5, "w": 5.0, "h": 2.5}


def test_normalised_box_conversions_round_trip():
    pixel = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    normalised = boxes_to_cxcywh(pixel, height=100, width=200)
    assert normalised[0].tolist() == pytest.approx([25 / 200, 40 / 100, 30 / 200, 40 / 100])
    assert cxcywh_to_xyxy(normalised * torch.tensor([200, 100, 200, 100]))[0].tolist() == pytest.approx([10, 20, 40, 60])
    assert cxcywh_to_pixel_box(normalised[0], 100, 200) == pytest.approx({"x": 10.0, "y": 20.0, "w": 30.0, "h": 40.0})


def test_heatmap_to_boxes_finds_each_blob_best_first():
    heatmap = np.zeros((20, 30))
    heatmap[2:6, 3:9] = 0.6  # a weaker, larger blob
    heatmap[10:13, 20:25] = 1.0
    heatmap[0, 29] = 0.9  # one pixel: below min_area
    boxes = heatmap_to_boxes(heatmap, threshold=0.5, max_boxes=3, min_area=2)
    assert [(b["x"], b["y"], b["w"], b["h"]) for b in boxes] == [(20, 10, 5, 3), (3, 2, 6, 4)]
    assert boxes[0]["score"] == pytest.approx(1.0) and boxes[1]["score"] == pytest.approx(0.6)
    assert heatmap_to_boxes(np.zeros((5, 5))) == []


def test_scores_aggregate_overall_and_per_category():
    scores = GroundingScores(thresholds=(0.5,))
    perfect = np.zeros((10, 10))
    perfect[2:5, 2:5] = 1.0
    box = {"x": 2, "y": 2, "w": 3, "h": 3}
    scores(perfect, box, category="nodule", record_id="a", phrase="nodule", predicted_boxes=[dict(box)])
    wrong = np.zeros((10, 10))
    wrong[7:9, 7:9] = 1.0
    scores(wrong, box, category="effusion", record_id="b", phrase="effusion", predicted_boxes=[{"x": 7, "y": 7, "w": 2, "h": 2}])
    result = scores.aggregate()
    assert result["per_category"]["nodule"]["pointing"] == 1.0 and result["per_category"]["effusion"]["pointing"] == 0.0
    assert result["per_category"]["nodule"]["miou"] == 1.0 and result["per_category"]["effusion"]["miou"] == 0.0
    assert result["overall"]["box_acc@0.5"] == 0.5 and result["overall"]["n"] == 2
    assert result["per_category"]["nodule"]["cnr"] == math.inf
    # the overall CNR mean leaves out the infinite one
    assert result["overall"]["cnr"] == pytest.approx(result["per_category"]["effusion"]["cnr"])
    assert [row["id"] for row in scores.worst(1)] == ["b"]
