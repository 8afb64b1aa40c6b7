"""Bridging vessel fragments along the cheapest probability path (plugins/vessels/topology/repair.py)."""

from __future__ import annotations

import numpy as np
import pytest

from workbench_plugins.vessels.metrics import postprocess_mask
from workbench_plugins.vessels.topology.check import check_mask
from workbench_plugins.vessels.topology.repair import bridge_gaps, reconnect_mask


def broken_line(gap_probability: float, gap: tuple[int, int] = (30, 36), size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A horizontal vessel on row 32 whose columns ``gap`` fall under the threshold: ``(mask, probability)``."""
    probability = np.zeros((size, size), np.float32)
    probability[32, 4:60] = 0.9
    probability[32, gap[0]:gap[1]] = gap_probability
    return probability > 0.5, probability


def test_a_faint_gap_is_bridged_exactly_along_the_vessel() -> None:
    mask, probability = broken_line(0.3)
    bridged, bridges = bridge_gaps(mask, probability, max_cost=10.0)
    assert len(bridges) == 1
    assert sorted(map(tuple, bridges[0].pixels.tolist())) == [(32, column) for column in range(30, 36)]
    assert bridges[0].cost == pytest.approx(6 * 0.7, abs=0.1)  # six pixels at 1 - 0.3
    report = check_mask(bridged, reference=mask | (probability > 0.2))
    assert report.n_components == 1 and report.betti0_error == 0


def test_the_cost_limit_decides_between_a_cheap_and_an_expensive_gap() -> None:
    mask, probability = broken_line(0.0)  # six pixels of no support: cost about 6
    _, cheap_enough = bridge_gaps(mask, probability, max_cost=7.0)
    _, too_dear = bridge_gaps(mask, probability, max_cost=5.0)
    assert len(cheap_enough) == 1 and 5.5 <= cheap_enough[0].cost <= 7.0
    assert too_dear == []


def test_paths_stay_inside_the_field_of_view() -> None:
    mask, probability = broken_line(0.3)
    fov = np.ones_like(mask)
    fov[:, 31:35] = False  # the gap lies outside the FOV: no way round either
    bridged, bridges = bridge_gaps(mask, probability, fov, max_cost=50.0)
    assert bridges == [] and np.array_equal(bridged, mask)


def test_isolated_small_pieces_go_and_bridged_ones_stay() -> None:
    mask, probability = broken_line(0.3)
    probability[5:8, 5:8] = 0.95  # a 9-pixel speck far from the vessel, no support in between
    mask = probability > 0.5
    cleaned = reconnect_mask(mask, probability, max_cost=10.0, min_isolated_area=20)
    assert not cleaned[5:8, 5:8].any()
    assert cleaned[32, 4:60].all()  # the right piece (24 px) and the left one (26 px) are one vessel of 56 px now
    # without bridging the same area limit would have kept both pieces but left them apart
    assert check_mask(postprocess_mask(probability, min_isolated_area=20), None).n_components == 2


def test_bridging_does_not_depend_on_the_order_of_the_fragments() -> None:
    rng = np.random.default_rng(0)
    probability = rng.uniform(0.0, 0.6, (48, 48)).astype(np.float32)
    mask = probability > 0.5
    flipped, _ = bridge_gaps(mask[::-1, ::-1], probability[::-1, ::-1], max_cost=3.0)
    direct, bridges = bridge_gaps(mask, probability, max_cost=3.0)
    assert bridges  # random specks: some are close enough to link
    assert np.array_equal(flipped[::-1, ::-1], direct)


def test_postprocess_mask_bridges_after_removing_small_components() -> None:
    mask, probability = broken_line(0.3)
    probability[50, 50] = 0.9  # a one-pixel speck next to nothing: removed before bridging, never linked
    result = postprocess_mask(probability, 0.5, min_component_area=2, fov=np.ones_like(mask), bridge_max_cost=10.0)
    assert result[32, 4:60].all() and not result[50, 50]
    assert check_mask(result, None).n_components == 1


def test_a_single_component_or_an_empty_mask_is_returned_unchanged() -> None:
    probability = np.zeros((16, 16), np.float32)
    empty, links = bridge_gaps(probability > 0.5, probability)
    assert not empty.any() and links == []
    probability[8, 2:14] = 0.9
    whole, links = bridge_gaps(probability > 0.5, probability)
    assert np.array_equal(whole, probability > 0.5) and links == []
