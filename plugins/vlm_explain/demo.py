"""The ``vlm-explain`` demo step: explain the demo encoder's zero-shot decisions on held-out chest phantoms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.errors import ConfigError

# Where the contrastive demo step leaves the manifest of its pretraining phantoms (the demo's results, step -> value).
PHANTOMS_RESULT = "pretrain-phantoms"


def demo_vlm_explain(context: Any) -> None:
    """Mine a concept bank from training reports, explain the held-out images' decisions with the stored encoder.

    The images are the held-out split (``data.splits``) of the contrastive step's pretraining phantoms (the demo's own
    chest phantoms when that step left none); the bank is mined from the same set's training reports
    (``options.vlm-explain.mining``). Adds a "Why the encoder decided" section: the decision accuracy over every
    explained image with findings, the explanation scores, and the full explanation of the first images decided
    correctly (``examples_from: correct``; the page says they were chosen so). Leaves the
    :class:`~workbench_plugins.vlm_explain.jobs.BatchOutcome` in ``context.results["vlm-explain"]``
    (``.metrics["decision_accuracy"]``). Skipped, with a note, when no encoder was stored or the reports are too few.
    """
    from workbench_plugins.vlm_explain.jobs import run_build_concepts, run_explain_batch
    from workbench_plugins.vlm_explain.pages import write_image_section
    from workbench_plugins.vlm_explain.settings import ExplainSettings

    section = context.report.section("Why the encoder decided (concept explanations)", lead="Which concepts and image regions drive the encoder's zero-shot decisions on held-out images, and whether deleting them changes the decision.")
    stored = getattr(context.results.get("contrastive-pretrain"), "stored", None)
    if not stored:
        section.text("skipped: the contrastive step stored no encoder")
        return
    options = context.options("vlm-explain")
    mining = dict(options.pop("mining", None) or {})
    manifest = Path(context.results.get(PHANTOMS_RESULT) or context.cxr_manifest)
    folder = context.run.path / "vlm-explain"
    try:
        bank, count = run_build_concepts(manifest, folder / "concepts.txt", min_count=int(mining.get("min_count", 2)),
                                         splits=tuple(mining.get("splits", ["train"])))
    except ConfigError as error:
        section.text(f"skipped: {error}")
        return
    own = {"run": context.run_values(folder, precision=False),
           "model": {"name": stored, "store": (context.options("contrastive-pretrain").get("save") or {}).get("store")},
           "concepts": {"bank": str(bank)}, "data": {"manifest": str(manifest)}}
    settings = context.step_settings("vlm-explain", ExplainSettings, own, section=options)
    outcome = run_explain_batch(settings, progress=False)
    metrics = outcome.metrics
    accuracy = metrics["decision_accuracy"]
    section.text(
        f"The zero-shot decision of {stored} among {', '.join(settings.classes)} (report-style prompts), on {metrics['images']} "
        f"held-out images ({', '.join(settings.data.splits)} split of {manifest.parent.name}); a decision is correct when the "
        f"chosen class is one of the image's findings. Decision accuracy over all {metrics['images_with_findings']} explained "
        f"images with findings: {'n/a' if accuracy is None else f'{accuracy:.2f}'} ({metrics['correct_decisions']} correct). "
        f"Each decision is explained by {count} concepts mined from the training reports: their share of the chosen class's "
        "margin, the agreement of the image-side and text-side rankings (mutual knowledge) and the deletion test (the "
        f"decision's probability as the top concepts are projected out, against random ones). Full pages: "
        f"{outcome.run.path.relative_to(context.run.path)}/index.html.")
    section.table([{key: value for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}])
    if outcome.examples:
        chosen = "decided correctly (chosen from the correct ones)" if settings.examples_from == "correct" else "explained"
        section.text(f"Below: the first {len(outcome.examples)} held-out images {chosen}, each with its decision, top concepts, "
                     "their image regions and the deletion chart; the accuracy above is over all of them.")
        for item in outcome.examples:
            write_image_section(context.report, outcome.run, f"Explained: {item.record.get('id')} (findings: "
                                f"{', '.join(item.record.get('findings') or []) or 'none'})", item.image, item.explanation,
                                item.record.get("boxes") or [], settings.concepts.top_k)
    context.results["vlm-explain"] = outcome
    context.record("vlm-explain", {key: metrics[key] for key in ("decision_accuracy", "images_with_findings", "correct_decisions")
                                   if key in metrics})
