"""The plugin's ``workbench demo`` step (its settings: ``options`` of ``configs/demo.yaml``)."""

from __future__ import annotations

from typing import Any


def demo_pretrain(context: Any) -> None:
    """Demo step: pretrain briefly on chest phantoms (settings: ``options.contrastive-pretrain`` of the demo config)."""
    from workbench_plugins.contrastive.jobs.pretrain import run_pretrain
    from workbench_plugins.contrastive.settings import PretrainSettings

    options = context.options("contrastive-pretrain")
    data_options = {"seed": context.settings.run.seed, **((options.get("data") or {}).get("options") or {})}
    own = {"run": context.run_values(), "data": {"root": str(context.run.path / "data" / "cxr-pretrain"), "options": data_options}}
    settings = context.step_settings("contrastive-pretrain", PretrainSettings, own)
    outcome = run_pretrain(settings, context.host.datasets.builders, report=context.report, run=context.run, progress=False)
    context.results["contrastive-pretrain"] = outcome
