"""The plugin's ``workbench demo`` step (its settings: ``options`` of ``configs/demo.yaml``)."""

from __future__ import annotations

from typing import Any


def demo_vessels(context: Any) -> None:
    """Demo step: train briefly on fundus phantoms and show predictions with their connectivity report (``options.vessels``)."""
    from workbench.report import RunFolder
    from workbench_plugins.vessels.jobs import run_train
    from workbench_plugins.vessels.settings import VesselTrainSettings

    phantoms = {"n": max(6, context.settings.data.fundus_images), "size": context.settings.data.fundus_size, "seed": context.settings.run.seed}
    own = {"run": context.run_values(), "data": {"root": str(context.run.path / "data" / "fundus-vessels"), "options": phantoms}}
    settings = context.step_settings("vessels", VesselTrainSettings, own)
    run = RunFolder(context.run.path / "vessels")  # its own checkpoints/ and figures/ inside the demo's folder
    outcome = run_train(settings, context.host.datasets.builders, report=context.report, run=run, progress=False)
    context.results["vessels"] = outcome
    context.record("vessels", {key: value for key, value in outcome.metrics.items()
                               if isinstance(value, (int, float)) and not isinstance(value, bool)})
