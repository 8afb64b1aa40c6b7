"""The ``vlm-explain`` demo step: explain the demo encoder's zero-shot decisions on a few held-out chest phantoms."""

from __future__ import annotations

from typing import Any

from workbench.errors import ConfigError


def demo_vlm_explain(context: Any) -> None:
    """Mine a concept bank from the demo's training reports, explain a few test images with the stored encoder.

    Adds a "Why the encoder decided" section to the demo page (summary numbers and a link to the step's own
    ``index.html`` with the concept tables, region overlays and similarity maps); skipped, with a note, when the
    contrastive step stored no encoder or the demo's reports are too few for a bank.
    """
    from workbench_plugins.vlm_explain.jobs import run_build_concepts, run_explain_batch
    from workbench_plugins.vlm_explain.settings import ExplainSettings

    section = context.report.section("Why the encoder decided (concept explanations)")
    stored = getattr(context.results.get("contrastive-pretrain"), "stored", None)
    if not stored:
        section.text("skipped: the contrastive step stored no encoder")
        return
    folder = context.run.path / "vlm-explain"
    try:
        bank, count = run_build_concepts(context.cxr_manifest, folder / "concepts.txt", min_count=2, splits=("train",))
    except ConfigError as error:
        section.text(f"skipped: {error}")
        return
    own = {"run": context.run_values(folder, precision=False),
           "model": {"name": stored, "store": (context.options("contrastive-pretrain").get("save") or {}).get("store")},
           "concepts": {"bank": str(bank)}, "data": {"manifest": str(context.cxr_manifest)}}
    settings = context.step_settings("vlm-explain", ExplainSettings, own)
    outcome = run_explain_batch(settings, progress=False)
    metrics = outcome.metrics
    section.text(f"{len(outcome.rows)} test images explained with {stored} over {count} concepts mined from the demo's "
                 f"training reports. Open {outcome.run.path.relative_to(context.run.path)}/index.html for each decision's "
                 "top concepts, their image regions, the deletion test and the similarity maps.")
    section.table([{key: value for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}])
    context.results["vlm-explain"] = outcome
