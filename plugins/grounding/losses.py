"""The supervised head's loss: box regression (L1 + GIoU, as DETR and MedRPG) plus a heatmap loss (BCE + Dice)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from workbench.config import StrictModel
from workbench_plugins.grounding.boxes import cxcywh_to_xyxy


class LossWeights(StrictModel):
    """Weights of the loss terms (DETR's 5 : 2 for L1 : GIoU).

    Attributes:
        l1: L1 on normalised ``(cx, cy, w, h)``.
        giou: generalised IoU loss on the boxes.
        bce: binary cross-entropy of the patch heatmap against the target's patch coverage.
        dice: soft Dice of the same.
    """

    l1: float = 5.0
    giou: float = 2.0
    bce: float = 1.0
    dice: float = 1.0


class GroundingLoss(nn.Module):
    """Box + heatmap loss of :class:`~workbench_plugins.grounding.models.PhraseGroundingHead`.

    Args:
        weights: the term weights.
    """

    def __init__(self, weights: LossWeights | None = None):
        super().__init__()
        self.weights = weights or LossWeights()
        self.dice = DiceLoss(sigmoid=True, reduction="mean")

    def forward(self, outputs: dict[str, torch.Tensor], target_boxes: torch.Tensor, target_heatmaps: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss and its parts.

        Args:
            outputs: the head's ``heatmap_logits`` ``(B, r, c)`` and ``boxes`` ``(B, 4)`` (cx, cy, w, h).
            target_boxes: ``(B, 4)`` normalised ``(cx, cy, w, h)``.
            target_heatmaps: ``(B, r, c)`` in ``[0, 1]``: each patch's share covered by the finding.

        Returns:
            ``loss`` and the detached parts ``l1``, ``giou``, ``bce``, ``dice``.
        """
        predicted = outputs["boxes"].float()
        l1 = F.l1_loss(predicted, target_boxes)
        giou = generalized_box_iou_loss(cxcywh_to_xyxy(predicted), cxcywh_to_xyxy(target_boxes), reduction="mean")
        logits = outputs["heatmap_logits"].float()
        bce = F.binary_cross_entropy_with_logits(logits, target_heatmaps)
        dice = self.dice(logits[:, None], target_heatmaps[:, None])
        w = self.weights
        loss = w.l1 * l1 + w.giou * giou + w.bce * bce + w.dice * dice
        return {"loss": loss, "l1": l1.detach(), "giou": giou.detach(), "bce": bce.detach(), "dice": dice.detach()}


def patch_coverage(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Each patch's covered share of a mask: ``(H, W)`` bool/float -> ``(rows, cols)`` in ``[0, 1]`` (area pooling)."""
    return F.adaptive_avg_pool2d(mask.float()[None, None], grid)[0, 0]
