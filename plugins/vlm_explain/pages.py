"""What people see: the decision, the top concepts with their regions, the deletion chart and the similarity maps.

Each image gets one section of ``index.html`` and PNG files under its run
folder (``<slug>/regions.png``, ``<slug>/deletion.png``, ``<slug>/maps-NN.png``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from workbench.report import (HtmlReport, RunFolder, draw_boxes, fmt, image_strip, overlay_heatmap, save_line_plot, save_png,
                              to_rgb_uint8)
from workbench_plugins.vlm_explain.decomposition import DeletionCurves
from workbench_plugins.vlm_explain.explain import ImageExplanation

TOP_COLOUR, RANDOM_COLOUR, BOX_COLOUR = "#c81e1e", "#5a5a5a", (0, 220, 0)
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


def save_deletion_chart(path: str | Path, curves: DeletionCurves) -> Path:
    """Write the deletion curves as a PNG line plot (red: top-k concepts removed, grey: random) and return its path.

    Args:
        path: where the PNG goes.
        curves: the deletion test's curves (``ks``, ``top``, ``random``, ``(K + 1,)`` each) and their AUCs.
    """
    series = {f"top-k concepts removed (AUC {fmt(curves.auc_top)})": (curves.ks, curves.top),
              f"random concepts removed (AUC {fmt(curves.auc_random)})": (curves.ks, curves.random)}
    return save_line_plot(path, series, xlabel="concepts removed", ylabel="p(chosen class)", size=(4.0, 2.8),
                          colours=(TOP_COLOUR, RANDOM_COLOUR), y_range=(0.0, 1.0))


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
    decision = explanation.decision
    page.section(title, lead=(f"Why the encoder chose {decision.chosen_class} for {title}: the concepts that moved the image toward "
                              "that class, where they sit in the image, and whether removing them changes the decision."
                              if decision is not None else
                              f"Where in {title} the encoder finds each text: similarity maps of the image against it."))
    for note in explanation.notes:
        page.text(f"Note: {note}")
    if decision is not None:
        summary = decision.summary(top_k)
        page.text(f"Zero-shot decision: {decision.chosen_class} (p = {fmt(summary['probability'])}), from "
                  + ", ".join(f"{name} {fmt(p)}" for name, p in summary["probabilities"].items()) + ".")
        mutual = decision.mutual
        page.text(f"Mutual knowledge (image-side vs text-side concept rankings): {fmt(mutual['score'])} "
                  f"(top-{mutual['k']} overlap {fmt(mutual['top_k_overlap'])}, weighted Kendall tau {fmt(mutual['weighted_tau'])}). "
                  f"Text side's top concepts: {', '.join(summary['text_top_concepts']) or '(none)'}. "
                  f"Unexplained part of the image embedding: {fmt(decision.residual)}.")
        rows = [{"rank": row["rank"], "concept": row["concept"], "contribution": row["contribution"], "weight": row["weight"],
                 "text contribution": row["text_contribution"], "shared with text": "yes" if row["shared"] else ""}
                for row in summary["top_concepts"]]
        page.table(rows) if rows else page.text("(no concept moves the image toward the chosen class)")
        figures = [(save_png(run.file(f"{folder}/image.png"), _enlarge(_with_boxes(to_rgb_uint8(base), boxes))), "the image")]
        for index, (concept, heatmap) in enumerate(explanation.regions.items()):
            path = save_png(run.file(f"{folder}/region-{index:02d}.png"), _enlarge(overlay_heatmap(base, heatmap)))
            figures.append((path, f"region of \"{concept}\" (patch-token similarity)"))
        figures.append((save_deletion_chart(run.file(f"{folder}/deletion.png"), decision.deletion),
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
            page.figures([(path, f"\"{item.text[:160]}\": similarity {fmt(item.similarity)}")])
            table.append({"text": item.text[:120], "similarity": item.similarity})
        page.table(table)
    if extra_rows:
        page.text("Per true finding box: how much of each map's energy falls inside it.")
        page.table([dict(row) for row in extra_rows])
