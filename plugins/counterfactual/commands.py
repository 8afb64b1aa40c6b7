"""The plugin's commands: ``workbench classify``, ``workbench cae`` and ``workbench explain``; each hands its settings to a job."""

from __future__ import annotations

from pathlib import Path

import click

from workbench.config import config_options, load_settings
from workbench.host import Host, pass_host
from workbench.job_commands import training_command


@click.group("classify")
def classify_group() -> None:
    """Train and evaluate the classifiers that counterfactual explanations explain."""


classify_train_command = training_command(
    "train", "workbench_plugins.counterfactual.jobs.classify:run_classify_train", "workbench_plugins.counterfactual.settings:ClassifyTrainSettings",
    "Train a MONAI DenseNet121/ResNet classifier or a head on a stored encoder; store it in the registry.")
classify_group.add_command(classify_train_command)


@classify_group.command("evaluate")
@config_options
@pass_host
def classify_evaluate_command(host: Host, config: Path | None, overrides: tuple[str, ...]) -> None:
    """Evaluate a stored classifier: AUROC, accuracy, confusion matrix."""
    from workbench_plugins.counterfactual.jobs.classify_evaluate import run_classify_evaluate
    from workbench_plugins.counterfactual.settings import ClassifyEvaluateSettings

    settings = load_settings(ClassifyEvaluateSettings, config, overrides)
    run, _ = run_classify_evaluate(settings, host.datasets.builders)
    click.echo(str((run.path / "index.html").resolve()))


@click.group("cae")
def cae_group() -> None:
    """Class-association embedding (CAE) models for counterfactual explanations."""


cae_train_command = training_command(
    "train", "workbench_plugins.counterfactual.jobs.cae_train:run_cae_train", "workbench_plugins.counterfactual.settings:CaeTrainSettings",
    "Train a CAE model (class-code encoder, individual encoder, AdaIN decoder, discriminator); store it.")
cae_group.add_command(cae_train_command)


@click.command("explain")
@config_options
@click.option("--classifier", default=None, help="stored classifier name[:version] to explain")
@click.option("--cae", default=None, help="stored CAE name[:version] trained on the classifier's classes")
@click.option("--image", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="one image to explain (DICOM, PNG, JPEG, NIfTI...); without it, the config's data (batch form)")
@click.option("--target", default=None, help="target class name or index (required for more than two classes)")
@click.option("--frame", type=click.IntRange(min=0), default=None, help="frame of a multi-frame DICOM --image (0-based)")
@click.option("--evaluate", is_flag=True, help="compute flip rate, proximity, sparsity, localisation, queries and seconds")
@pass_host
def explain_command(host: Host, config: Path | None, overrides: tuple[str, ...], classifier: str | None, cae: str | None, image: Path | None,
                    target: str | None, frame: int | None, evaluate: bool) -> None:
    """Counterfactual explanations (CAE linear path, stop at first flip) next to Grad-CAM; per-case index.html."""
    from workbench_plugins.counterfactual.jobs.explain import run_explain
    from workbench_plugins.counterfactual.settings import ExplainSettings

    flags = {"classifier": classifier, "cae": cae, "image": image, "target": target, "frame": frame, "evaluate": True if evaluate else None}
    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    settings = load_settings(ExplainSettings, config, [*overrides, *extra])
    run, _ = run_explain(settings, host.datasets.builders)
    click.echo(str((run.path / "index.html").resolve()))
