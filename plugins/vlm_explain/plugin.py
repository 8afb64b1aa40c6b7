"""The vlm_explain plugin's hooks: ``workbench explain-vlm`` (one image, a manifest, ``concepts``, ``evaluate``) and its metrics."""

from __future__ import annotations

from typing import Any

from workbench import hookimpl
from workbench_plugins.vlm_explain.commands import explain_vlm_group

PLUGIN_NAME = "vlm_explain"


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench explain-vlm`` (with ``concepts`` and ``evaluate``)."""
    cli.add_command(explain_vlm_group)


@hookimpl
def workbench_register_metrics(metrics: Any) -> None:
    """Register ``concept-mutual-knowledge``, ``concept-deletion-auc`` and ``similarity-energy-in-box``."""
    from workbench_plugins.vlm_explain.decomposition import curve_auc, mutual_knowledge
    from workbench_plugins.vlm_explain.similarity_maps import energy_in_box

    metrics.add("concept-mutual-knowledge", lambda: mutual_knowledge,
                description="agreement of image-side and text-side concept rankings (top-k overlap, weighted Kendall tau)")
    metrics.add("concept-deletion-auc", lambda: curve_auc, description="normalised area under a concept deletion curve")
    metrics.add("similarity-energy-in-box", lambda: energy_in_box, description="share of a similarity map's positive mass inside a box")


@hookimpl
def workbench_demo_steps(steps: Any) -> None:
    """Add the ``vlm-explain`` demo step (after ``contrastive-pretrain``)."""
    from workbench_plugins.vlm_explain.demo import demo_vlm_explain

    steps.add("vlm-explain", demo_vlm_explain, after=("contrastive-pretrain",))
