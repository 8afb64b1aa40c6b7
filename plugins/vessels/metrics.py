"""Scoring predicted vessel masks and showing them: per-image metrics, their mean, overlays and the run's page.

The numbers are those of ``workbench check-topology`` (:func:`~.topology.check_mask`),
so a mask scored here and one checked from disk agree. ``postprocess_mask`` is
the cheap baseline every user tries first: threshold, then drop the small
components; it can also reconnect the fragments first (:mod:`.topology_repair`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.ndimage import binary_dilation
from skimage.morphology import remove_small_objects

from workbench.errors import DataError
from workbench.fsutil import atomic_write_json
from workbench.report import HtmlReport, fmt, heat_colours, image_strip, save_png, slugify, to_rgb_uint8
from workbench_plugins.vessels.topology.check import TopologyReport, check_mask
from workbench_plugins.vessels.topology.overlay import draw_topology_overlay
from workbench_plugins.vessels.topology.repair import reconnect_mask

SUMMARY_KEYS = ("dice", "cldice", "betti0_error", "betti1_error", "n_components", "reference_components", "cal",
                "n_breaks", "n_spurious_fragments")
BRIDGED_COLOUR = (40, 200, 60)  # mask pixels under the threshold: what hysteresis or bridging added
TABLE_COLUMNS = ("id", "dice", "cldice", "betti0_error", "betti1_error", "n_components", "reference_components", "cal",
                 "n_breaks", "n_spurious_fragments")


def postprocess_mask(probability: np.ndarray, threshold: float = 0.5, min_component_area: int = 0,
                     low_threshold: float | None = None, *, fov: np.ndarray | None = None, bridge_max_cost: float | None = None,
                     bridge_window: int = 60, min_isolated_area: int = 0) -> np.ndarray:
    """Threshold a probability map (optionally with hysteresis), drop components smaller than ``min_component_area``
    pixels and, optionally, bridge the remaining fragments and drop the pieces that stay small and isolated.

    Args:
        probability: ``(H, W)`` vessel probabilities in [0, 1].
        threshold: vessel where ``probability > threshold``.
        min_component_area: 8-connected components with fewer pixels are removed (0 keeps all).
        low_threshold: hysteresis: pixels above this are kept too when they connect (8-connected) to a pixel
            above ``threshold``, so a faint stretch of a thin vessel bridges the two pieces it would otherwise
            break into; ``None``: a single threshold.
        fov: ``(H, W)`` bool field of view: bridges never leave it (``None``: the whole image).
        bridge_max_cost, bridge_window, min_isolated_area: :func:`~.topology_repair.reconnect_mask` after the
            small-component removal (``bridge_max_cost=None``: no bridging, ``min_isolated_area`` still applies).

    Returns:
        ``(H, W)`` bool mask.

    Raises:
        DataError: the map holds NaN or infinite values.
    """
    if not np.all(np.isfinite(probability)):
        raise DataError("probability map", f"{int(np.count_nonzero(~np.isfinite(probability)))} NaN/infinite values")
    if low_threshold is not None and low_threshold < threshold:
        mask = hysteresis_mask(probability, low_threshold, threshold)
    else:
        mask = probability > threshold
    if min_component_area > 0 and mask.any():
        mask = remove_small_objects(mask, max_size=min_component_area - 1, connectivity=2)
    if bridge_max_cost is not None and mask.any():
        mask = reconnect_mask(mask, probability, fov, max_cost=bridge_max_cost, window=bridge_window, min_isolated_area=min_isolated_area)
    elif min_isolated_area > 0 and mask.any():
        mask = remove_small_objects(mask, max_size=min_isolated_area - 1, connectivity=2)
    return mask


def hysteresis_mask(probability: np.ndarray, low: float, high: float) -> np.ndarray:
    """Pixels above ``low`` in an 8-connected piece that holds a pixel above ``high``: ``(H, W)`` bool.

    scikit-image's ``apply_hysteresis_threshold`` links pieces 4-connected only, while every connectivity
    measure here (Betti-0, components) counts vessels 8-connected; a diagonal one-pixel vessel would break.
    """
    import cc3d

    labels = cc3d.connected_components((probability > low).astype(np.uint8), connectivity=8)
    strong = np.unique(labels[(probability > high) & (labels > 0)])
    return np.isin(labels, strong) & (labels > 0)


@dataclass
class ScoredImage:
    """One image's prediction and its connectivity report.

    Attributes:
        id: the record's id.
        mask: ``(H, W)`` bool predicted mask.
        report: the :class:`TopologyReport` (against the reference when there was one).
        reference: ``(H, W)`` bool reference or ``None``.
        fov: ``(H, W)`` bool field of view or ``None``.
    """

    id: str
    mask: np.ndarray
    report: TopologyReport
    reference: np.ndarray | None = None
    fov: np.ndarray | None = None

    def row(self) -> dict[str, Any]:
        """The per-image metrics row (JSON types), without the break and fragment lists."""
        payload = self.report.to_dict()
        payload.pop("breaks"), payload.pop("spurious_fragments")
        return {"id": self.id, **payload}


def score_image(image_id: str, mask: np.ndarray, reference: np.ndarray | None, fov: np.ndarray | None,
                break_distance: float, fragment_area: int) -> ScoredImage:
    """Check one predicted mask (against its reference when given, inside its FOV).

    Args:
        image_id: the record's id (for the table).
        mask: ``(H, W)`` bool prediction.
        reference: ``(H, W)`` bool reference or ``None``.
        fov: ``(H, W)`` bool field of view or ``None``.
        break_distance, fragment_area: as ``workbench check-topology``.

    Returns:
        The :class:`ScoredImage`.
    """
    report = check_mask(mask, reference, fov, break_distance=break_distance, fragment_area=fragment_area)
    return ScoredImage(image_id, mask, report, reference, fov)


def mean_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean of each summary metric over the rows that have it (``{}`` for no rows)."""
    means = {}
    for key in SUMMARY_KEYS:
        values = [float(row[key]) for row in rows if row.get(key) is not None]
        if values:
            means[key] = float(np.mean(values))
    return means


def write_image_figure(folder: Path, scored: ScoredImage, image: np.ndarray, probability: np.ndarray,
                       threshold: float | None = None) -> Path:
    """Save ``figures/<id>.png``: the image, the probability map and the connectivity overlay side by side.

    Args:
        folder: the run folder.
        scored: the scored prediction.
        image: ``(C, H, W)`` or ``(H, W)`` image as read (any range).
        probability: ``(H, W)`` probabilities in [0, 1].
        threshold: the mask's threshold: mask pixels at or under it (added by hysteresis or bridging) are drawn
            green on the overlay; ``None``: not marked.

    Returns:
        The PNG's path.
    """
    picture = to_rgb_uint8(np.moveaxis(image, 0, -1) if image.ndim == 3 else image)
    heat = heat_colours(np.clip(probability, 0.0, 1.0))
    overlay = draw_topology_overlay(scored.mask, scored.report, scored.reference, scored.fov)
    caption = "connectivity"
    if threshold is not None:
        added = scored.mask & (probability <= threshold)
        if added.any():
            overlay = np.array(overlay)  # the drawn overlay may be a read-only view of its image
            overlay[binary_dilation(added, iterations=max(1, min(added.shape) // 400))] = BRIDGED_COLOUR  # thickened to be seen
            caption = "connectivity (green: bridged)"
    safe = "".join(char if char.isalnum() or char in "-_." else "_" for char in scored.id)
    return save_png(folder / "figures" / f"{safe}.png", image_strip([picture, heat, overlay], ["image", "vessel probability", caption]))


def order_worst_first(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows sorted by Betti-0 error (or, without references, component count), worst first, then by id."""
    key = "betti0_error" if any("betti0_error" in row for row in rows) else "n_components"
    return sorted(rows, key=lambda row: (-(row.get(key) or 0), str(row["id"])))


def write_vessel_page(folder: Path, title: str, rows: Sequence[dict[str, Any]], figures: dict[str, Path],
                      notes: Sequence[str] = (), extra_tables: Sequence[tuple[str, list[dict[str, Any]]]] = (),
                      skipped: Sequence[tuple[str, str]] = (), page: HtmlReport | None = None,
                      history: Sequence[Mapping[str, Any]] = ()) -> HtmlReport:
    """Write (or add to) the run's ``index.html``: notes, mean metrics, training curves, the per-image table worst first, overlays.

    Args:
        folder: the run folder.
        title: the page (or section) title.
        rows: per-image metric rows (:meth:`ScoredImage.row`, plus anything else to show).
        figures: image id -> its figure PNG.
        notes: paragraphs shown first.
        extra_tables: ``(section title, rows)`` shown after the summary.
        skipped: ``(file, reason)`` of the images that could not be predicted.
        page: add sections to this page (the demo's) instead of writing a new one.
        history: logged training rows (``step``, ``loss``, its terms, ``lr``), drawn as training curves.

    Returns:
        The page (written when it is the run's own).
    """
    own = page is None
    page = page or HtmlReport(title, folder)
    images = f"{len(rows)} image{'s' if len(rows) != 1 else ''}"
    scored = any("dice" in row for row in rows)
    page.section(title, lead=(f"How well the vessel network segments {images} against their references, with the topology that "
                              "matters clinically: broken and spurious vessel pieces, not only pixel overlap." if scored else
                              f"The vessel network's segmentation of {images}, with the connectivity of each prediction "
                              "(how many pieces it falls into)."))
    for note in notes:
        page.text(note)
    ranked = order_worst_first(rows)
    if rows and scored:
        page.text("Means over the scored images:")
        page.table([{"images": len(rows), **mean_metrics(rows)}])
    if history:
        page.section("Vessel training curves", lead="How the vessel network's loss and its terms fell during training.")
        page.history(history, name=f"{slugify(title)}-training-curves",
                     caption=f"Each logged training scalar per step, learning rate last (final loss {fmt(history[-1].get('loss'))}).")
    for section, table in extra_tables:
        page.section(section, lead=f"{section}: one row per logged entry.").table(table)
    worst = "Per image, worst Betti-0 error first" if any("betti0_error" in row for row in rows) else "Per image, most components first"
    page.section(worst, lead="Each held-out image's scores, the worst connectivity first, then its overlay: where the prediction "
                             "breaks or adds vessel pieces.")
    page.table(ranked, columns=[column for column in TABLE_COLUMNS if any(column in row for row in ranked)])
    page.text("Overlay colours: white = predicted vessel (blue where the reference disagrees), red = reference vessel missed, "
              "yellow = likely break (end points of different components), orange circle = spurious fragment, grey = outside the FOV.")
    page.figures((figures[row["id"]], f"{row['id']}: Betti-0 error {fmt(row.get('betti0_error', '-'))}, "
                  f"{fmt(row['n_components'])} components") for row in ranked if row["id"] in figures)
    if skipped:
        page.section("Skipped", lead=f"The {len(skipped)} images that could not be predicted, and why.")
        page.table([{"file": name, "reason": reason} for name, reason in skipped])
    if own:
        page.write()
    return page


def write_metrics_file(path: Path, rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    """Write ``metrics.json``: ``{"mean": {...}, "images": [...], **extra}`` (NaN-free JSON) over what is there, atomically."""
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    payload = {"mean": mean_metrics(rows), "images": [{key: clean(value) for key, value in row.items()} for row in rows], **(extra or {})}
    if path.exists():  # keep what the job's start wrote (the ``precision`` choice, workbench.jobs.start_job)
        payload = {**json.loads(path.read_text(encoding="utf-8")), **payload}
    atomic_write_json(path, payload)
    return path
