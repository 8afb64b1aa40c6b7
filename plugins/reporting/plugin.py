"""The reporting plugin's hooks: the explainer and editor decoders, the MIMIC-CXR reporting builder, metrics, ``workbench report``, a demo step."""

from __future__ import annotations

from typing import Any

from workbench import hookimpl
from workbench_plugins.reporting.commands import report_group

PLUGIN_NAME = "reporting"


@hookimpl
def workbench_register_models(registry: Any) -> None:
    """Register ``reporting-explainer`` and ``reporting-editor`` (task ``reporting``)."""
    from workbench_plugins.reporting.models import EDITOR_FACTORY, EXPLAINER_FACTORY, TASK, reporting_editor, reporting_explainer

    registry.register(EXPLAINER_FACTORY, reporting_explainer, task=TASK)
    registry.register(EDITOR_FACTORY, reporting_editor, task=TASK)


@hookimpl
def workbench_register_datasets(catalog: Any) -> None:
    """Register ``mimic-cxr-reporting`` (studies with CheXpert labels and, optionally, prior-report drafts)."""
    from workbench_plugins.reporting.builders import build_mimic_cxr_reporting

    catalog.add_builder("mimic-cxr-reporting", build_mimic_cxr_reporting,
                        description="MIMIC-CXR-JPG studies: frontal image, FINDINGS/IMPRESSION, CheXpert labels, optional prior report as draft")


@hookimpl
def workbench_register_metrics(metrics: Any) -> None:
    """Register ``report-bleu4``, ``report-rouge-l`` and ``report-edit-score``."""
    from workbench_plugins.reporting import metrics as report_metrics

    metrics.add("report-bleu4", lambda: report_metrics.bleu4, description="corpus BLEU-4 (sacrebleu) of generated text, in [0, 1]")
    metrics.add("report-rouge-l", lambda: report_metrics.rouge_l, description="mean ROUGE-L F (rouge-score) of generated text")
    metrics.add("report-edit-score", lambda: report_metrics.score_edit, description="an edit against its draft's injected error: fixed, damage")


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench report`` (with ``train``)."""
    cli.add_command(report_group)


@hookimpl
def workbench_demo_steps(steps: Any) -> None:
    """Add the ``reporting`` demo step (answers with explanations and report edits on held-out phantoms), after the encoder's step."""
    from workbench_plugins.reporting.demo import demo_reporting

    steps.add("reporting", demo_reporting, after=("contrastive-pretrain",))
