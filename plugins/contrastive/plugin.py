"""The contrastive plugin's hooks: dual-encoder models, report datasets, ``pretrain``/``eval`` commands, a demo step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from workbench import hookimpl
from workbench.host import Host, pass_host
from workbench.config import config_options, load_settings, resumable_config_options

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



@click.command("pretrain")
@resumable_config_options
@pass_host
def pretrain_command(host: Host, config: Path | None, overrides: tuple[str, ...], resume: Path | None) -> None:
    """Report-paired contrastive pretraining (CLIP, SigLIP, ConVIRT, FLAIR, COSMOS); torchrun-ready."""
    from workbench_plugins.contrastive.pretrain import run_pretrain
    from workbench_plugins.contrastive.settings import PretrainSettings

    settings = load_settings(PretrainSettings, config, overrides)
    outcome = run_pretrain(settings, host.datasets.builders, resume=resume)
    click.echo(str((outcome.run.path / "index.html").resolve()))


@click.command("eval")
@click.argument("task", type=click.Choice(["retrieval", "zeroshot", "linear-probe", "all"]))
@config_options
@pass_host
def eval_command(host: Host, task: str, config: Path | None, overrides: tuple[str, ...]) -> None:
    """Evaluate a stored encoder: retrieval R@1/5/10, zero-shot AUROC or a linear probe at 1/10/100 % of labels."""
    from workbench_plugins.contrastive.evaluate_job import run_evaluation
    from workbench_plugins.contrastive.settings import EvaluateSettings

    settings = load_settings(EvaluateSettings, config, overrides)
    wanted = {"retrieval": {"retrieval"}, "zeroshot": {"zeroshot"}, "linear-probe": {"linear_probe"}, "all": {"retrieval", "zeroshot", "linear_probe"}}[task]
    settings.eval = settings.eval.model_copy(update={name: name in wanted for name in ("retrieval", "zeroshot", "linear_probe")})
    index = run_evaluation(settings, host.datasets.builders)
    click.echo(str(index.resolve()))


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench pretrain`` and ``workbench eval``."""
    cli.add_command(pretrain_command)
    cli.add_command(eval_command)


def demo_pretrain(context: Any) -> None:
    """Demo step: pretrain briefly on chest phantoms (settings: ``options.contrastive-pretrain`` of the demo config)."""
    from workbench_plugins.contrastive.pretrain import run_pretrain
    from workbench_plugins.contrastive.settings import PretrainSettings

    options = context.options("contrastive-pretrain")
    data_options = {"seed": context.settings.run.seed, **((options.get("data") or {}).get("options") or {})}
    own = {"run": context.run_values(), "data": {"root": str(context.run.path / "data" / "cxr-pretrain"), "options": data_options}}
    settings = context.step_settings("contrastive-pretrain", PretrainSettings, own)
    outcome = run_pretrain(settings, context.host.datasets.builders, report=context.report, run=context.run, progress=False)
    context.results["contrastive-pretrain"] = outcome


@hookimpl
def workbench_demo_steps(steps: Any) -> None:
    """Add the ``contrastive-pretrain`` demo step."""
    steps.add("contrastive-pretrain", demo_pretrain)
