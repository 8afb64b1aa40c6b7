"""The plugin's ``workbench demo`` step (its settings: ``options`` of ``configs/demo.yaml``)."""

from __future__ import annotations

from typing import Any


def demo_grounding(context: Any) -> None:
    """Demo step: ground the phantoms' phrases with the encoder the contrastive step stored (``options.grounding``)."""
    from workbench_plugins.grounding.jobs.ground import run_ground_evaluate
    from workbench_plugins.grounding.settings import GroundSettings

    stored = getattr(context.results.get("contrastive-pretrain"), "stored", None)
    if not stored:
        context.report.section("Phrase grounding").text("skipped: the contrastive step stored no encoder")
        return
    own = {"run": context.run_values(precision=False), "data": {"root": str(context.cxr_manifest)},
           # the contrastive step's own store (its ``save.store`` option), where it put the encoder
           "encoder": {"name": stored, "store": (context.options("contrastive-pretrain").get("save") or {}).get("store")}}
    settings = context.step_settings("grounding", GroundSettings, own)
    outcome = run_ground_evaluate(settings, context.host.datasets.builders, report=context.report, run=context.run, progress=False)
    context.results["grounding"] = outcome
