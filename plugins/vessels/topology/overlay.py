"""A PNG a reader can scan for connectivity defects: the mask, what it missed, breaks and fragments."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from workbench_plugins.vessels.topology.check import TopologyReport

PREDICTION_COLOUR = (235, 235, 235)
FALSE_POSITIVE_COLOUR = (0, 170, 255)
MISSED_COLOUR = (230, 25, 75)
BREAK_COLOUR = (255, 225, 25)
FRAGMENT_COLOUR = (245, 130, 48)
OUTSIDE_FOV_COLOUR = (45, 45, 45)


def draw_topology_overlay(prediction: np.ndarray, report: TopologyReport, reference: np.ndarray | None = None,
                          fov: np.ndarray | None = None) -> np.ndarray:
    """Draw the checked mask with its defects marked.

    Prediction pixels are white (with a reference: white where the reference
    agrees, blue where it does not), reference vessels the prediction missed
    are red, pixels outside the field of view dark grey; each break is a yellow
    line between its two end points with a circle at each end, each spurious
    fragment an orange circle around it.

    Args:
        prediction: ``(H, W)`` bool mask (as checked).
        report: the :class:`TopologyReport` of ``prediction``.
        reference: ``(H, W)`` bool reference, or None.
        fov: ``(H, W)`` bool field of view, or None.

    Returns:
        ``(H, W, 3)`` uint8 RGB, rows first.

    Raises:
        ValueError: the masks are not 2-D or their shapes differ.
    """
    if prediction.ndim != 2:
        raise ValueError(f"overlays are drawn for 2-D masks (H, W), got shape {prediction.shape}")
    for name, other in (("reference", reference), ("fov", fov)):
        if other is not None and other.shape != prediction.shape:
            raise ValueError(f"{name} shape {other.shape} does not match the prediction's {prediction.shape}")
    inside = fov if fov is not None else np.ones(prediction.shape, dtype=bool)
    predicted = prediction & inside
    canvas = np.zeros(prediction.shape + (3,), dtype=np.uint8)
    canvas[~inside] = OUTSIDE_FOV_COLOUR
    if reference is not None:
        expected = reference & inside
        canvas[predicted & expected] = PREDICTION_COLOUR
        canvas[predicted & ~expected] = FALSE_POSITIVE_COLOUR
        canvas[expected & ~predicted] = MISSED_COLOUR
    else:
        canvas[predicted] = PREDICTION_COLOUR
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    marker = max(3, round(min(prediction.shape) / 120))
    for fragment in report.spurious_fragments:
        row0, col0, row1, col1 = fragment.bbox
        radius = 0.5 * float(np.hypot(row1 - row0, col1 - col0)) + marker
        row, col = fragment.centroid
        draw.ellipse([col - radius, row - radius, col + radius, row + radius], outline=FRAGMENT_COLOUR, width=2)
    for gap in report.breaks:
        (row_a, col_a), (row_b, col_b) = gap.a, gap.b
        draw.line([(col_a, row_a), (col_b, row_b)], fill=BREAK_COLOUR, width=2)  # PIL points are (x = column, y = row)
        for row, col in (gap.a, gap.b):
            draw.ellipse([col - marker, row - marker, col + marker, row + marker], outline=BREAK_COLOUR, width=2)
    return np.asarray(picture)
