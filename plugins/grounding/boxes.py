"""Boxes in pixels: checking, rescaling, rasterising, and heatmap -> boxes by connected components.

A box is a dict with ``x, y, w, h`` in pixels of its image (x = column, y =
row, as in the manifests and MS-CXR), optionally ``phrase``, ``category`` and
``score``. Tensors for the supervised head use normalised ``(cx, cy, w, h)``
in ``[0, 1]`` and ``(x1, y1, x2, y2)`` for GIoU.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from skimage import measure
from torchvision.ops import box_convert
from torchvision.ops import box_iou as torchvision_box_iou

from workbench.errors import DataError

BOX_KEYS = ("x", "y", "w", "h")


def check_box(box: Mapping[str, Any], height: int, width: int, source: str | None = None) -> tuple[float, float, float, float]:
    """Validate a pixel box against its image size.

    Args:
        box: dict with ``x, y, w, h``.
        height, width: the image size in pixels.
        source: the file (or record) to name in the error.

    Returns:
        ``(x, y, w, h)`` as floats.

    Raises:
        DataError: a missing or non-finite value, a non-positive size, or a box
            that is not inside the image (a pixel of tolerance for rounding).
    """
    try:
        x, y, w, h = (float(box[key]) for key in BOX_KEYS)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(source, f"box {dict(box)!r}: needs numeric x, y, w, h ({error})") from error
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise DataError(source, f"box {dict(box)!r}: x, y must be finite and w, h > 0")
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        phrase = box.get("phrase", "")
        raise DataError(source, f"box of {phrase!r} (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside the {width}x{height} image")
    return x, y, w, h


def scale_box(box: Mapping[str, Any], from_size: tuple[int, int], to_size: tuple[int, int]) -> dict[str, Any]:
    """Rescale a pixel box from an image of ``from_size = (H, W)`` to one of ``to_size = (H, W)``; other keys are kept."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    scaled = dict(box)
    scaled.update(x=float(box["x"]) * sx, y=float(box["y"]) * sy, w=float(box["w"]) * sx, h=float(box["h"]) * sy)
    return scaled


def box_mask(box: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool: the pixels whose centres lie inside the box (at least one pixel)."""
    x, y, w, h = (float(box[key]) for key in BOX_KEYS)
    col0, row0 = int(np.clip(np.floor(x + 0.5), 0, width - 1)), int(np.clip(np.floor(y + 0.5), 0, height - 1))
    col1, row1 = int(np.clip(np.ceil(x + w - 0.5), col0 + 1, width)), int(np.clip(np.ceil(y + h - 0.5), row0 + 1, height))
    mask = np.zeros((height, width), dtype=bool)
    mask[row0:row1, col0:col1] = True
    return mask


def box_iou(first: Mapping[str, Any], second: Mapping[str, Any]) -> float:
    """Intersection over union of two pixel boxes ``{x, y, w, h}`` (continuous coordinates), by ``torchvision.ops.box_iou``.

    Returns:
        The IoU in ``[0, 1]``; 0 when the boxes are disjoint or both have no area.
    """
    xywh = torch.tensor([[float(box[key]) for key in BOX_KEYS] for box in (first, second)], dtype=torch.float64)
    corners = box_convert(xywh, in_fmt="xywh", out_fmt="xyxy")
    iou = float(torchvision_box_iou(corners[:1], corners[1:])[0, 0])
    return iou if iou == iou else 0.0  # 0/0 (two empty boxes) is NaN there


def heatmap_to_boxes(heatmap: np.ndarray, threshold: float = 0.5, max_boxes: int = 3, min_area: int = 4) -> list[dict[str, Any]]:
    """Boxes around the connected regions of a heatmap above a threshold, best first.

    The heatmap is min-max scaled to ``[0, 1]`` first, so ``threshold`` is a
    fraction of its range; regions come from ``skimage.measure.label`` (8-connected).

    Args:
        heatmap: ``(H, W)`` float.
        threshold: in ``[0, 1]`` of the scaled heatmap.
        max_boxes: keep at most this many regions.
        min_area: drop regions smaller than this many pixels.

    Returns:
        Dicts with ``x, y, w, h`` (pixels) and ``score`` (the region's peak of the
        scaled heatmap), sorted by score then area, at most ``max_boxes``.
    """
    scaled = normalise_heatmap(heatmap)
    labels = measure.label(scaled >= threshold, connectivity=2)
    boxes = []
    for region in measure.regionprops(labels, intensity_image=scaled):
        if region.area < min_area:
            continue
        row0, col0, row1, col1 = region.bbox
        boxes.append({"x": int(col0), "y": int(row0), "w": int(col1 - col0), "h": int(row1 - row0),
                      "score": float(region.intensity_max), "area": int(region.area)})
    boxes.sort(key=lambda box: (-box["score"], -box["area"]))
    return boxes[:max_boxes]


def normalise_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """``(H, W)`` heatmap min-max scaled to ``[0, 1]`` (all zeros when it is flat)."""
    values = np.asarray(heatmap, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def boxes_to_cxcywh(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Pixel ``(B, 4)`` boxes ``(x, y, w, h)`` -> normalised ``(B, 4)`` ``(cx, cy, w, h)`` in ``[0, 1]``."""
    scale = boxes.new_tensor([width, height, width, height])
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x + w / 2, y + h / 2, w, h], dim=-1) / scale


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(B, 4)`` ``(cx, cy, w, h)`` -> ``(B, 4)`` ``(x1, y1, x2, y2)`` (same units)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def cxcywh_to_pixel_box(box: torch.Tensor | np.ndarray, height: int, width: int) -> dict[str, float]:
    """One normalised ``(cx, cy, w, h)`` -> a pixel box dict clipped to the image."""
    cx, cy, w, h = (float(value) for value in np.asarray(box, dtype=np.float64).reshape(4))
    x1, y1 = max(0.0, (cx - w / 2) * width), max(0.0, (cy - h / 2) * height)
    x2, y2 = min(float(width), (cx + w / 2) * width), min(float(height), (cy + h / 2) * height)
    return {"x": x1, "y": y1, "w": max(x2 - x1, 1.0), "h": max(y2 - y1, 1.0)}
