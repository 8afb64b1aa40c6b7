"""Connectivity metrics on hand-built masks with known answers, and on real CHASE_DB1 annotations."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from workbench.data.phantoms import make_fundus
from workbench.errors import DataError
from workbench_plugins.vessels.topology.check import check_mask, fov_from_fundus
from workbench_plugins.vessels.topology.masks import binarise_mask
from workbench_plugins.vessels.topology.metrics import cldice, count_holes, label_components

from tests.helpers.shared_data import CHASE_DB1 as CHASE, requires_chase_db1


def two_lines() -> np.ndarray:
    mask = np.zeros((40, 60), dtype=bool)
    mask[20, 5:25] = True
    mask[20, 30:50] = True
    return mask


def ring(outer: float = 10, inner: float = 6, size: int = 32) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    radius = np.hypot(rows - size / 2, cols - size / 2)
    return (radius <= outer) & (radius > inner)


def thick_line(row: int = 20, width: int = 5, shape: tuple[int, int] = (40, 60)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row - width // 2: row + width // 2 + 1, 5:55] = True
    return mask


def test_two_lines_have_two_components_and_one_break_between_facing_ends():
    report = check_mask(two_lines())
    assert report.n_components == 2 and report.n_holes == 0
    assert [gap.to_dict() for gap in report.breaks] == [{"a": [20, 24], "b": [20, 30], "distance": 6.0}]
    assert check_mask(two_lines(), break_distance=5).breaks == []


def test_ring_has_one_hole_and_its_filled_disc_none():
    report = check_mask(ring())
    assert (report.n_components, report.n_holes) == (1, 1)
    disc = ring(inner=-1)
    compared = check_mask(ring(), reference=disc)
    assert compared.reference_holes == 0 and compared.betti1_error == 1 and compared.betti0_error == 0


def test_identical_masks_score_perfectly():
    vessels = make_fundus(0, seed=0, size=128).vessels
    report = check_mask(vessels, reference=vessels.astype(np.uint8) * 255)
    assert report.dice == 1.0 and report.cldice == 1.0 and report.cal == 1.0
    assert report.betti0_error == 0 and report.betti1_error == 0
    assert report.spurious_fragments == []
    assert report.n_components == report.reference_components >= 1


def test_cut_vessel_gives_betti0_error_one_and_one_break_at_the_cut():
    reference = thick_line()
    cut = reference.copy()
    cut[:, 28:31] = False
    report = check_mask(cut, reference=reference)
    assert report.betti0_error == 1 and report.n_components == 2 and report.reference_components == 1
    assert len(report.breaks) == 1
    gap = report.breaks[0]
    assert {gap.a[1] < 28, gap.b[1] > 30} == {True} and abs(gap.a[0] - 20) <= 1 and abs(gap.b[0] - 20) <= 1
    assert 4 <= gap.distance <= 10
    assert 0.85 < report.dice < 1.0 and report.cal < 1.0 and report.cal_connectivity < 1.0


def test_fov_changes_the_counts():
    line = thick_line(width=3)
    line[5, 5] = True  # a speck outside the FOV below
    fov = np.ones(line.shape, dtype=bool)
    fov[:, 25:35] = False
    fov[:8] = False
    assert check_mask(line).n_components == 2
    assert check_mask(line, fov=fov).n_components == 2  # speck gone, line cut in two by the FOV
    inside_only = check_mask(line, fov=fov)
    assert inside_only.foreground_pixels == 3 * 50 - 3 * 10
    # a ring whose middle is joined to the outside of the FOV no longer encloses a hole
    open_fov = np.ones((32, 32), dtype=bool)
    open_fov[14:18, 20:] = False
    assert check_mask(ring()).n_holes == 1 and check_mask(ring(), fov=open_fov).n_holes == 0


def test_cldice_of_a_shifted_line_drops():
    reference = thick_line(width=5)
    scores = [cldice(thick_line(row=20 + shift, width=5), reference) for shift in (0, 1, 3, 5)]
    assert scores[0] == 1.0
    assert scores[1] > 0.9
    assert scores[2] < 0.1 and scores[3] == 0.0


def test_spurious_fragments_with_and_without_reference():
    reference = thick_line(width=3)
    prediction = reference.copy()
    prediction[3:5, 10:12] = True  # 4 px, far from the reference
    prediction[22:24, 40:42] = True  # a bump joined to the vessel: part of it, not a fragment
    prediction[30:33, 30:33] = True  # 9 px, away
    report = check_mask(prediction, reference=reference)
    areas = sorted(fragment.area for fragment in report.spurious_fragments)
    assert areas == [4, 9]
    assert check_mask(prediction, reference=reference, fragment_area=5).spurious_fragments[0].area == 4
    alone = check_mask(prediction)
    assert sorted(fragment.area for fragment in alone.spurious_fragments) == [4, 9]  # the vessel (largest) is kept
    first = alone.spurious_fragments[0]
    assert first.bbox == (30, 30, 33, 33) and first.centroid == (31.0, 31.0)


def test_values_are_binarised_or_refused(caplog: pytest.LogCaptureFixture):
    mask = two_lines()
    assert check_mask(mask.astype(np.uint8) * 255).to_dict() == check_mask(mask).to_dict()
    labels = mask.astype(np.uint8)
    labels[20, 30:50] = 2
    labels[0, 0] = 7
    with caplog.at_level(logging.WARNING, logger="workbench.vessels"):
        assert binarise_mask(labels, "labels.png").sum() == mask.sum() + 1
    assert "labels.png" in caplog.text and "4 distinct values" in caplog.text
    with pytest.raises(DataError, match="probability map"):
        check_mask(mask * 0.7)
    with pytest.raises(DataError, match="NaN"):
        check_mask(np.where(mask, np.nan, 0.0))
    with pytest.raises(DataError, match="distinct values"):
        check_mask(np.arange(40 * 60).reshape(40, 60) % 200)
    with pytest.raises(DataError, match="does not match"):
        check_mask(mask, reference=mask[:, :50])


def test_empty_prediction_is_defined():
    reference = thick_line()
    report = check_mask(np.zeros_like(reference), reference=reference)
    assert report.dice == 0.0 and report.cldice == 0.0 and report.betti0_error == 1 and report.cal == 0.0
    both_empty = check_mask(np.zeros((8, 8), bool), reference=np.zeros((8, 8), bool))
    assert both_empty.dice == 1.0 and both_empty.cal == 1.0 and both_empty.n_components == 0


def test_json_record_has_the_metric_keys():
    record = json.loads(check_mask(two_lines(), reference=two_lines()).to_json())
    assert {"dice", "cldice", "betti0_error", "betti1_error", "n_components", "n_holes", "cal", "breaks", "spurious_fragments"} <= set(record)
    assert "dice" not in json.loads(check_mask(two_lines()).to_json())


def test_3d_loop_has_one_tunnel_and_hollow_cube_none():
    volume = np.zeros((5, 12, 12), dtype=bool)
    volume[2, 2:10, 2:10] = True
    volume[2, 4:8, 4:8] = False  # a square loop in one slice: a torus
    labels, count = label_components(volume)
    assert count == 1 and count_holes(volume) == 1
    shell = np.zeros((9, 9, 9), dtype=bool)
    shell[1:8, 1:8, 1:8] = True
    shell[3:6, 3:6, 3:6] = False  # a cavity, not a tunnel
    assert count_holes(shell) == 0
    assert check_mask(volume, reference=volume).cldice == 1.0


def test_fov_from_fundus_matches_the_phantom_fov():
    phantom = make_fundus(1, seed=0, size=128)
    derived = fov_from_fundus(np.moveaxis(phantom.image, -1, 0), erosion=0)
    overlap = (derived & phantom.fov).sum() / (derived | phantom.fov).sum()
    assert overlap > 0.95
    assert fov_from_fundus(phantom.image, erosion=3).sum() < derived.sum()
    with pytest.raises(DataError):
        fov_from_fundus(np.zeros((16, 16, 3), dtype=np.uint8))


@requires_chase_db1
def test_chase_second_observer_against_first_inside_derived_fov():
    fundus = np.asarray(Image.open(CHASE / "Image_11L.jpg"))
    fov = fov_from_fundus(fundus)
    assert 0.6 < fov.mean() < 0.8
    first = np.asarray(Image.open(CHASE / "Image_11L_1stHO.png"))
    second = np.asarray(Image.open(CHASE / "Image_11L_2ndHO.png"))
    report = check_mask(second, reference=first, fov=fov)
    # measured: dice 0.827, clDice 0.867, CAL 0.837, 5 vs 2 components
    assert 0.78 < report.dice < 0.87
    assert 0.82 < report.cldice < 0.92
    assert 0.75 < report.cal < 0.92
    assert report.reference_components <= 5 and report.betti0_error <= 6


@pytest.mark.parametrize("shape", [(48, 40), (12, 10, 9)])
@pytest.mark.parametrize("prediction_rate, reference_rate", [(0.3, 0.2), (0.0, 0.2), (0.3, 0.0), (0.0, 0.0), (1.0, 1.0)])
def test_dice_is_the_number_monai_gives(shape, prediction_rate, reference_rate):
    import torch
    from monai.metrics import compute_dice

    from workbench_plugins.vessels.topology.metrics import dice

    rng = np.random.default_rng(7)
    prediction, reference = rng.random(shape) < prediction_rate, rng.random(shape) < reference_rate
    as_batch = lambda mask: torch.from_numpy(mask.astype(np.float64))[None, None]  # noqa: E731
    expected = float(compute_dice(as_batch(prediction), as_batch(reference), include_background=True, ignore_empty=False))
    assert dice(prediction, reference) == pytest.approx(expected, abs=1e-6)  # MONAI returns float32


def test_shifted_dilation_and_3d_euler_number_equal_the_library_ones_on_random_masks():
    from scipy import ndimage
    from skimage.measure import euler_number
    from skimage.morphology import ball, disk

    from workbench_plugins.vessels.topology.metrics import dilate, euler_characteristic_3d

    rng = np.random.default_rng(0)
    for case in range(40):
        shape = tuple(int(side) for side in rng.integers(3, 18, size=3 if case % 2 else 2))
        mask = rng.random(shape) < rng.uniform(0.02, 0.6)
        if case % 5 == 0:  # one voxel, at the border sometimes: the bounding box and the clipping
            mask[:] = False
            mask[tuple(int(rng.integers(0, side)) for side in shape)] = True
        radius = int(rng.integers(1, 4))
        footprint = (disk(radius) if mask.ndim == 2 else ball(radius)).astype(bool)
        assert np.array_equal(dilate(mask, radius), ndimage.binary_dilation(mask, structure=footprint)), (shape, radius)
        if mask.ndim == 3:
            assert euler_characteristic_3d(mask) == euler_number(mask, connectivity=3), shape
    assert euler_characteristic_3d(np.zeros((4, 4, 4), dtype=bool)) == 0
    torus = np.ones((5, 5, 3), dtype=bool)
    torus[2, 2, :] = False  # a tunnel through a block: chi = 1 - 1 = 0
    assert euler_characteristic_3d(torus) == 0


def test_end_points_counted_at_the_skeleton_equal_a_neighbourhood_convolution():
    from scipy import ndimage

    from workbench_plugins.vessels.topology.breaks import skeleton_end_points

    rng = np.random.default_rng(1)
    for case in range(30):
        shape = tuple(int(side) for side in rng.integers(3, 20, size=2 if case % 2 else 3))
        skeleton = rng.random(shape) < 0.12
        counts = ndimage.convolve(skeleton.astype(np.uint8), np.ones((3,) * skeleton.ndim, dtype=np.uint8), mode="constant")
        assert np.array_equal(skeleton_end_points(skeleton), np.argwhere(skeleton & (counts <= 2))), shape
    line = np.zeros((5, 9), dtype=bool)
    line[2, 1:8] = True
    assert skeleton_end_points(line).tolist() == [[2, 1], [2, 7]]
