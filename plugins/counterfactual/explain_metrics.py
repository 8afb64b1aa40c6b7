"""Scores of explanations: proximity, sparsity and localisation against lesion masks.

Localisation follows the usual saliency checks: energy-in-mask (share of the saliency's total
inside the lesion), the pointing game (is the saliency's maximum inside the lesion) and the Dice
of the top-k% most salient pixels with the lesion.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice
from skimage.metrics import structural_similarity


def energy_in_mask(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the non-negative saliency ``(H, W)`` inside the bool ``mask``; 0 when the saliency is all zero."""
    values = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = values.sum()
    return float(values[mask].sum() / total) if total > 0 else 0.0


def pointing_hit(saliency: np.ndarray, mask: np.ndarray) -> float:
    """1.0 when the saliency's maximum (first one in row order) lies inside ``mask``, else 0.0."""
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return float(mask[row, col])


def topk_dice(saliency: np.ndarray, mask: np.ndarray, percent: float = 5.0) -> float:
    """Dice of the top ``percent`` % most salient pixels with ``mask``."""
    count = max(1, int(round(saliency.size * percent / 100.0)))
    top = np.zeros(saliency.size, dtype=bool)
    top[np.argsort(saliency, axis=None, kind="stable")[-count:]] = True
    as_batch = lambda values: torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))[None, None]  # noqa: E731
    # top holds at least one pixel, so MONAI's empty-mask rule never applies: Dice is 0 against an empty mask
    return float(compute_dice(as_batch(top.reshape(saliency.shape)), as_batch(mask), include_background=True, ignore_empty=False))


def localisation(saliency: np.ndarray, mask: np.ndarray, percent: float = 5.0) -> dict[str, float]:
    """``energy_in_mask``, ``pointing`` and ``dice_topk`` of one saliency ``(H, W)`` against one bool mask ``(H, W)``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != saliency.shape:
        raise ValueError(f"mask shape {mask.shape} differs from saliency shape {saliency.shape}")
    return {"energy_in_mask": energy_in_mask(saliency, mask), "pointing": pointing_hit(saliency, mask), "dice_topk": topk_dice(saliency, mask, percent)}


def proximity(counterfactual: np.ndarray, image: np.ndarray, reconstruction: np.ndarray, change_threshold: float = 0.05) -> dict[str, float]:
    """How close a counterfactual ``(C, H, W)`` stays to the input, and how little it changes.

    Returns:
        ``l1`` (mean |cf - input|), ``ssim`` (to the input, data range 1), and ``sparsity``: the share
        of pixels whose change from the reconstruction exceeds ``change_threshold`` (lower is sparser).
    """
    image, counterfactual = np.asarray(image, dtype=np.float64), np.asarray(counterfactual, dtype=np.float64)
    ssim = structural_similarity(image, counterfactual, data_range=1.0, channel_axis=0) if image.shape[0] > 1 else \
        structural_similarity(image[0], counterfactual[0], data_range=1.0)
    changed = np.abs(counterfactual - np.asarray(reconstruction, dtype=np.float64)).max(axis=0) > change_threshold
    return {"l1": float(np.abs(counterfactual - image).mean()), "ssim": float(ssim), "sparsity": float(changed.mean())}


def mean_of(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    """The mean of ``row[key]`` over rows that have a number there (``None`` when none do)."""
    values = [float(row[key]) for row in rows if isinstance(row.get(key), (int, float)) and row.get(key) is not None]
    return float(np.mean(values)) if values else None
