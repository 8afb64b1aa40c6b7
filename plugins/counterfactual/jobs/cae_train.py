"""``workbench cae train``: train a class-association embedding (CAE) model in the shared Trainer.

A GAN needs two optimizer steps per batch. The :class:`~workbench.train.Trainer` owns one
optimizer, so both networks share one ``torch.optim.Adam`` with two parameter groups
(generator, discriminator): Adam keeps its moments per parameter, so this is exactly two Adam
optimizers, and the Trainer checkpoints it whole. Inside the step the discriminator is updated
first (only its parameters hold gradients then), then frozen while the generator's loss is built;
the Trainer's own backward and step then move the generator alone. Resume is the Trainer's:
model, optimizer, random states and data position, so a killed run resumes to the same weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from workbench.data.loaders import build_loader
from workbench.data.skipped import SkippedRecords
from workbench.devices import select_precision
from workbench.errors import ConfigError
from workbench.jobs import JobStart, TrainOutcome
from workbench.model_store import open_store
from workbench.model_records import Preprocessing
from workbench.registry import create_model
from workbench.training_job import StoreRequest, TrainingJob, run_training_job
from workbench_plugins.counterfactual.pages.cae import cae_evaluation, write_cae_page
from workbench_plugins.counterfactual.data import ClassBalancedDataset, labelled_dataset, labelled_records, pick_split
from workbench_plugins.counterfactual.losses import CaeLossWeights, discriminator_loss, generator_forward, generator_loss, partner_indices
from workbench_plugins.counterfactual.models import ClassAssociationEmbedding
from workbench_plugins.counterfactual.settings import CaeTrainSettings

logger = logging.getLogger("workbench.counterfactual")

TASK = "counterfactual"


def build_cae_optimizer(model: ClassAssociationEmbedding, settings: CaeTrainSettings) -> torch.optim.Adam:
    """One Adam with a generator group (index 0) and a discriminator group (index 1)."""
    betas = (settings.optim.beta1, settings.optim.beta2)
    groups = [{"params": model.generator_parameters()}, {"params": list(model.discriminator.parameters())}]
    return torch.optim.Adam(groups, lr=settings.optim.lr, betas=betas)


def cae_lr_factor(total_steps: int, decay_steps: int) -> Callable[[int], float]:
    """The rate multiplier of step ``step`` (0-based, optimizer steps): 1, then linear to 0 over the last ``decay_steps``.

    Args:
        total_steps: ``train.steps``.
        decay_steps: ``optim.decay_steps`` (0: constant).

    Returns:
        ``fn(step) -> factor`` in [0, 1].
    """
    start = total_steps - decay_steps

    def factor(step: int) -> float:
        if decay_steps <= 0 or step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / decay_steps)

    return factor


def cae_step_function(optimizer: torch.optim.Optimizer, weights: CaeLossWeights,
                      guide: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[Any, dict[str, Any]], dict[str, torch.Tensor]]:
    """The Trainer step: a discriminator update inside, the generator's loss returned for the Trainer's update.

    Args:
        optimizer: the optimizer from :func:`build_cae_optimizer` (the one given to the Trainer).
        weights: the loss weights.
        guide: the frozen classifier of the ``guidance`` term (see :func:`guide_classifier`), or ``None``.

    Returns:
        ``step(model, batch) -> {"loss": generator loss, ...terms, "disc_loss", ...}``.
    """

    def step(model: ClassAssociationEmbedding, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"].long()
        forward = generator_forward(model, images, labels, partner_indices(labels))
        disc = discriminator_loss(model, images, labels, forward.cross, weights)
        if not torch.isfinite(disc["disc_loss"].detach()):
            raise FloatingPointError(f"the discriminator loss became {disc['disc_loss'].item()}; lower optim.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        disc["disc_loss"].backward()
        optimizer.step()  # only the discriminator holds gradients here
        optimizer.zero_grad(set_to_none=True)
        model.discriminator.requires_grad_(False)
        try:
            generator = generator_loss(model, forward, weights, guide)
        finally:
            model.discriminator.requires_grad_(True)
        return {**generator, **{key: value.detach() for key, value in disc.items()}}

    return step


def guide_classifier(settings: CaeTrainSettings, classes: list[str], device: torch.device) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str | None]:
    """The frozen classifier of ``loss.classifier_guidance`` as ``fn(images (B, C, S, S) in [0, 1]) -> logits (B, K)``, and its ref.

    Decoded images are converted to the classifier's channels and size. Returns ``(None, None)`` when the
    guidance weight is 0.

    Raises:
        ConfigError: a guidance weight without ``guide.classifier``, or a classifier trained on other classes.
    """
    if settings.loss.classifier_guidance <= 0:
        return None, None
    if not settings.guide.classifier:
        raise ConfigError("loss.classifier_guidance > 0 needs guide.classifier: a stored classifier name[:version] on the same classes")
    from workbench_plugins.counterfactual.jobs.classify_evaluate import load_classifier
    from workbench_plugins.counterfactual.explain import fit_to

    classifier, record, classifier_classes = load_classifier(settings.guide.classifier, settings.guide.store or settings.save.store, device)
    if list(classifier_classes) != list(classes):
        raise ConfigError(f"guide.classifier {record.ref} predicts {classifier_classes} but the CAE's data has classes {classes}")
    classifier.requires_grad_(False)
    size = record.preprocessing.image_size
    size = int(size if isinstance(size, int) else size[-1])
    channels = int(record.preprocessing.channels)

    def guide(images: torch.Tensor) -> torch.Tensor:
        return classifier(fit_to(images, channels, size))

    return guide, record.ref


class CaeTrainJob(TrainingJob):
    """``cae train`` in the shared job shape: one process, the job's own two-group Adam, the GAN step, centroids at the end."""

    kind, section, plugin = "cae", "cae", "counterfactual"
    distributed = False  # two optimizer steps per batch are not set up for DDP

    def prepare(self, start: JobStart, skipped: SkippedRecords | None) -> None:
        """Labelled records of the train and held-out splits and the class names.

        Raises:
            ConfigError: grad accumulation asked for, or no training records.
        """
        settings = self.settings
        if settings.train.grad_accum != 1:
            raise ConfigError("train.grad_accum: a CAE step updates the discriminator per micro-batch; use 1")
        records, self.classes = labelled_records(settings.data, self.builders, Path(settings.run.output_root), skipped)
        self.train_records = pick_split(records, settings.data.train_split, settings.data.max_train)
        self.eval_records = pick_split(records, settings.data.eval_split, settings.data.max_eval)
        if not self.train_records:
            raise ConfigError(f"data.train_split {settings.data.train_split}: no records in {settings.data.root or settings.data.source}")

    def build_model(self, start: JobStart) -> torch.nn.Module:
        """The CAE from the registry, and the frozen classifier that guides it (when configured)."""
        settings = self.settings
        self.config = {"in_channels": settings.data.channels, "num_classes": len(self.classes), "image_size": settings.data.image_size,
                       **settings.model.model_dump()}
        model = create_model("cae", **self.config)
        assert isinstance(model, ClassAssociationEmbedding)
        self.guide, self.guide_ref = guide_classifier(settings, self.classes, start.context.device)
        return model

    def precision(self, start: JobStart) -> str:
        """The run's precision, except fp16: the inner discriminator step cannot share the Trainer's loss scaler."""
        precision = select_precision(start.context.device, self.settings.run.precision)
        if precision == "fp16":
            logger.warning("cae train: fp16 needs loss scaling for two optimizer steps per batch; training in fp32")
            return "fp32"
        return precision

    def optimizer(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """One Adam with a generator and a discriminator group, and its decay schedule."""
        self.optimizer_ = build_cae_optimizer(model, self.settings)
        scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer_, cae_lr_factor(self.settings.train.steps, self.settings.optim.decay_steps))
        self.step_function = cae_step_function(self.optimizer_, CaeLossWeights(**self.settings.loss.model_dump()), self.guide)
        return self.optimizer_, scheduler

    def loader(self, start: JobStart) -> Any:
        """Augmented training images (each class equally often when ``class_balanced``)."""
        settings = self.settings
        train_set = labelled_dataset(self.train_records, settings.data, augment=True, skipped=start.skipped, cache_dir=start.run.path / "cache")
        if settings.class_balanced:
            # The labels of the records that passed build_dataset's checks, in the dataset's order.
            train_set = ClassBalancedDataset(train_set, [int(record["label"]) for record in train_set.dataset.data])
        return build_loader(train_set, batch_size=settings.train.batch_size, shuffle=True, seed=settings.run.seed,
                            num_workers=settings.train.num_workers, drop_last=len(train_set) > settings.train.batch_size)

    def step(self, model: torch.nn.Module, batch: Any) -> Any:
        """The discriminator's update inside, then the generator's loss for the loop to step (see :func:`cae_step_function`)."""
        return self.step_function(model, batch)

    def evaluate(self, model: torch.nn.Module, start: JobStart, result: Any) -> dict[str, Any]:
        """Class centroids filled, then k-NN accuracy of the class codes and reconstruction error on the held-out split."""
        settings, skipped = self.settings, start.skipped
        plain_train = labelled_dataset(self.train_records, settings.data, augment=False, skipped=skipped, cache="none")
        self.eval_set = labelled_dataset(self.eval_records, settings.data, augment=False, skipped=skipped, cache="none")
        metrics = cae_evaluation(model, plain_train, self.eval_set, self.classes, start.context.device)
        return dict(metrics, train_images=len(self.train_records), guide_classifier=self.guide_ref)

    def store_request(self, model: torch.nn.Module, metrics: Mapping[str, Any], start: JobStart) -> StoreRequest | None:
        """The CAE with its classes and input range; its record names the guide classifier."""
        settings = self.settings
        if not settings.save.name:
            return None
        preprocessing = Preprocessing(image_size=settings.data.image_size, channels=settings.data.channels, intensity="none",
                                      extra={"input_range": [0.0, 1.0], "read_intensity": settings.data.intensity, "classes": self.classes})
        return StoreRequest(open_store(settings.save.store), model, "cae", TASK, self.config, preprocessing,
                            metrics={key: metrics[key] for key in ("knn_accuracy", "reconstruction_l1") if key in metrics},
                            aliases=("best",) if settings.save.alias_best else (),
                            extra={"classes": self.classes, "run": start.run.path.name, "guide_classifier": self.guide_ref,
                                   "data": {"source": settings.data.source, "finding": settings.data.finding}})

    def write_pages(self, start: JobStart, metrics: Mapping[str, Any], result: Any, outcome: TrainOutcome) -> None:
        """The CAE page: held-out code-space figures, swaps and reconstructions, the training curve."""
        outcome.details["classes"] = self.classes
        write_cae_page(start.run, f"CAE ({' vs '.join(self.classes)})", outcome.model, self.eval_set, self.classes, dict(metrics),
                       result.history, self.settings.examples, start.context.device)


def run_cae_train(settings: CaeTrainSettings, builders: Any, *, resume: Path | None = None,
                  after_optimizer_step: Callable[[int], None] | None = None, progress: bool = True) -> TrainOutcome:
    """Train a CAE model, fill its class centroids, evaluate its code space, store it, write the run folder (:class:`CaeTrainJob`).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        resume: a run folder to continue from its latest checkpoint.
        after_optimizer_step: an extra ``fn(step)`` after each optimizer step (tests kill here).
        progress: show the progress bar.

    Returns:
        The :class:`~workbench.jobs.TrainOutcome` (``model`` the trained CAE, ``details["classes"]`` the class names).

    Raises:
        ConfigError: under torchrun (CAE trains in one process), no training records, or grad accumulation.
    """
    if settings.train.grad_accum != 1:
        raise ConfigError("train.grad_accum: a CAE step updates the discriminator per micro-batch; use 1")
    return run_training_job(CaeTrainJob(settings, builders, progress=progress, after_optimizer_step=after_optimizer_step), resume=resume)
