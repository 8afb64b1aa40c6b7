"""The classifier's ``index.html``: metrics, confusion matrix and example images with their probabilities."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from workbench.report import HtmlReport, RunFolder, fmt, save_png, slugify


def confusion_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The confusion matrix as table rows: ``truth`` then one column per predicted class."""
    classes = metrics["classes"]
    return [{"truth \\ predicted": name, **{other: int(count) for other, count in zip(classes, row)}}
            for name, row in zip(classes, metrics["confusion"])]


def write_classifier_page(run: RunFolder, title: str, metrics: dict[str, Any], dataset: Any, ids: Sequence[str],
                          probabilities: np.ndarray, examples: int, history: Sequence[dict[str, float]] = (),
                          report: HtmlReport | None = None) -> HtmlReport:
    """Add the classifier's section to ``report`` (or write the run's own ``index.html``).

    Args:
        run: the run folder (figures go to ``examples/``).
        title: the page (or section) title.
        metrics: from :func:`~workbench_plugins.counterfactual.metrics.classification_metrics`.
        dataset: the evaluated dataset (items ``{"id", "image" (C, S, S), "label"}``), for the examples.
        ids: the evaluated ids, in the order of ``probabilities``.
        probabilities: ``(N, K)``.
        examples: how many example images to show.
        history: logged training scalars (drawn as training curves).
        report: an existing page to add to (the demo); ``None`` writes ``run/index.html``.

    Returns:
        The page.
    """
    page = report or HtmlReport(title, run.path)
    classes = " vs ".join(str(name) for name in metrics["classes"])
    page.section(title, lead=f"How well the classifier ({classes}) does on {fmt(metrics['n'])} held-out images"
                             + (", and how its training loss fell." if history else "."))
    auroc = metrics.get("auroc")
    page.text(f"{fmt(metrics['n'])} held-out images: accuracy {fmt(metrics['accuracy'])}, "
              f"AUROC {metrics.get('auroc_note') if auroc is None else fmt(auroc)}."
              + (f" Stored as {metrics['stored_model']}." if metrics.get("stored_model") else ""))
    page.table([{"class": name, "images": support} for name, support in zip(metrics["classes"], metrics["support"])])
    page.text("Confusion matrix: rows are the true class, columns the predicted one.")
    page.table(confusion_rows(metrics))
    if history:
        page.history([dict(row) for row in history], name=f"{slugify(title)}-curves",
                     caption=f"Each logged training scalar per step, learning rate last (final loss {fmt(history[-1].get('loss'))}).")
    positions = {identifier: index for index, identifier in enumerate(ids)}
    figures = []
    for index in range(len(dataset)):
        if len(figures) >= examples:
            break
        item = dataset[index]
        if item is None or str(item["id"]) not in positions:
            continue
        row = probabilities[positions[str(item["id"])]]
        predicted = int(np.argmax(row))
        truth = metrics["classes"][int(item["label"])]
        path = save_png(run.file(f"examples/{len(figures):02d}.png"), np.asarray(item["image"]))
        figures.append((path, f"{item['id']}: truth {truth}, predicted {metrics['classes'][predicted]} (p={fmt(float(row[predicted]))})"))
    if figures:
        page.section(f"Example predictions ({title})" if report is not None else "Example predictions",
                     lead=f"The first {len(figures)} held-out images with the true class, the predicted one and its probability.")
        page.figures(figures)
    if report is None:
        page.write()
    return page
