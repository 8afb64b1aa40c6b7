"""Where an image and a text meet: concept regions, pairwise occlusion and Interaction-CAM maps.

After Sammani et al., "Visualizing and Understanding Self-Supervised Vision
Learning" (explaining a similarity rather than a class):

- :func:`occlusion_map`: pairwise occlusion. A window slides over the image
  (MONAI ``OcclusionSensitivity``, filled with the image mean); the map is the
  drop of the image-text cosine similarity when the window hides a pixel.
  It only needs the global embeddings, so it works for any image tower.
- :func:`interaction_cam`: an Interaction-CAM-style gradient map: the gradient
  of the image-text similarity with respect to the tokens entering the image
  tower's last transformer block, times those tokens, summed over channels,
  positive part, per patch. The last block's input is used, not the tower's
  output tokens, because a ViT that pools through its class token gives its
  output patch tokens no gradient at all.
- :func:`concept_regions`: each concept's cosine similarity with the patch
  tokens projected into the joint space (needs a ViT).

And :func:`energy_in_box`, the share of a map's positive mass inside a box.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from workbench.dual_encoder import TextSimilarityProbe, interaction_cam as shared_interaction_cam
from workbench_plugins.vlm_explain.encoder import ExplainedEncoder


def upsample(maps: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(T, r, c)`` maps -> ``(T, H, W)`` float32 numpy, bilinear."""
    tensor = torch.as_tensor(np.asarray(maps) if isinstance(maps, np.ndarray) else maps).float()
    return F.interpolate(tensor[:, None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[:, 0].cpu().numpy()


@torch.no_grad()
def concept_regions(encoder: ExplainedEncoder, prepared: torch.Tensor, concept_vectors: np.ndarray | torch.Tensor) -> np.ndarray:
    """Patch-token similarity of each concept, on the patch grid.

    Args:
        encoder: the encoder explained.
        prepared: ``(1, C, S, S)`` prepared image.
        concept_vectors: ``(T, D)`` unit concept embeddings.

    Returns:
        ``(T, rows, cols)`` cosine similarities in ``[-1, 1]``.

    Raises:
        ConfigError: a model without patch tokens (named).
    """
    patches = encoder.patch_embeddings(prepared)[0]  # (N, D)
    rows, cols = encoder.grid()
    vectors = torch.as_tensor(np.asarray(concept_vectors), dtype=patches.dtype, device=patches.device)
    return (vectors @ patches.T).reshape(len(vectors), rows, cols).cpu().numpy()


@torch.no_grad()
def occlusion_map(encoder: ExplainedEncoder, prepared: torch.Tensor, text: torch.Tensor, window: float = 0.25,
                  overlap: float = 0.5, batch_size: int = 64) -> np.ndarray:
    """Pairwise occlusion: the image-text similarity drop when each pixel is hidden.

    Args:
        encoder: the encoder explained.
        prepared: ``(1, C, S, S)`` prepared image.
        text: ``(D,)`` unit text embedding (a report, a sentence or a class).
        window: the occluder's side as a fraction of ``S``.
        overlap: overlap of neighbouring windows (MONAI's ``overlap``).
        batch_size: occluded images per forward pass.

    Returns:
        ``(S, S)`` float32: base similarity minus the mean similarity over the windows covering each pixel
        (positive where hiding the pixel makes image and text agree less).
    """
    from monai.visualize import OcclusionSensitivity

    text = text.to(prepared.device).float().reshape(-1)
    probe = TextSimilarityProbe(encoder, text)
    base = float(probe(prepared)[0, 0])
    mask_size = max(2, int(round(window * prepared.shape[-1])))
    occlusion = OcclusionSensitivity(probe, mask_size=mask_size, n_batch=batch_size, verbose=False, mode="mean_img",
                                     overlap=overlap, activate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI indexes with lists, which torch warns about
        occluded, _ = occlusion(prepared)  # (1, 1, S, S)
    return (base - torch.as_tensor(occluded)[0, 0].float()).cpu().numpy()


def interaction_cam(encoder: ExplainedEncoder, prepared: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """Interaction-CAM of the image-text similarity (see :func:`workbench.dual_encoder.interaction_cam`).

    Args:
        encoder: the encoder explained (a ViT image tower).
        prepared: ``(1, C, S, S)`` prepared image.
        text: ``(D,)`` unit text embedding.

    Returns:
        ``(rows, cols)`` float32, ``>= 0``.

    Raises:
        ConfigError: a model without patch tokens / transformer blocks (named).
    """
    return shared_interaction_cam(encoder, prepared, text, encoder.grid())


def energy_in_box(heatmap: np.ndarray, box: Mapping[str, Any]) -> float:
    """Share of the map's positive mass inside a pixel box.

    Args:
        heatmap: ``(H, W)`` at the image's size.
        box: ``x, y, w, h`` in pixels (x = column).

    Returns:
        ``sum(relu(map) in box) / sum(relu(map))`` in [0, 1]; 0 for a map with no positive value.
    """
    positive = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    total = float(positive.sum())
    if total <= 0:
        return 0.0
    x, y = max(0, int(round(float(box["x"])))), max(0, int(round(float(box["y"]))))
    w, h = int(round(float(box["w"]))), int(round(float(box["h"])))
    return float(positive[y:y + h, x:x + w].sum() / total)


def box_area_fraction(box: Mapping[str, Any], size: tuple[int, int]) -> float:
    """The box's share of the image area (the energy a uniform map would put in it)."""
    height, width = size
    x0, y0 = max(0.0, float(box["x"])), max(0.0, float(box["y"]))
    x1, y1 = min(float(width), float(box["x"]) + float(box["w"])), min(float(height), float(box["y"]) + float(box["h"]))
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) / float(height * width)
