"""What people see: heatmap overlays with the phrase as caption, true (green) and predicted (red) boxes,
saliency comparisons, and the grounding sections of index.html."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.data.readers import read_image
from workbench.errors import DataError
from workbench.report import HtmlReport, RunFolder, draw_boxes, fmt, slugify, image_strip, overlay_heatmap, save_png
from workbench_plugins.grounding.boxes import normalise_heatmap
from workbench_plugins.grounding.evaluate import GroundedPhrase, category_table, sweep_table
from workbench_plugins.grounding.metrics import mask_iou

TRUE_COLOUR, PREDICTED_COLOUR = (0, 220, 0), (230, 25, 75)
SALIENCY_SUFFIXES = (".npy", ".png", ".nii.gz", ".nii", ".tif", ".tiff")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:48] or "phrase"


def grounding_picture(image: np.ndarray, heatmap: np.ndarray, predicted: Sequence[dict[str, Any]],
                      truth: dict[str, Any] | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8: the heatmap over the image, the true box in green and predicted boxes in red.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)``.
        heatmap: ``(H, W)``.
        predicted: predicted pixel boxes.
        truth: the true pixel box, when known.
    """
    picture = overlay_heatmap(image, heatmap)
    boxes = [dict(box, colour=PREDICTED_COLOUR) for box in predicted]
    if truth is not None:
        boxes.append(dict(truth, colour=TRUE_COLOUR))
    width = max(1, int(round(max(np.shape(image)[:2]) / 200)))
    return draw_boxes(picture, boxes, width=width) if boxes else picture


def save_grounded(run: RunFolder, folder: str, item: GroundedPhrase) -> tuple[Path, str]:
    """Write one grounded phrase's picture (the plain image beside the overlay); returns ``(path, caption)``."""
    sample, box = item.sample, item.sample.boxes[item.index]
    image = sample.display()
    strip = image_strip([image, grounding_picture(image, item.heatmap, item.predicted[:1], box)])
    path = save_png(run.file(f"{folder}/{_slug(sample.id)}-{item.index}-{_slug(box['phrase'])}.png"), strip)
    row = item.row
    numbers = f"CNR {fmt(row.get('cnr', float('nan')))}, pointing {'hit' if row.get('pointing') else 'miss'}"
    if "box_iou" in row:
        numbers += f", box IoU {fmt(row['box_iou'])}"
    return path, f"{sample.id}: \"{box['phrase']}\" ({box['category']}): {numbers}"


def write_evaluation_section(page: HtmlReport, run: RunFolder, metrics: dict[str, Any], worst: Sequence[GroundedPhrase],
                             title: str = "Phrase grounding") -> None:
    """Add the per-category table, the threshold sweep and the worst cases (pictures) to ``page``."""
    page.section(title, lead=f"Where the model looks for each finding phrase ({metrics.get('method', '')}): how well its heatmaps "
                        "and boxes land on the true finding boxes of held-out images, per finding and overall.")
    page.text(f"{fmt(metrics.get('phrases', 0))} phrases on {fmt(metrics.get('images', 0))} images. "
              "CNR: the heatmap's contrast inside the true box against outside; pointing: its peak inside the box; "
              f"mIoU: the heatmap above {fmt(metrics.get('miou_threshold'))} of its range against the box (the sweep over "
              "that threshold is plotted below); box IoU and acc@0.5: the predicted box against the true one.")
    page.table(category_table(metrics), digits=3)
    if metrics.get("negation_lower_rate") is not None:
        page.text(f"Negations: \"no <finding>\" peaked lower than the finding's phrase on {fmt(metrics['negation_lower_rate'], '%')} "
                  "of the phrases.")
    sweep = sweep_table(metrics)
    if len(sweep) > 1:
        best = max(sweep, key=lambda row: row["mean IoU"] if row["mean IoU"] == row["mean IoU"] else -1.0)
        page.plot({"mean IoU": ([row["threshold"] for row in sweep], [row["mean IoU"] for row in sweep])},
                  name=f"{slugify(title)}-threshold-sweep", xlabel="heatmap threshold (fraction of its range)", ylabel="mean IoU",
                  caption=f"Mean IoU over all phrases against the heatmap threshold; best {fmt(best['mean IoU'])} "
                          f"at {fmt(best['threshold'])}.")
    elif sweep:
        page.table(sweep, digits=3)
    if worst:
        page.text("Worst cases first (lowest CNR). Green: the true box; red: the predicted box; colours: the phrase's heatmap.")
        pictures = [save_grounded(run, "grounding", item) for item in worst]
        for start in range(0, len(pictures), 4):
            page.figures(pictures[start:start + 4])


def find_saliency(folder: Path, record_id: str) -> Path | None:
    """The saliency map file for ``record_id`` in ``folder`` (``<id>.npy``, ``.png``, ``.nii.gz``...), or ``None``."""
    for suffix in SALIENCY_SUFFIXES:
        candidate = Path(folder) / f"{record_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_saliency(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a saliency map (``.npy`` or any image the workbench reads) as ``(H, W)`` float of ``shape``.

    A map of another size (a classifier's input size, say) is resized bilinearly to ``shape``;
    its absolute value is returned (a saliency's sign says which way, not where).

    Raises:
        DataError: unreadable, or not a 2-D map (naming the file).
    """
    path = Path(path)
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(path, f"cannot read the saliency map: {error}") from error
    else:
        values, _ = read_image(path, ensure_channel_first=False, intensity="stored")
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 3 and values.shape[-1] in (1, 3):
        values = values.mean(axis=-1)
    if values.ndim != 2 or min(values.shape) < 1 or not np.isfinite(values).all():
        raise DataError(path, f"a saliency map must be a finite 2-D array, got shape {values.shape}")
    if values.shape != tuple(shape):
        values = F.interpolate(torch.from_numpy(values)[None, None], size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.abs(values)


def saliency_overlap(heatmap: np.ndarray, saliency: np.ndarray, top_fraction: float = 0.1) -> float:
    """IoU of the top ``top_fraction`` pixels of the phrase heatmap and of the saliency map.

    Does the region the classifier needs (the counterfactual's change) match the
    region the report's phrase names? Both maps are compared by rank, so their
    scales do not matter.
    """
    def top(values: np.ndarray) -> np.ndarray:
        cut = np.quantile(values, 1.0 - top_fraction)
        return values >= cut

    return mask_iou(top(normalise_heatmap(heatmap)), top(normalise_heatmap(saliency)))


def saliency_picture(image: np.ndarray, heatmap: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """The phrase heatmap and the saliency map over the same image, side by side: ``(H, W', 3)`` uint8."""
    return image_strip([overlay_heatmap(image, heatmap), overlay_heatmap(image, saliency)], ["phrase heatmap", "saliency"])


def write_saliency_section(page: HtmlReport, run: RunFolder, items: Sequence[GroundedPhrase], folder: Path,
                           top_fraction: float = 0.1) -> list[dict[str, Any]]:
    """Lay each kept phrase's heatmap beside the saliency map found for its image; returns the overlap rows."""
    rows, pictures = [], []
    for item in items:
        found = find_saliency(folder, item.sample.id)
        if found is None:
            continue
        saliency = load_saliency(found, item.sample.size)
        overlap = saliency_overlap(item.heatmap, saliency, top_fraction)
        phrase = item.sample.boxes[item.index]["phrase"]
        rows.append({"id": item.sample.id, "phrase": phrase, "overlap IoU": overlap})
        path = save_png(run.file(f"saliency/{_slug(item.sample.id)}-{item.index}.png"), saliency_picture(item.sample.display(), item.heatmap, saliency))
        pictures.append((path, f"{item.sample.id}: \"{phrase}\" vs saliency: IoU {fmt(overlap)}"))
    page.section("Phrase heatmap versus classifier saliency",
                 lead="Whether the grounding heatmap of each phrase and a classifier's saliency map point at the same pixels.")
    page.text(f"Saliency maps from {folder}; overlap = IoU of the top {fmt(top_fraction, '%')} pixels of each map.")
    page.table(rows) if rows else page.text("(no saliency map matched the grounded images)")
    for start in range(0, len(pictures), 3):
        page.figures(pictures[start:start + 3])
    return rows
