"""The counterfactual plugin's hooks: classifiers and CAE models, the class-folders builder, ``classify``, ``cae`` and ``explain`` commands, a demo step."""

from __future__ import annotations

from typing import Any

from workbench import hookimpl
from workbench_plugins.counterfactual.commands import cae_group, classify_group, explain_command

PLUGIN_NAME = "counterfactual"


@hookimpl
def workbench_register_models(registry: Any) -> None:
    """Register the classifiers (``classifier-densenet121``, ``-resnet18``, ``-resnet50``, ``-small-cnn``, ``-encoder-head``) and ``cae``."""
    from workbench_plugins.counterfactual.classifiers import CLASSIFIER_FACTORIES
    from workbench_plugins.counterfactual.models import ClassAssociationEmbedding

    for name, factory in CLASSIFIER_FACTORIES.items():
        registry.register(name, factory, task="classification")
    registry.register("cae", ClassAssociationEmbedding, task="counterfactual",
                      description="class-association embedding: class-code and individual encoders, AdaIN decoder, discriminator")


@hookimpl
def workbench_register_datasets(catalog: Any) -> None:
    """Register the ``class-folders`` builder (``root/<class>/*.png|*.jpg|*.dcm``, seeded splits by patient)."""
    from workbench_plugins.counterfactual.builders import build_class_folders

    catalog.add_builder("class-folders", build_class_folders,
                        description="class folders root/<class>/*.png|*.jpg|*.jpeg|*.dcm, label = folder, seeded splits by patient")


@hookimpl
def workbench_add_commands(cli: Any) -> None:
    """Add ``workbench classify train|evaluate``, ``workbench cae train`` and ``workbench explain``."""
    cli.add_command(classify_group)
    cli.add_command(cae_group)
    cli.add_command(explain_command)


@hookimpl
def workbench_demo_steps(steps: Any) -> None:
    """Add the ``counterfactual`` demo step (classifier, CAE, explained phantom cases)."""
    from workbench_plugins.counterfactual.demo import demo_counterfactual

    steps.add("counterfactual", demo_counterfactual)
