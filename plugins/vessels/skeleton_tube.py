"""The tubed skeleton of a reference vessel mask, for the Skeleton Recall loss.

Skeleton Recall (Kirchhoff et al., ECCV 2024, arXiv 2404.03010) scores a
prediction's soft recall on the reference *skeleton*, thickened into a thin
tube so a centreline one pixel off still counts. The skeleton is computed on
the CPU, once per image, in the data pipeline (here before random cropping,
so ``CacheDataset`` keeps it with the image and a crop cuts tube and label
alike), which is what keeps the loss cheap: no differentiable skeleton per
step. As in the authors' code, the tube is kept inside the reference mask, so a
1-px vessel's tube is the vessel itself, never background.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage
from skimage.morphology import disk, skeletonize


def skeleton_tube(mask: np.ndarray, radius: int = 2, inside_mask: bool = True) -> np.ndarray:
    """The skeleton of a binary mask dilated by a disc of ``radius`` pixels.

    Args:
        mask: ``(H, W)`` vessel mask (bool, or numbers with vessel > 0.5).
        radius: disc radius of the dilation (0: the bare skeleton).
        inside_mask: keep only tube pixels that are vessel in ``mask``.

    Returns:
        ``(H, W)`` bool tube; all False for an empty mask.

    Raises:
        ValueError: ``mask`` is not 2-D or ``radius`` is negative.
    """
    values = np.asarray(mask)
    if values.ndim != 2:
        raise ValueError(f"skeleton_tube needs a 2-D mask (H, W), got shape {values.shape}")
    if radius < 0:
        raise ValueError(f"tube radius must be >= 0, got {radius}")
    vessel = values > 0.5 if values.dtype != bool else values
    if not vessel.any():
        return np.zeros(vessel.shape, dtype=bool)
    tube = skeletonize(np.ascontiguousarray(vessel))
    if radius > 0:
        tube = ndimage.binary_dilation(tube, structure=disk(radius).astype(bool))
    return tube & vessel if inside_mask else tube


class SkeletonTubed(MapTransform):
    """Dictionary transform: the tubed skeleton of the label under ``keys`` stored as ``tube_key``.

    Deterministic, so a MONAI ``CacheDataset`` computes it once per image; put it
    before the random crop so the crop cuts the tube and the label alike.

    Args:
        keys: the label key (one key), a ``(1, H, W)`` array or tensor of {0, 1}.
        tube_key: where the tube goes (``"tube"``), same shape and type as the label, float {0, 1}.
        radius: disc radius of the tube in pixels (1-2 px is typical).
        inside_mask: keep the tube inside the label (the authors' choice).
        allow_missing_keys: skip records without the label.

    Raises:
        ValueError: a label that is not ``(1, H, W)``.
    """

    def __init__(self, keys: KeysCollection = "label", tube_key: str = "tube", radius: int = 2, inside_mask: bool = True,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SkeletonTubed takes one label key, got {self.keys}")
        if radius < 0:
            raise ValueError(f"tube radius must be >= 0, got {radius}")
        self.tube_key = tube_key
        self.radius = radius
        self.inside_mask = inside_mask

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with ``tube_key`` set to the ``(1, H, W)`` float tube of the label."""
        record = dict(data)
        for key in self.key_iterator(record):
            label = record[key]
            values = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            if values.ndim != 3 or values.shape[0] != 1:
                raise ValueError(f"{key}: SkeletonTubed needs a (1, H, W) label, got shape {values.shape}")
            tube = skeleton_tube(values[0], self.radius, self.inside_mask)[None].astype(np.float32)
            record[self.tube_key] = torch.from_numpy(tube) if isinstance(label, torch.Tensor) else tube
        return record
