"""Ground every phrase of a set of samples and score it (CNR, pointing, mIoU sweep, box accuracy), per category."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from rich.console import Console
from rich.progress import track

from workbench_plugins.grounding.data import GroundingSample, negated_phrase
from workbench_plugins.grounding.metrics import DEFAULT_THRESHOLDS, GroundingScores


@dataclass
class GroundedPhrase:
    """One grounded phrase kept for pages: the sample, which box, the heatmap and the predicted boxes."""

    sample: GroundingSample
    index: int
    heatmap: np.ndarray
    predicted: list[dict[str, Any]]
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationOutcome:
    """Scores of a grounder on samples.

    Attributes:
        metrics: :meth:`GroundingScores.aggregate` plus ``images`` and ``phrases`` counts.
        scores: the per-phrase rows.
        kept: grounded phrases kept for pages (all of them up to ``keep``; the worst are chosen later).
    """

    metrics: dict[str, Any]
    scores: GroundingScores
    kept: list[GroundedPhrase]


def evaluate_grounder(grounder: Any, samples: Iterable[GroundingSample], thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                      miou_threshold: float | None = None, keep: int = 200, progress: bool = True, total: int | None = None,
                      negations: bool = False) -> EvaluationOutcome:
    """Ground each sample's phrases and score them against the true boxes (mIoU against the box mask, as in MS-CXR).

    Args:
        grounder: a :class:`~workbench_plugins.grounding.grounders.ZeroShotGrounder` or ``HeadGrounder``.
        samples: the samples (e.g. :func:`~workbench_plugins.grounding.data.iter_samples`).
        thresholds: the mIoU sweep.
        miou_threshold: the sweep threshold reported as ``miou`` (``None``: the best).
        keep: grounded phrases kept in memory for pages (the first ``keep``).
        progress: show a progress bar (stderr).
        total: the number of samples, for the bar.
        negations: also ground each phrase's negation ("no pleural effusion") and record in each row
            ``negation_lower`` (1 when the negation's heatmap peak is below the phrase's); its mean is
            reported as ``negation_lower_rate``.

    Returns:
        An :class:`EvaluationOutcome`.
    """
    scores = GroundingScores(thresholds)
    kept: list[GroundedPhrase] = []
    images = 0
    iterator = track(samples, total=total, description="grounding", console=Console(stderr=True), transient=True) if progress else samples
    for sample in iterator:
        images += 1
        phrases = [box["phrase"] for box in sample.boxes]
        negated = [negated_phrase(box["category"]) for box in sample.boxes] if negations else []
        result = grounder.ground(sample.image, phrases + negated)
        for index, box in enumerate(sample.boxes):
            row = scores(result.heatmaps[index], box, category=box["category"], record_id=sample.id, phrase=box["phrase"],
                         predicted_boxes=result.boxes[index])
            if negations:
                row["negation_lower"] = float(result.heatmaps[len(phrases) + index].max() < result.heatmaps[index].max())
            if len(kept) < keep:
                kept.append(GroundedPhrase(sample, index, result.heatmaps[index], result.boxes[index], row))
    metrics = scores.aggregate(miou_threshold)
    if negations and scores.rows:
        metrics["negation_lower_rate"] = float(np.mean([row["negation_lower"] for row in scores.rows]))
    metrics.update(images=images, phrases=len(scores.rows), method=getattr(grounder, "label", type(grounder).__name__))
    return EvaluationOutcome(metrics, scores, kept)


def worst_kept(outcome: EvaluationOutcome, count: int, key: str = "cnr") -> list[GroundedPhrase]:
    """The ``count`` kept phrases with the lowest ``key`` (non-finite last), worst first."""
    def order(item: GroundedPhrase) -> float:
        value = float(item.row.get(key, np.nan))
        return value if np.isfinite(value) else np.inf
    return sorted(outcome.kept, key=order)[:count]


def category_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the per-category table: category, n, CNR, pointing, mIoU, box IoU and box acc@0.5, overall last."""
    rows = []
    summaries = list(metrics.get("per_category", {}).items()) + [("overall", metrics.get("overall", {}))]
    for name, summary in summaries:
        rows.append({"category": name, "n": summary.get("n", 0), "CNR": summary.get("cnr", float("nan")),
                     "pointing": summary.get("pointing", float("nan")), "mIoU": summary.get("miou", float("nan")),
                     "box IoU": summary.get("box_iou", float("nan")), "box acc@0.5": summary.get("box_acc@0.5", float("nan"))})
    return rows


def sweep_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per threshold of the sweep: threshold and mean IoU overall."""
    overall = metrics.get("overall", {})
    return [{"threshold": float(t), "mean IoU": overall.get(f"iou@{float(t):g}", float("nan"))} for t in metrics.get("thresholds", [])]
