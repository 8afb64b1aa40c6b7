"""The contrastive plugin's hooks: dual-encoder models, report datasets, ``pretrain``/``eval`` commands, a demo step."""

from __future__ import annotations

from typing import Any

from workbench import hookimpl
from workbench_plugins.contrastive.commands import eval_command, pretrain_command
from workbench_plugins.contrastive.demo import demo_pretrain

PLUGIN_NAME = "contrastive"


@hookimpl
def workbench_register_models(registry: Any) -> None:
    """Register the dual-encoder presets (``dual-vit-tiny-minilm``, ``dual-vit-s-32-minilm``, ...)."""
    from workbench_plugins.contrastive.models import PRESETS

    for preset in PRESETS:
        text = "MiniLM-L6 text tower" if preset.text_tower == "minilm" else "open_clip text tower"
        registry.register(preset.name, preset.build, task="contrastive", description=f"{preset.image_tower} image tower + {text}")


@hookimpl
def workbench_register_datasets(catalog: Any) -> None:
    """Register the MIMIC-CXR-JPG, IU X-ray, COVID-19 chest X-ray and generic report-manifest builders."""
    from workbench_plugins.contrastive.builders import build_iu_xray, build_mimic_cxr_jpg, build_report_manifest
    from workbench_plugins.contrastive.builders_covid import build_covid_chestxray

    catalog.add_builder("mimic-cxr-jpg", build_mimic_cxr_jpg, description="MIMIC-CXR-JPG files/ tree with metadata, split, CheXpert labels and report texts")
    catalog.add_builder("iu-xray", build_iu_xray, description="IU X-ray (Indiana) reports and projections CSVs with the PNG folder")
    catalog.add_builder("covid-chestxray", build_covid_chestxray,
                        description="COVID-19 chest X-ray collection: metadata.csv + images/, clinical notes as text, split by patient")
    catalog.add_builder("report-manifest", build_report_manifest, description="a CSV/JSONL manifest with image and report columns")


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench pretrain`` and ``workbench eval``."""
    cli.add_command(pretrain_command)
    cli.add_command(eval_command)


@hookimpl
def workbench_demo_steps(steps: Any) -> None:
    """Add the ``contrastive-pretrain`` demo step."""
    steps.add("contrastive-pretrain", demo_pretrain)
