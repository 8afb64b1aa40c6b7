"""Phrase-grounding metrics, as in the MS-CXR benchmark (Boecking et al., ECCV 2022) and MedRPG.

- CNR: ``|mean(inside) - mean(outside)| / sqrt(var(inside) + var(outside))`` of the
  heatmap, inside and outside the true box (BioViL's contrast-to-noise ratio).
- Pointing game: the heatmap's peak lies inside the true box (or mask).
- mIoU: IoU of the thresholded heatmap against the box mask, over a threshold sweep.
- Box accuracy: a predicted box overlaps the true one with IoU >= 0.5.

:class:`GroundingScores` collects one row per (image, phrase) and aggregates
overall and per category (MONAI's call / ``aggregate()`` / ``reset()`` habit).
These are a few lines of arithmetic each; no library computes MS-CXR's CNR.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from workbench_plugins.grounding.boxes import box_iou, normalise_heatmap

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def contrast_to_noise(heatmap: np.ndarray, inside: np.ndarray) -> float:
    """CNR of a heatmap for a region.

    Args:
        heatmap: ``(H, W)`` float.
        inside: ``(H, W)`` bool, the true box (or mask); must leave pixels on both sides.

    Returns:
        ``|mean_in - mean_out| / sqrt(var_in + var_out)``; ``inf`` for a perfect
        two-level map (no variance) with different means, 0 for a flat one.

    Raises:
        ValueError: shapes differ, or the region is empty or covers the image.
    """
    heatmap, inside = np.asarray(heatmap, dtype=np.float64), np.asarray(inside, dtype=bool)
    if heatmap.shape != inside.shape:
        raise ValueError(f"heatmap {heatmap.shape} and region {inside.shape} differ in shape")
    if not inside.any() or inside.all():
        raise ValueError("CNR needs pixels both inside and outside the region")
    values_in, values_out = heatmap[inside], heatmap[~inside]
    difference = abs(values_in.mean() - values_out.mean())
    noise = np.sqrt(values_in.var() + values_out.var())
    if noise == 0:
        return float("inf") if difference > 0 else 0.0
    return float(difference / noise)


def pointing_hit(heatmap: np.ndarray, inside: np.ndarray) -> bool:
    """True when the heatmap's maximum (first one, row-major) lies inside the region."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), np.shape(heatmap))
    return bool(np.asarray(inside, dtype=bool)[row, col])


def mask_iou(predicted: np.ndarray, target: np.ndarray) -> float:
    """IoU of two ``(H, W)`` bool masks (1.0 when both are empty)."""
    predicted, target = np.asarray(predicted, dtype=bool), np.asarray(target, dtype=bool)
    union = np.logical_or(predicted, target).sum()
    return float(np.logical_and(predicted, target).sum() / union) if union else 1.0


def iou_sweep(heatmap: np.ndarray, target: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[float]:
    """IoU of ``scaled heatmap >= t`` against ``target`` for each threshold ``t`` (heatmap min-max scaled first)."""
    scaled = normalise_heatmap(heatmap)
    return [mask_iou(scaled >= threshold, target) for threshold in thresholds]


def best_box_iou(predicted: Sequence[Mapping[str, Any]], truth: Mapping[str, Any]) -> float:
    """IoU of the highest-scored predicted box (the first) with the true box; 0 with no prediction."""
    return box_iou(predicted[0], truth) if predicted else 0.0


class GroundingScores:
    """Per-(image, phrase) grounding scores, aggregated overall and per category.

    Call it once per phrase; :meth:`aggregate` returns means. Rows are kept, so
    pages can show the worst cases first.

    Args:
        thresholds: the heatmap thresholds of the mIoU sweep.
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.rows: list[dict[str, Any]] = []

    def __call__(self, heatmap: np.ndarray, truth_box: Mapping[str, Any], *, category: str = "all", record_id: str = "",
                 phrase: str = "", predicted_boxes: Sequence[Mapping[str, Any]] = (), truth_mask: np.ndarray | None = None) -> dict[str, Any]:
        """Score one heatmap against its true box.

        Args:
            heatmap: ``(H, W)`` float, at the image's size.
            truth_box: the true pixel box.
            category: the phrase's category (finding) for the per-category table.
            record_id: the image's id (for pages).
            phrase: the phrase (for pages).
            predicted_boxes: predicted pixel boxes, best first (box accuracy uses the first).
            truth_mask: ``(H, W)`` bool finding mask; the box's mask when ``None``.

        Returns:
            The row: ``cnr``, ``pointing`` (0/1), ``iou@t`` per threshold, ``box_iou``, ``box_hit@0.5``.
        """
        from workbench_plugins.grounding.boxes import box_mask

        height, width = np.shape(heatmap)
        inside = box_mask(truth_box, height, width)
        row: dict[str, Any] = {"id": record_id, "phrase": phrase, "category": category,
                               "cnr": contrast_to_noise(heatmap, inside), "pointing": float(pointing_hit(heatmap, inside))}
        target = inside if truth_mask is None else np.asarray(truth_mask, dtype=bool)
        for threshold, value in zip(self.thresholds, iou_sweep(heatmap, target, self.thresholds)):
            row[f"iou@{threshold:g}"] = value
        if predicted_boxes:
            overlap = best_box_iou(predicted_boxes, truth_box)
            row.update(box_iou=overlap, **{"box_hit@0.5": float(overlap >= 0.5)})
        self.rows.append(row)
        return row

    def reset(self) -> None:
        """Forget every row."""
        self.rows = []

    def _means(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        means: dict[str, Any] = {"n": len(rows)}
        numeric = list(dict.fromkeys(key for row in rows for key in row if key not in ("id", "phrase", "category")))
        for key in numeric:
            values = np.asarray([row[key] for row in rows if key in row], dtype=np.float64)
            finite = values[np.isfinite(values)]
            means[key] = float(finite.mean()) if finite.size else float(values.max()) if values.size else float("nan")
        sweep = {f"{t:g}": means[f"iou@{t:g}"] for t in self.thresholds}
        best = max(sweep, key=lambda key: sweep[key])
        means.update(miou_best=sweep[best], miou_best_threshold=float(best))
        return means

    def aggregate(self, miou_threshold: float | None = None) -> dict[str, Any]:
        """Means overall and per category.

        Args:
            miou_threshold: the threshold whose mean IoU is reported as ``miou``;
                ``None`` takes the best of the sweep overall (say so when reporting it).

        Returns:
            ``{"overall": {...}, "per_category": {category: {...}}, "thresholds": [...], "miou_threshold": t}``
            where each ``{...}`` holds ``n``, ``cnr``, ``pointing``, ``iou@t``, ``miou``, ``box_iou``, ``box_acc@0.5``.
            Means leave out non-finite values (the infinite CNR of an exactly two-level heatmap).
        """
        if not self.rows:
            return {"overall": {"n": 0}, "per_category": {}, "thresholds": list(self.thresholds), "miou_threshold": miou_threshold}
        overall = self._means(self.rows)
        chosen = float(miou_threshold) if miou_threshold is not None else overall["miou_best_threshold"]
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            groups[row["category"]].append(row)
        per_category = {name: self._means(rows) for name, rows in sorted(groups.items())}
        for summary in (overall, *per_category.values()):
            summary["miou"] = summary[f"iou@{chosen:g}"]
            if "box_hit@0.5" in summary:
                summary["box_acc@0.5"] = summary.pop("box_hit@0.5")
        return {"overall": overall, "per_category": per_category, "thresholds": list(self.thresholds), "miou_threshold": chosen}

    def worst(self, count: int, key: str = "cnr") -> list[dict[str, Any]]:
        """The ``count`` rows with the lowest ``key`` (non-finite values last)."""
        def order(row: Mapping[str, Any]) -> float:
            value = float(row.get(key, np.nan))
            return value if np.isfinite(value) else np.inf
        return sorted(self.rows, key=order)[:count]
