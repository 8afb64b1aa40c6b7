"""Vessel losses: Dice + CE, soft-clDice (one-channel fix), Skeleton Recall and the graph loss, on exact fixtures."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from monai.losses.cldice import soft_skel

from workbench.errors import ConfigError
from workbench_plugins.vessels.graph_head import node_targets
from workbench_plugins.vessels.losses import LOSS_NAMES, build_vessel_loss, soft_cldice, soft_skeleton
from workbench_plugins.vessels.models import build_network, network_definition

SIZE = 64


def line_label(thickness: int = 5, row: int = 30) -> torch.Tensor:
    """(1, 1, 64, 64) {0, 1}: one horizontal line ``thickness`` px thick from column 4 to 59."""
    label = torch.zeros(1, 1, SIZE, SIZE)
    label[..., row: row + thickness, 4:60] = 1.0
    return label


def as_logits(mask: torch.Tensor, margin: float = 20.0) -> torch.Tensor:
    """Confident one-channel logits for a binary mask."""
    return mask * 2 * margin - margin


def test_every_name_builds_and_unknowns_are_named() -> None:
    assert set(LOSS_NAMES) == {"dice_ce", "cldice", "skeleton_recall", "graph"}
    for name in LOSS_NAMES:
        assert isinstance(build_vessel_loss(name), torch.nn.Module)
    with pytest.raises(ConfigError, match="'cl_dice'.*known: dice_ce"):
        build_vessel_loss("cl_dice")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['iters'\]"):
        build_vessel_loss("cldice", iters=5)
    with pytest.raises(ConfigError, match="iterations must be an integer >= 1"):
        build_vessel_loss("cldice", iterations=0)
    with pytest.raises(ConfigError, match="alpha"):
        build_vessel_loss("graph", alpha=1.5)


def test_dice_ce_matches_monai_and_is_zero_when_perfect() -> None:
    label = line_label()
    logits = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    terms = build_vessel_loss("dice_ce")(logits, {"label": label})
    assert torch.isclose(terms["loss"], DiceCELoss(sigmoid=True)(logits, label))
    assert set(terms) == {"loss", "dice_ce"}
    assert build_vessel_loss("dice_ce")(as_logits(label), {"label": label})["loss"].item() < 1e-6
    two_class = torch.cat([-as_logits(label), as_logits(label)], 1)
    assert build_vessel_loss("dice_ce")(two_class, {"label": label})["loss"].item() < 1e-6


def test_soft_cldice_one_channel_is_nonzero_with_a_gradient() -> None:
    label = line_label()
    logits = torch.zeros(1, 1, SIZE, SIZE, requires_grad=True)
    terms = build_vessel_loss("cldice", region="dice")(logits, {"label": label})
    assert 0.05 < terms["cldice"].item() < 0.95  # a uniform 0.5 prediction is neither perfect nor zero
    clDice_part = 1.0 - soft_cldice(torch.sigmoid(logits), label, iterations=10)
    clDice_part.backward()
    assert clDice_part.item() > 0.05
    assert logits.grad is not None and logits.grad.abs().sum().item() > 0
    # the gradient pushes the line's pixels up (negative gradient of the loss inside the label)
    assert logits.grad[label.bool()].mean().item() < 0


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_soft_skeleton_equals_monai_and_thins_a_line_to_its_centre(iterations: int) -> None:
    maps = torch.rand(2, 2, 40, 40, generator=torch.Generator().manual_seed(iterations))
    assert torch.allclose(soft_skeleton(maps, iterations), soft_skel(maps, iterations), atol=1e-6)
    skeleton = soft_skeleton(line_label(thickness=5), 10)
    assert skeleton[0, 0, 32, 6:58].min().item() == 1.0  # the centre row survives
    assert skeleton[0, 0, 30].sum().item() == 0 and skeleton[0, 0, 34].sum().item() == 0  # the edges do not


def test_one_channel_sigmoid_equals_two_channel_softmax() -> None:
    label = line_label()
    logits = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels = label.expand(2, -1, -1, -1)
    loss = build_vessel_loss("cldice")
    one = loss(logits, {"label": labels})["cldice"]
    two = loss(torch.cat([torch.zeros_like(logits), logits], 1), {"label": labels})["cldice"]  # softmax fg = sigmoid(logit)
    assert torch.isclose(one, two, atol=1e-6)


def test_cldice_is_zero_for_a_perfect_prediction() -> None:
    label = line_label()
    for region in ("dice", "dice_ce"):
        terms = build_vessel_loss("cldice", region=region)(as_logits(label), {"label": label})
        assert terms["cldice"].item() == pytest.approx(1.0, abs=1e-6)
        assert terms["loss"].item() < 1e-5


def test_cldice_punishes_a_break_more_than_the_same_pixels_lost_at_the_edge() -> None:
    label = line_label(thickness=5)
    broken = label.clone()
    broken[..., 30:35, 30:35] = 0.0  # 25 pixels cut across the line: two pieces
    thinned = label.clone()
    thinned[..., 34, 20:45] = 0.0  # 25 pixels off one edge: still one piece
    assert broken.sum() == thinned.sum()
    loss = build_vessel_loss("cldice", region="dice")
    intact_terms = loss(as_logits(label), {"label": label})
    broken_terms = loss(as_logits(broken), {"label": label})
    thinned_terms = loss(as_logits(thinned), {"label": label})
    assert broken_terms["dice"].item() == pytest.approx(thinned_terms["dice"].item(), abs=1e-6)  # Dice cannot tell them apart
    assert broken_terms["loss"].item() > thinned_terms["loss"].item() + 0.01
    assert broken_terms["loss"].item() > intact_terms["loss"].item() + 0.02
    assert thinned_terms["cldice"].item() == pytest.approx(1.0, abs=1e-3)  # no skeleton pixel lost


def test_skeleton_recall_needs_the_tube_and_measures_recall_on_it() -> None:
    label = line_label()
    tube = torch.zeros_like(label)
    tube[..., 31:34, 4:60] = 1.0
    loss = build_vessel_loss("skeleton_recall", weight=2.0)
    with pytest.raises(ConfigError, match=r"batch\['tube'\].*skeleton"):
        loss(as_logits(label), {"label": label})
    with pytest.raises(ConfigError, match=r"batch\['tube'\] has shape \(1, 1, 32, 32\)"):
        loss(as_logits(label), {"label": label, "tube": torch.zeros(1, 1, 32, 32)})
    half = label.clone()
    half[..., 32:] = 0.0  # predicts the left half of the line only
    terms = loss(as_logits(half), {"label": label, "tube": tube})
    assert terms["skeleton_recall"].item() == pytest.approx(28 / 56, abs=1e-3)
    assert terms["loss"].item() == pytest.approx(terms["dice_ce"].item() + 2.0 * (1 - 28 / 56), abs=1e-3)
    perfect = loss(as_logits(label), {"label": label, "tube": tube})
    assert perfect["skeleton_recall"].item() == pytest.approx(1.0, abs=1e-6) and perfect["loss"].item() < 1e-5
    two_class = torch.cat([-as_logits(half), as_logits(half)], 1)
    assert loss(two_class, {"label": label, "tube": tube})["skeleton_recall"].item() == pytest.approx(28 / 56, abs=1e-3)


def test_graph_loss_needs_node_logits_and_trains_the_head() -> None:
    torch.manual_seed(0)
    model = build_network(network_definition("vessel-unet", {"channels": [8, 16, 32], "strides": [2, 2],
                                                             "graph_head": {"features": 8, "grid": 8, "hidden": 16}}))
    images = torch.randn(2, 3, SIZE, SIZE)
    label = line_label().expand(2, -1, -1, -1).contiguous()
    loss = build_vessel_loss("graph", node_weight=1.0)
    assert loss.requires_aux and not build_vessel_loss("cldice").requires_aux
    with pytest.raises(ConfigError, match="return_aux=True"):
        loss(model(images), {"label": label})
    terms = loss(model(images, return_aux=True), {"label": label})
    assert set(terms) == {"loss", "dice_ce", "cldice", "node_bce"} and terms["node_bce"].item() > 0
    terms["loss"].backward()
    for name in ("node_classifier.weight", "graph_layers.0.linear.weight", "node_in.0.weight", "fuse_nodes.weight"):
        assert model.get_parameter(name).grad.abs().sum().item() > 0, name
    # node targets: the 8x8 tiles that the line (rows 30-34, columns 4-59) touches
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., 3:5, 0:8] = 1.0
    assert torch.equal(node_targets(line_label(), 8), expected)
    exact = {"logits": as_logits(label), "node_logits": as_logits(expected.expand(2, -1, -1, -1))}
    assert loss(exact, {"label": label})["node_bce"].item() < 1e-6
