"""The plugin's ``workbench demo`` step (its settings: ``options`` of ``configs/demo.yaml``)."""

from __future__ import annotations

from typing import Any


def demo_pretrain(context: Any) -> None:
    """Demo step: pretrain on chest phantoms (settings: ``options.contrastive-pretrain`` of the demo config).

    Leaves the training outcome in ``context.results["contrastive-pretrain"]`` and, for phantom data, the manifest of
    those phantoms in ``context.results["pretrain-phantoms"]`` (the later steps evaluate on its held-out split).
    """
    from workbench_plugins.contrastive.jobs.pretrain import run_pretrain
    from workbench_plugins.contrastive.settings import PretrainSettings

    options = context.options("contrastive-pretrain")
    data_options = {"seed": context.settings.run.seed, **((options.get("data") or {}).get("options") or {})}
    root = context.run.path / "data" / "cxr-pretrain"
    own = {"run": context.run_values(), "data": {"root": str(root), "options": data_options}}
    settings = context.step_settings("contrastive-pretrain", PretrainSettings, own)
    outcome = run_pretrain(settings, context.host.datasets.builders, report=context.report, run=context.run, progress=False)
    context.results["contrastive-pretrain"] = outcome
    if settings.data.dataset == "phantom-cxr" and (root / "manifest.jsonl").is_file():
        # the grounding and vlm-explain steps score the encoder on this set's held-out split (more images than the demo's own)
        context.results["pretrain-phantoms"] = root / "manifest.jsonl"
