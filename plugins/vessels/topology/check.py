"""Connectivity check of a vessel mask, alone or against a reference, inside a field of view.

:func:`check_mask` is the one entry point (the ``workbench check-topology``
command calls it per file); :class:`TopologyReport` holds its numbers and
writes them as JSON. The pieces live in :mod:`.topology_metrics` (Dice,
clDice, Betti numbers, CAL), :mod:`.topology_breaks` (likely breaks, spurious
fragments) and :mod:`.topology_masks` (binarising stored values, the fundus
field of view).

Inputs are binarised at ``> 0`` (see :func:`~.topology_masks.binarise_mask`),
so ``{0, 1}``, ``{0, 255}`` and label maps all work. Everything outside the
field of view is set to background before counting: a vessel leaving the
FOV and coming back counts as two components, as a reader of the masked
image would see it, and background cut off by the FOV rim is never a hole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.errors import DataError
from workbench_plugins.vessels.topology.breaks import Break, Fragment, find_breaks, find_spurious_fragments
from workbench_plugins.vessels.topology.masks import binarise_mask, fov_from_fundus
from workbench_plugins.vessels.topology.metrics import cal_score, cldice, count_holes, dice, label_components, skeleton

__all__ = ["TopologyReport", "check_mask", "fov_from_fundus", "Break", "Fragment", "DEFAULT_BREAK_DISTANCE", "DEFAULT_FRAGMENT_AREA"]

DEFAULT_BREAK_DISTANCE = 10.0
DEFAULT_FRAGMENT_AREA = 30
DEFAULT_CAL_RADIUS = 2


@dataclass
class TopologyReport:
    """The connectivity numbers of one mask (inside its field of view).

    Attributes:
        shape: the mask's shape, ``(H, W)`` or ``(D, H, W)``.
        foreground_pixels: vessel pixels of the prediction inside the FOV.
        n_components: 8-connected foreground components of the prediction (Betti-0).
        n_holes: enclosed 4-connected background components of the prediction (Betti-1; tunnels in 3-D).
        breaks: likely breaks (end-point pairs of different components), closest first.
        spurious_fragments: small components judged false positives, largest first.
        has_reference: whether the fields below were computed.
        dice, cldice, cal: overlap scores in [0, 1].
        cal_connectivity, cal_area, cal_length: the three CAL factors.
        betti0_error: ``|n_components - reference_components|``.
        betti1_error: ``|n_holes - reference_holes|``.
        reference_components, reference_holes: the reference's Betti numbers.
    """

    shape: tuple[int, ...]
    foreground_pixels: int
    n_components: int
    n_holes: int
    breaks: list[Break] = field(default_factory=list)
    spurious_fragments: list[Fragment] = field(default_factory=list)
    has_reference: bool = False
    dice: float | None = None
    cldice: float | None = None
    betti0_error: int | None = None
    betti1_error: int | None = None
    cal: float | None = None
    cal_connectivity: float | None = None
    cal_area: float | None = None
    cal_length: float | None = None
    reference_components: int | None = None
    reference_holes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types; the reference-only keys appear only with a reference."""
        payload: dict[str, Any] = {
            "shape": list(self.shape),
            "foreground_pixels": self.foreground_pixels,
            "n_components": self.n_components,
            "n_holes": self.n_holes,
            "n_breaks": len(self.breaks),
            "n_spurious_fragments": len(self.spurious_fragments),
        }
        if self.has_reference:
            for key in ("dice", "cldice", "cal", "cal_connectivity", "cal_area", "cal_length"):
                payload[key] = round(float(getattr(self, key)), 6)
            for key in ("betti0_error", "betti1_error", "reference_components", "reference_holes"):
                payload[key] = int(getattr(self, key))
        payload["breaks"] = [item.to_dict() for item in self.breaks]
        payload["spurious_fragments"] = [item.to_dict() for item in self.spurious_fragments]
        return payload

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON (a JSON-lines record)."""
        return json.dumps(self.to_dict(), separators=(", ", ": "))


def _as_mask(values: np.ndarray | None, name: str, shape: tuple[int, ...] | None) -> np.ndarray | None:
    if values is None:
        return None
    mask = binarise_mask(np.asarray(values), source=name)
    if mask.ndim not in (2, 3):
        raise DataError(name, f"expected a 2-D (H, W) or 3-D (D, H, W) mask, got shape {mask.shape}")
    if shape is not None and mask.shape != shape:
        raise DataError(name, f"shape {mask.shape} does not match the prediction's {shape}")
    return mask


def check_mask(
    pred: np.ndarray,
    reference: np.ndarray | None = None,
    fov: np.ndarray | None = None,
    *,
    break_distance: float = DEFAULT_BREAK_DISTANCE,
    fragment_area: int = DEFAULT_FRAGMENT_AREA,
    cal_radius: int = DEFAULT_CAL_RADIUS,
) -> TopologyReport:
    """Check the connectivity of a vessel mask, and compare it with a reference when one is given.

    Args:
        pred: ``(H, W)`` or ``(D, H, W)`` predicted mask, bool or binary-like values (binarised at > 0).
        reference: same-shape reference mask, or None for the mask's own numbers only.
        fov: same-shape field-of-view mask (True inside), or None for the whole array.
        break_distance: the largest end-point gap, in pixels, reported as a likely break.
        fragment_area: the largest component area, in pixels, that can be a spurious fragment.
        cal_radius: the CAL dilation radius (alpha = beta), 2 in the paper.

    Returns:
        The :class:`TopologyReport`.

    Raises:
        DataError: a mask is not binary-like (NaN, probabilities, grey levels), is not
            2-D/3-D, or its shape differs from the prediction's.
    """
    prediction = _as_mask(pred, "prediction", None)
    reference_mask = _as_mask(reference, "reference", prediction.shape)
    fov_mask = _as_mask(fov, "field of view", prediction.shape)
    outside = None
    if fov_mask is not None:
        outside = ~fov_mask
        prediction = prediction & fov_mask
        reference_mask = reference_mask & fov_mask if reference_mask is not None else None

    labels, n_components = label_components(prediction)
    prediction_skeleton = skeleton(prediction)
    report = TopologyReport(
        shape=tuple(int(size) for size in prediction.shape),
        foreground_pixels=int(np.count_nonzero(prediction)),
        n_components=n_components,
        n_holes=count_holes(prediction, n_components, outside),
        breaks=find_breaks(prediction_skeleton, labels, break_distance),
        spurious_fragments=find_spurious_fragments(labels, n_components, fragment_area, reference_mask),
    )
    if reference_mask is None:
        return report

    reference_components = label_components(reference_mask)[1]
    reference_skeleton = skeleton(reference_mask)
    reference_holes = count_holes(reference_mask, reference_components, outside)
    cal = cal_score(prediction, reference_mask, n_components, reference_components, prediction_skeleton, reference_skeleton, cal_radius)
    report.has_reference = True
    report.dice = dice(prediction, reference_mask)
    report.cldice = cldice(prediction, reference_mask, prediction_skeleton, reference_skeleton)
    report.betti0_error = abs(n_components - reference_components)
    report.betti1_error = abs(report.n_holes - reference_holes)
    report.cal, report.cal_connectivity, report.cal_area, report.cal_length = cal.cal, cal.connectivity, cal.area, cal.length
    report.reference_components = reference_components
    report.reference_holes = reference_holes
    return report
