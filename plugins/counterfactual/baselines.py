"""The standard saliency baselines on the same classifier and images: MONAI GradCAM, GradCAMpp, OcclusionSensitivity."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity
from torch import nn

from workbench.errors import ConfigError

BASELINES = ("gradcam", "gradcampp", "occlusion")


def unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``(B, 1, H, W)`` to [0, 1] (min to 0, max to 1; an all-constant map becomes zeros).

    MONAI's CAM classes default to ``default_normalizer``, which maps (min, max) to (1, 0): it turns the
    map upside down, so the most class-relevant region scores lowest. The CAMs here are given this one instead.
    """
    flat = maps.detach().flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).clamp(min=1e-12)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return torch.where((high > low).view(shape), (maps - low.view(shape)) / span.view(shape), torch.zeros_like(maps))


def baseline_maps(classifier: nn.Module, methods: tuple[str, ...] | list[str], gradcam_layer: str | None,
                  occlusion_mask: int = 16) -> dict[str, Callable[[torch.Tensor, int], np.ndarray]]:
    """Saliency functions ``fn(image (1, C, S, S), class_index) -> (S, S)`` float32 (higher = more important).

    Args:
        classifier: the classifier, in eval mode, taking [0, 1] images.
        methods: names from :data:`BASELINES`.
        gradcam_layer: the layer Grad-CAM hooks (``record.extra["gradcam_layer"]``); needed for the CAM methods.
        occlusion_mask: occlusion patch side in pixels.

    Returns:
        Method name -> saliency function.

    Raises:
        ConfigError: an unknown method, or a CAM method for a classifier without a known layer.
    """
    unknown = [name for name in methods if name not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown saliency baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    maps: dict[str, Callable[[torch.Tensor, int], np.ndarray]] = {}
    for name in methods:
        if name in ("gradcam", "gradcampp"):
            if not gradcam_layer:
                raise ConfigError(f"{name}: the classifier names no Grad-CAM layer (a head on an encoder has none); drop it from baselines")
            cam = (GradCAM if name == "gradcam" else GradCAMpp)(nn_module=classifier, target_layers=gradcam_layer, postprocessing=unit_scale)

            def run_cam(image: torch.Tensor, class_index: int, cam: GradCAM = cam) -> np.ndarray:
                with torch.enable_grad():
                    return cam(image, class_idx=class_index)[0, 0].detach().float().cpu().numpy()

            maps[name] = run_cam
        else:
            occlusion = OcclusionSensitivity(nn_module=classifier, mask_size=occlusion_mask, n_batch=32, verbose=False, overlap=0.5)

            @torch.no_grad()
            def run_occlusion(image: torch.Tensor, class_index: int, occlusion: OcclusionSensitivity = occlusion) -> np.ndarray:
                # MONAI gives the class probabilities with each patch hidden: importance is how far the score drops.
                occluded, _ = occlusion(image)
                base = torch.softmax(classifier(image).float(), dim=1)[0, class_index]
                return (base - occluded[0, class_index]).clamp(min=0).float().cpu().numpy()

            maps[name] = run_occlusion
    return maps
