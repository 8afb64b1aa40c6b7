"""The plugin's ``workbench demo`` step (its settings: ``options.grounding`` of ``configs/demo.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.jobs import TrainOutcome

# Where the contrastive demo step leaves the manifest of its pretraining phantoms (the demo's results, step -> value).
PHANTOMS_RESULT = "pretrain-phantoms"


@dataclass
class DemoGroundingOutcome:
    """What the demo's grounding step leaves in ``context.results["grounding"]``.

    Attributes:
        head: the head's training outcome (its own run folder, the stored head).
        metrics: the head's held-out scores as in :meth:`GroundingScores.aggregate` (``metrics["overall"]["pointing"]``,
            ``["box_acc@0.5"]``, ``["miou"]``, ``["cnr"]``, ``["n"]``), with ``zero_shot`` holding the same scores of the
            zero-shot comparison on the same phrases (``None`` when not run).
    """

    head: TrainOutcome
    metrics: dict[str, Any]


def demo_grounding(context: Any) -> None:
    """Demo step: train a grounding head on the demo encoder and score it on held-out phrases (``options.grounding``).

    The head (``GroundTrainJob``) learns from the training phantoms' phrase boxes on the frozen encoder the contrastive
    step stored, and is scored on the phrases of held-out images (the ``eval_split`` the encoder did not train on).
    With ``options.grounding.zero_shot`` the encoder's zero-shot heatmaps are scored on the same phrases as a comparison
    row. Adds a "Phrase grounding" section (scores, per-finding table, the first held-out phrases as pictures) and the
    ``grounding`` entry of the demo's ``metrics.json``; skipped, with a note, when no encoder was stored.
    """
    from workbench.training_job import run_training_job
    from workbench_plugins.grounding.data import iter_samples
    from workbench_plugins.grounding.evaluate import category_table, evaluate_grounder
    from workbench_plugins.grounding.grounders import ZeroShotGrounder
    from workbench_plugins.grounding.jobs.train import GroundTrainJob
    from workbench_plugins.grounding.pages import save_grounded
    from workbench_plugins.grounding.settings import GroundTrainSettings, ZeroShotSettings

    section = context.report.section("Phrase grounding", lead="Where in the image each finding phrase of a report lies: the head's box and heatmap against the true box, on held-out images.")
    stored = getattr(context.results.get("contrastive-pretrain"), "stored", None)
    if not stored:
        section.text("skipped: the contrastive step stored no encoder")
        return
    options = context.options("grounding")
    zero_shot = options.pop("zero_shot", None)
    store = (context.options("contrastive-pretrain").get("save") or {}).get("store")
    manifest = Path(context.results.get(PHANTOMS_RESULT) or context.cxr_manifest)
    own = {"run": context.run_values(context.run.path / "grounding", precision=False), "data": {"root": str(manifest)},
           # the contrastive step's own store (its ``save.store`` option), where it put the encoder; the head goes beside it
           "encoder": {"name": stored, "store": store}}
    settings = context.step_settings("grounding", GroundTrainSettings, own, section=options)
    job = GroundTrainJob(settings, context.host.datasets.builders, progress=False)
    head = run_training_job(job)
    metrics = dict(head.metrics)
    evaluation = job.evaluation
    rows = [{"method": f"grounding head ({job.features.tokens.shape[0]} training images, {len(job.features)} phrases)",
             **_scores(metrics["overall"])}]
    metrics["zero_shot"] = None
    if zero_shot is not None:
        method = ZeroShotSettings(**zero_shot)
        grounder = ZeroShotGrounder(job.encoder, method.method, method.window, method.overlap, settings.boxes.threshold,
                                    settings.boxes.max_boxes, method.fill)
        compared = evaluate_grounder(grounder, iter_samples(job.eval_records, job.skipped), settings.boxes.thresholds,
                                     settings.boxes.miou_threshold, keep=0, progress=False)
        metrics["zero_shot"] = compared.metrics
        rows.append({"method": f"zero-shot {method.method} (no training)", **_scores(compared.metrics["overall"])})
    context.run.write_metrics({"grounding": metrics})

    overall = metrics["overall"]
    section.text(f"A grounding head (phrase-conditioned transformer over patch tokens, regressing one box and a patch heatmap) "
                 f"trained for {settings.train.steps} steps on the frozen encoder {stored}, from the phrase boxes of the "
                 f"{' and '.join(settings.data.train_split)} phantoms, then scored on the {overall['n']} phrases of "
                 f"{metrics['images']} held-out {' and '.join(settings.data.eval_split)} images (neither the encoder nor the head "
                 "saw them). Pointing: the heatmap's peak lies in the true box; box acc@0.5: the predicted box overlaps the true "
                 f"one with IoU >= 0.5; mIoU: the heatmap above {metrics['miou_threshold']:g} of its range against the box."
                 + (" The zero-shot row scores the encoder's own heatmaps on the same phrases, for comparison." if zero_shot else ""))
    section.table(rows)
    section.table(category_table(metrics))
    shown = evaluation.kept[: settings.examples]
    if shown:
        section.text(f"The first {len(shown)} held-out phrases, in manifest order (not chosen by their scores). Green: the true "
                     "box; red: the head's box; colours: its heatmap.")
        pictures = [save_grounded(head.run, "shown", item) for item in shown]
        for start in range(0, len(pictures), 3):
            section.figures(pictures[start:start + 3])
    context.results["grounding"] = DemoGroundingOutcome(head, metrics)


def _scores(overall: dict[str, Any]) -> dict[str, Any]:
    """The comparison table's columns from an ``overall`` summary."""
    return {"phrases": overall.get("n", 0), "pointing": overall.get("pointing", float("nan")),
            "box acc@0.5": overall.get("box_acc@0.5", float("nan")), "mIoU": overall.get("miou", float("nan")),
            "CNR": overall.get("cnr", float("nan"))}
