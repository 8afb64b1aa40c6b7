"""Post-processing of a vessel probability map: single threshold, hysteresis bridges, small-component removal."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.errors import DataError
from workbench_plugins.vessels.metrics import hysteresis_mask, postprocess_mask
from workbench_plugins.vessels.topology.metrics import label_components


def count_components(mask: np.ndarray) -> int:
    return label_components(mask)[1]


def _broken_vessel() -> np.ndarray:
    """A 1-pixel diagonal vessel whose middle is faint (p 0.3), and a faint blob touching nothing strong."""
    probability = np.zeros((40, 40), np.float32)
    for step in range(30):
        probability[5 + step, 5 + step] = 0.3 if 10 <= step <= 13 else 0.9
    probability[30:34, 2:6] = 0.35
    return probability


def test_hysteresis_bridges_a_faint_diagonal_stretch_and_drops_isolated_faint_pixels():
    probability = _broken_vessel()
    single = postprocess_mask(probability, threshold=0.5)
    bridged = postprocess_mask(probability, threshold=0.5, low_threshold=0.25)
    assert count_components(single) == 2 and count_components(bridged) == 1  # 8-connected along the diagonal
    assert bridged[16, 16] and not bridged[31, 3]  # the faint stretch joins; the faint blob stays out
    assert np.array_equal(bridged, hysteresis_mask(probability, 0.25, 0.5))
    # a low threshold at or above the high one is the plain threshold
    assert np.array_equal(postprocess_mask(probability, threshold=0.5, low_threshold=0.5), single)


def test_small_components_go_after_thresholding_and_nan_is_refused():
    probability = _broken_vessel()
    kept = postprocess_mask(probability, threshold=0.5, min_component_area=11)
    assert count_components(kept) == 1 and kept.sum() == 16 and not kept[5, 5]  # the 10-pixel piece goes, the 16-pixel one stays
    probability[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        postprocess_mask(probability)


def test_test_time_flips_average_the_four_mirrored_passes():
    import torch

    from workbench_plugins.vessels.inference import predict_probabilities

    torch.manual_seed(0)
    # a network that is not mirror-symmetric (an asymmetric kernel), so each mirrored pass differs
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, (1, 5), padding=(0, 2)))
    image = torch.rand(3, 40, 52)
    plain = predict_probabilities(model, image, 32, device="cpu")
    averaged = predict_probabilities(model, image, 32, device="cpu", flips=True)
    by_hand = [plain]
    for dims in ((2,), (1,), (1, 2)):
        mirrored = predict_probabilities(model, torch.flip(image, dims), 32, device="cpu")
        by_hand.append(torch.flip(mirrored, dims))
    assert averaged.shape == plain.shape == (1, 40, 52)
    assert torch.allclose(averaged, torch.stack(by_hand).mean(0), atol=1e-6)
    assert not torch.allclose(averaged, plain, atol=1e-3)
