"""The grounding plugin's hooks: the grounding head, MS-CXR and box-manifest builders, metrics, ``workbench ground``, a demo step."""

from __future__ import annotations

from typing import Any

from workbench import hookimpl
from workbench_plugins.grounding.commands import ground_group
from workbench_plugins.grounding.demo import demo_grounding

PLUGIN_NAME = "grounding"


@hookimpl
def workbench_register_models(registry: Any) -> None:
    """Register ``grounding-head`` (task ``grounding``)."""
    from workbench_plugins.grounding.models import grounding_head

    registry.register("grounding-head", grounding_head, task="grounding")


@hookimpl
def workbench_register_datasets(catalog: Any) -> None:
    """Register the ``ms-cxr``, ``tbx11k`` and ``box-manifest`` builders."""
    from workbench_plugins.grounding.builders import build_box_manifest, build_ms_cxr
    from workbench_plugins.grounding.builders_tbx11k import build_tbx11k

    catalog.add_builder("ms-cxr", build_ms_cxr, description="MS-CXR phrase boxes (release CSV) over MIMIC-CXR-JPG images")
    catalog.add_builder("tbx11k", build_tbx11k,
                        description="TBX11K YOLO layout (classes.txt, images/<split>/, labels/<split>/): TB boxes with class + place phrases")
    catalog.add_builder("box-manifest", build_box_manifest, description="a CSV/JSONL manifest with image and boxes (phrase, x, y, w, h)")


@hookimpl
def workbench_register_metrics(metrics: Any) -> None:
    """Register ``grounding-cnr``, ``pointing-game``, ``mask-iou`` and ``grounding-scores``."""
    from workbench_plugins.grounding import metrics as grounding_metrics

    metrics.add("grounding-cnr", lambda: grounding_metrics.contrast_to_noise, description="MS-CXR contrast-to-noise ratio of a heatmap for a box")
    metrics.add("pointing-game", lambda: grounding_metrics.pointing_hit, description="the heatmap's peak lies in the box")
    metrics.add("mask-iou", lambda: grounding_metrics.mask_iou, description="IoU of two masks")
    metrics.add("grounding-scores", grounding_metrics.GroundingScores, description="CNR, pointing, mIoU sweep, box acc@0.5 per category")


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench ground`` (with ``evaluate`` and ``train``)."""
    cli.add_command(ground_group)


@hookimpl
def workbench_demo_steps(steps: Any) -> None:
    """Add the ``grounding`` demo step (after ``contrastive-pretrain``)."""
    steps.add("grounding", demo_grounding, after=("contrastive-pretrain",))
