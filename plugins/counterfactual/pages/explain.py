"""The explanation run's ``index.html``: per case the original, reconstruction, counterfactual, the change, path strip and saliency overlays."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from workbench.report import HtmlReport, RunFolder, fmt, image_strip, overlay_heatmap, save_png, signed_colours

CASE_COLUMNS = ("id", "label", "predicted", "p", "target", "path", "valid", "flipped_step", "steps", "queries", "seconds", "l1", "ssim", "sparsity")


MIN_SIDE = 160  # small images are enlarged (nearest neighbour) so the captions under them stay readable


def to_display(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(H, W)`` or ``(H, W, 3)`` uint8, without per-image contrast stretching."""
    pixels = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)


def enlarged(tile: np.ndarray) -> np.ndarray:
    """Repeat pixels by the smallest integer factor that makes the tile at least :data:`MIN_SIDE` high."""
    factor = -(-MIN_SIDE // tile.shape[0])
    return tile if factor <= 1 else np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def method_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per saliency method: energy-in-mask, pointing game, top-k Dice and seconds per image."""
    methods = list((summary.get("energy_in_mask") or {}).keys())
    keys = [key for key in ("energy_in_mask", "pointing", "dice_topk", "seconds_per_method") if key in summary]
    return [{"method": method, **{key: (summary[key] or {}).get(method) for key in keys}} for method in methods]


def write_explain_page(run: RunFolder, title: str, classes: Sequence[str], shown: Sequence[tuple[Any, Any, dict[str, np.ndarray]]],
                       summary: dict[str, Any], notes: Sequence[str] = (), report: HtmlReport | None = None) -> HtmlReport:
    """Write (or add to) the explanations' page.

    Args:
        run: the run folder (figures go to ``cases/``).
        title: the page title.
        classes: the class names.
        shown: ``(case, explanation, {method: saliency (S, S)})`` for each case drawn.
        summary: from ``run_explain`` (the metrics table appears when it holds ``flip_rate``).
        notes: conversions applied to inputs (channels, size), said plainly.
        report: an existing page (the demo); ``None`` writes ``run/index.html``.

    Returns:
        The page.
    """
    page = report or HtmlReport(title, run.path)
    page.section(title, lead="Counterfactual explanations: for each held-out image, the smallest change along the CAE's class "
                             "code that flips the classifier's decision, and where in the image that change happens.")
    for note in notes:
        page.text(f"Note: {note}.")
    if "flip_rate" in summary:
        page.text(f"{fmt(summary['explained'])} images explained; flip rate {fmt(summary['flip_rate'])} over "
                  f"{fmt(summary['flip_rate_cases'])} correctly classified images; {fmt(summary['seconds_per_explanation'], 's')} and "
                  f"{fmt(summary['queries_per_explanation'])} classifier queries per explanation; k-NN accuracy of the class codes "
                  f"{fmt(summary.get('knn_accuracy'))}.")
        page.table([{key: summary[key] for key in ("flip_rate", "seconds_per_explanation", "queries_per_explanation", "proximity_l1",
                                                   "proximity_ssim", "sparsity", "localised_cases")}])
        page.text("Per saliency method: the share of saliency energy inside the finding mask, whether its peak lands in the mask "
                  "(pointing), the Dice of its top pixels with the mask, and the time per image.")
        page.table(method_rows(summary))
    for index, (case, explanation, maps) in enumerate(shown):
        page.section(f"Case {case.id}", lead=explanation.sentence(classes))
        original = to_display(explanation.image)
        # The change the class-code swap made: against the reconstruction, so the CAE's reconstruction error (blur) is not
        # drawn as part of it (the CAE saliency is the smoothed absolute value of the same difference).
        difference = np.asarray(explanation.counterfactual, dtype=np.float32) - np.asarray(explanation.reconstruction, dtype=np.float32)
        tiles = [original, to_display(explanation.reconstruction), to_display(explanation.counterfactual),
                 signed_colours(difference.mean(axis=0))]
        captions = ["original", "reconstruction", "counterfactual" if explanation.valid else "last step (INVALID)",
                    f"change (red +, blue -, max {fmt(float(np.abs(difference).max()))})"]
        for name, saliency in maps.items():
            tiles.append(overlay_heatmap(original, saliency))
            captions.append("CAE saliency" if name == "cae" else name)
        main = save_png(run.file(f"cases/{index:02d}-{_safe(case.id)}.png"), image_strip([enlarged(tile) for tile in tiles], captions))
        figures = [(main, f"{case.id} ({case_label(case, classes)}): original, reconstruction, counterfactual, the change (counterfactual "
                          "minus reconstruction), saliency overlays")]
        if explanation.path:
            path_captions = [f"{step + 1}: p={fmt(float(probability))}" for step, probability in enumerate(explanation.probabilities)]
            strip = image_strip([enlarged(to_display(image)) for image in explanation.path], path_captions)
            figures.append((save_png(run.file(f"cases/{index:02d}-{_safe(case.id)}-path.png"), strip),
                            f"path to {classes[explanation.target]}: p({classes[explanation.target]}) under each step"))
        page.figures(figures)
    if summary.get("cases"):
        page.section("All cases", lead=f"Every one of the {len(summary['cases'])} explained images, one row each.")
        page.table([{key: row.get(key) for key in CASE_COLUMNS} for row in summary["cases"]])
    if report is None:
        page.write()
    return page


def case_label(case: Any, classes: Sequence[str]) -> str:
    """The case's true class name, or "label unknown"."""
    label = getattr(case, "label", None)
    return "label unknown" if label is None else str(classes[int(label)])


def _safe(text: str) -> str:
    return "".join(character if character.isalnum() or character in "-_" else "_" for character in str(text))
