"""Deletion and insertion curves of a saliency map (Petsiuk et al. 2018, RISE), for ``real_counterfactual``.

Deletion: the most salient pixels are replaced first by the image's mean grey; the class probability should fall
fast (low area under the curve is good). Insertion: starting from a heavily blurred copy, the most salient pixels
are put back first; the probability should rise fast (high area is good). Both curves are sampled at ``points``
evenly spaced shares of the pixels, 0 to 1, and their area is the trapezoid mean over the share.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

DELETION_FILL = "image mean grey"
INSERTION_START = "Gaussian blur, sigma = side / 8"


def ranked_pixels(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices from the most to the least salient (stable on ties)."""
    return np.argsort(-np.asarray(saliency, dtype=np.float64), axis=None, kind="stable")


def perturbation_series(image: torch.Tensor, saliency: np.ndarray, points: int = 17) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The deletion and insertion images of one ``(C, S, S)`` image along its saliency ranking.

    Args:
        image: ``(C, S, S)`` in [0, 1].
        saliency: ``(S, S)``, higher = more important.
        points: shares of pixels, evenly spaced from 0 to 1.

    Returns:
        ``(deletion (points, C, S, S), insertion (points, C, S, S), shares (points,))``.

    Raises:
        ValueError: the saliency's shape is not the image's.
    """
    channels, height, width = image.shape
    if np.shape(saliency) != (height, width):
        raise ValueError(f"saliency shape {np.shape(saliency)} differs from the image's {(height, width)}")
    order = torch.as_tensor(ranked_pixels(saliency).copy())
    shares = np.linspace(0.0, 1.0, points)
    pixels = image.reshape(channels, -1)
    grey = torch.full_like(pixels, float(image.mean()))
    blurred = torch.as_tensor(np.stack([gaussian_filter(plane, sigma=height / 8) for plane in image.numpy()]), dtype=image.dtype)
    blurred = blurred.reshape(channels, -1)
    deletion, insertion = [], []
    for share in shares:
        chosen = order[: int(round(share * order.numel()))]
        removed, inserted = pixels.clone(), blurred.clone()
        removed[:, chosen] = grey[:, chosen]
        inserted[:, chosen] = pixels[:, chosen]
        deletion.append(removed.reshape(channels, height, width))
        insertion.append(inserted.reshape(channels, height, width))
    return torch.stack(deletion), torch.stack(insertion), shares


@torch.no_grad()
def deletion_insertion_auc(probability_of: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, saliency: np.ndarray,
                           class_index: int, points: int = 17) -> dict[str, float]:
    """Areas under the deletion and insertion curves of class ``class_index``'s probability.

    Args:
        probability_of: ``(B, C, S, S)`` images -> ``(B, K)`` class probabilities.
        image: ``(C, S, S)`` in [0, 1].
        saliency: ``(S, S)``.
        class_index: the class whose probability is followed (the classifier's prediction).
        points: samples of each curve.

    Returns:
        ``{"deletion_auc": ..., "insertion_auc": ...}``, each in [0, 1].
    """
    deletion, insertion, shares = perturbation_series(image, saliency, points)
    deleted = probability_of(deletion)[:, class_index].float().cpu().numpy()
    inserted = probability_of(insertion)[:, class_index].float().cpu().numpy()
    return {"deletion_auc": float(np.trapezoid(deleted, shares)), "insertion_auc": float(np.trapezoid(inserted, shares))}
