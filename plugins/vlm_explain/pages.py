"""What people see: the decision, the top concepts with their regions, the deletion chart and the similarity maps.

Each image gets one section of ``index.html`` and PNG files under its run
folder (``<slug>/regions.png``, ``<slug>/deletion.png``, ``<slug>/maps-NN.png``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from workbench.report import HtmlReport, RunFolder, draw_boxes, image_strip, overlay_heatmap, save_png, to_rgb_uint8
from workbench_plugins.vlm_explain.decomposition import DeletionCurves
from workbench_plugins.vlm_explain.explain import ImageExplanation

TOP_COLOUR, RANDOM_COLOUR, BOX_COLOUR = (200, 30, 30), (90, 90, 90), (0, 220, 0)
MIN_SIDE = 256


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of ``text``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit] or "item"


def display_image(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` / ``(H, W)`` display-unit image -> ``(H, W)`` or ``(H, W, 3)`` for overlays."""
    image = np.asarray(image)
    if image.ndim == 3:
        return image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    return image


def _enlarge(picture: np.ndarray) -> np.ndarray:
    """Nearest-neighbour enlargement so small images stay readable on the page (at least ``MIN_SIDE`` high)."""
    factor = max(1, int(np.ceil(MIN_SIDE / picture.shape[0])))
    return np.kron(picture, np.ones((factor, factor, 1), dtype=picture.dtype)) if factor > 1 else picture


def _with_boxes(picture: np.ndarray, boxes: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return draw_boxes(picture, [dict(box, colour=BOX_COLOUR) for box in boxes]) if boxes else picture


def deletion_chart(curves: DeletionCurves, width: int = 320, height: int = 200) -> np.ndarray:
    """A line chart of the deletion curves (red: top-k concepts removed, grey: random), ``(height, width, 3)`` uint8.

    Drawn with PIL: one chart does not justify a plotting dependency.
    """
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    left, right, top, bottom = 34, width - 10, 10, height - 30
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for tick in (0.0, 0.5, 1.0):
        y = bottom - tick * (bottom - top)
        draw.line([left - 3, y, left, y], fill=(0, 0, 0))
        draw.text((2, y - 6), f"{tick:.1f}", fill=(0, 0, 0))
    span = max(int(curves.ks[-1]), 1)

    def points(values: np.ndarray) -> list[tuple[float, float]]:
        return [(left + (k / span) * (right - left), bottom - float(v) * (bottom - top)) for k, v in zip(curves.ks, values)]

    draw.line(points(curves.random), fill=RANDOM_COLOUR, width=2)
    draw.line(points(curves.top), fill=TOP_COLOUR, width=2)
    draw.text((left, bottom + 4), f"concepts removed (0..{span}); p(chosen class)", fill=(0, 0, 0))
    draw.text((left + 4, bottom + 16), f"top-k AUC {curves.auc_top:.2f}", fill=TOP_COLOUR)
    draw.text((left + 140, bottom + 16), f"random AUC {curves.auc_random:.2f}", fill=RANDOM_COLOUR)
    return np.asarray(canvas)


def write_image_section(page: HtmlReport, run: RunFolder, title: str, image: np.ndarray, explanation: ImageExplanation,
                        boxes: Sequence[Mapping[str, Any]] = (), top_k: int = 5, extra_rows: Sequence[Mapping[str, Any]] = ()) -> None:
    """Add one image's explanation to ``page`` and write its pictures into ``run``.

    Args:
        page: the HTML page.
        run: the run folder.
        title: the section title (e.g. the image's file name).
        image: ``(C, H, W)`` or ``(H, W)`` display-unit image.
        explanation: what :meth:`Explainer.explain` returned.
        boxes: true finding boxes to draw (green), when known.
        top_k: concepts listed.
        extra_rows: more rows for the similarity-map table (e.g. energy in the finding's box).
    """
    base = display_image(image)
    folder = slug(title)
    page.section(title)
    for note in explanation.notes:
        page.text(f"Note: {note}")
    decision = explanation.decision
    if decision is not None:
        summary = decision.summary(top_k)
        page.text(f"Zero-shot decision: {decision.chosen_class} (p = {summary['probability']:.2f}), from "
                  + ", ".join(f"{name} {p:.2f}" for name, p in summary["probabilities"].items()) + ".")
        mutual = decision.mutual
        page.text(f"Mutual knowledge (image-side vs text-side concept rankings): {mutual['score']:.2f} "
                  f"(top-{mutual['k']} overlap {mutual['top_k_overlap']:.2f}, weighted Kendall tau {mutual['weighted_tau']:.2f}). "
                  f"Text side's top concepts: {', '.join(summary['text_top_concepts']) or '(none)'}. "
                  f"Unexplained part of the image embedding: {decision.residual:.2f}.")
        rows = [{"rank": row["rank"], "concept": row["concept"], "contribution": row["contribution"], "weight": row["weight"],
                 "text contribution": row["text_contribution"], "shared with text": "yes" if row["shared"] else ""}
                for row in summary["top_concepts"]]
        page.table(rows) if rows else page.text("(no concept moves the image toward the chosen class)")
        figures = [(save_png(run.file(f"{folder}/image.png"), _enlarge(_with_boxes(to_rgb_uint8(base), boxes))), "the image")]
        for index, (concept, heatmap) in enumerate(explanation.regions.items()):
            path = save_png(run.file(f"{folder}/region-{index:02d}.png"), _enlarge(overlay_heatmap(base, heatmap)))
            figures.append((path, f"region of \"{concept}\" (patch-token similarity)"))
        figures.append((save_png(run.file(f"{folder}/deletion.png"), deletion_chart(decision.deletion)),
                        "deletion test: the chosen class's probability as concepts are projected out"))
        page.figures(figures)
    if explanation.maps:
        page.text("Similarity maps: pairwise occlusion (drop of the image-text similarity when a window hides each pixel) "
                  "and Interaction-CAM (gradient x activation of the similarity at the last image block, positive part).")
        table = []
        for index, item in enumerate(explanation.maps):
            tiles, captions = [to_rgb_uint8(base)], ["image"]
            if item.occlusion is not None:
                tiles.append(overlay_heatmap(base, item.occlusion))
                captions.append("occlusion")
            if item.cam is not None:
                tiles.append(overlay_heatmap(base, item.cam))
                captions.append("Interaction-CAM")
            strip = image_strip([_enlarge(_with_boxes(tile, boxes)) for tile in tiles], captions)
            path = save_png(run.file(f"{folder}/maps-{index:02d}.png"), strip)
            page.figures([(path, f"\"{item.text[:160]}\": similarity {item.similarity:.3f}")])
            table.append({"text": item.text[:120], "similarity": item.similarity})
        page.table(table)
    if extra_rows:
        page.table([dict(row) for row in extra_rows])
