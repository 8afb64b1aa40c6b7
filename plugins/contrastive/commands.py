"""The plugin's commands: ``workbench pretrain`` and ``workbench eval``; each hands its settings to a job."""

from __future__ import annotations

from pathlib import Path

import click

from workbench.config import config_options, load_settings
from workbench.host import Host, pass_host
from workbench.job_commands import training_command


pretrain_command = training_command(
    "pretrain", "workbench_plugins.contrastive.jobs.pretrain:run_pretrain", "workbench_plugins.contrastive.settings:PretrainSettings",
    "Report-paired contrastive pretraining (CLIP, SigLIP, ConVIRT, FLAIR, COSMOS); torchrun-ready.")


@click.command("eval")
@click.argument("task", type=click.Choice(["retrieval", "zeroshot", "linear-probe", "all"]))
@config_options
@pass_host
def eval_command(host: Host, task: str, config: Path | None, overrides: tuple[str, ...]) -> None:
    """Evaluate a stored encoder: retrieval R@1/5/10, zero-shot AUROC or a linear probe at 1/10/100 % of labels."""
    from workbench_plugins.contrastive.jobs.evaluation import run_evaluation
    from workbench_plugins.contrastive.settings import EvaluateSettings

    settings = load_settings(EvaluateSettings, config, overrides)
    wanted = {"retrieval": {"retrieval"}, "zeroshot": {"zeroshot"}, "linear-probe": {"linear_probe"}, "all": {"retrieval", "zeroshot", "linear_probe"}}[task]
    settings.eval = settings.eval.model_copy(update={name: name in wanted for name in ("retrieval", "zeroshot", "linear_probe")})
    index = run_evaluation(settings, host.datasets.builders)
    click.echo(str(index.resolve()))
