"""``workbench classify train``: train the classifier that the counterfactual jobs explain.

MONAI networks train in the shared :class:`~workbench.train.Trainer` (resume, progress,
TensorBoard, checkpoints). A head on a stored encoder is fitted with scikit-learn on the frozen
encoder's features (logistic regression, or an MLP), the standard linear-probe recipe, then
written into a torch module so it is stored, loaded and explained like any other classifier.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from workbench.data.loaders import build_loader
from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError
from workbench.jobs import JobStart, TrainOutcome
from workbench.model_store import open_store
from workbench.model_records import Preprocessing, parse_ref
from workbench.registry import create_model
from workbench.training_job import StoreRequest, TrainingJob, run_training_job
from workbench_plugins.counterfactual.classifiers import EncoderHeadClassifier
from workbench_plugins.counterfactual.pages.classify import write_classifier_page
from workbench_plugins.counterfactual.data import labelled_dataset, labelled_records, pick_split
from workbench_plugins.counterfactual.metrics import classification_metrics, predict
from workbench_plugins.counterfactual.settings import ClassifyTrainSettings

logger = logging.getLogger("workbench.counterfactual")

TASK = "classification"


def class_weights(labels: list[int], count: int) -> torch.Tensor:
    """Inverse-frequency weights ``(K,)`` (``N / (K * n_k)``; 1 for a class with no image)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=count).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (count * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def classifier_preprocessing(settings: ClassifyTrainSettings, classes: list[str]) -> Preprocessing:
    """What inputs the stored classifier takes: ``(B, C, S, S)`` in [0, 1], as the plugin's pipeline makes them."""
    return Preprocessing(image_size=settings.data.image_size, channels=settings.data.channels, intensity="none",
                         extra={"input_range": [0.0, 1.0], "read_intensity": settings.data.intensity, "classes": list(classes)})


def recalibrate_batch_norm(model: nn.Module, dataset: Any, device: torch.device, batch_size: int) -> None:
    """Recompute batch-norm running statistics as exact averages over ``dataset`` (no augmentation).

    The running averages a short run leaves (momentum 0.1) trail weights that moved quickly, so
    eval-mode predictions can be far off the training-mode ones; ``torch.optim.swa_utils.update_bn``
    replaces them with one cumulative pass. Models without batch norm are left as they are.
    """
    if not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        return
    images = (batch["image"] for batch in build_loader(dataset, batch_size=batch_size, shuffle=False) if batch is not None)
    torch.optim.swa_utils.update_bn(images, model, device=device)
    model.eval()


def _fit_head(settings: ClassifyTrainSettings, classes: list[str], train_set: Any, device: torch.device) -> tuple[nn.Module, dict[str, Any], str]:
    """Fit a scikit-learn head on a frozen stored encoder; returns (classifier, factory config, encoder ref)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if not settings.model.encoder:
        raise ConfigError("model.encoder: classifier-encoder-head needs a stored encoder name[:version]")
    store = open_store(settings.model.encoder_store or settings.save.store)
    name, version = parse_ref(settings.model.encoder)
    encoder, record = store.load(name, version)
    if not callable(getattr(encoder, "encode_image", None)):
        raise ConfigError(f"model.encoder: {record.ref} ({record.factory}) has no encode_image(images) method")
    size = record.preprocessing.image_size
    size = int(size if isinstance(size, int) else size[-1])
    with torch.no_grad():
        encoder.eval()
        embed_dim = int(encoder.encode_image(torch.zeros(1, record.preprocessing.channels, size, size)).shape[-1])
    config = {"encoder_factory": record.factory, "encoder_config": record.config, "embed_dim": embed_dim, "num_classes": len(classes),
              "head": settings.model.head, "hidden": settings.model.hidden, "in_channels": settings.data.channels,
              "encoder_channels": record.preprocessing.channels, "encoder_image_size": size,
              "encoder_mean": record.preprocessing.mean, "encoder_std": record.preprocessing.std}
    classifier = create_model("classifier-encoder-head", **config)
    assert isinstance(classifier, EncoderHeadClassifier)
    classifier.encoder.load_state_dict(encoder.state_dict())
    classifier = classifier.to(device).eval()
    features, labels = [], []
    with torch.no_grad():
        for batch in build_loader(train_set, batch_size=settings.train.batch_size, shuffle=False):
            if batch is not None:
                features.append(classifier.features(batch["image"].to(device)).float().cpu().numpy())
                labels.append(batch["label"].numpy())
    if not features:
        raise ConfigError("no usable training image for the head (see skipped.csv)")
    x, y = np.concatenate(features), np.concatenate(labels)
    if len(np.unique(y)) < len(classes):
        missing = [name for index, name in enumerate(classes) if index not in set(y.tolist())]
        raise ConfigError(f"the training split has no {', '.join(missing)} image; a head needs every class")
    if settings.model.head == "linear":
        fitted = LogisticRegression(max_iter=2000, class_weight="balanced" if settings.model.balanced else None).fit(x, y)
        weights, bias = [fitted.coef_], [fitted.intercept_]
    else:
        fitted = MLPClassifier(hidden_layer_sizes=(settings.model.hidden,), max_iter=2000, random_state=settings.run.seed).fit(x, y)
        weights, bias = [coef.T for coef in fitted.coefs_], list(fitted.intercepts_)
    layers = [classifier.head] if isinstance(classifier.head, nn.Linear) else [classifier.head[0], classifier.head[2]]
    with torch.no_grad():
        for layer, weight, offset in zip(layers, weights, bias):
            weight, offset = np.asarray(weight), np.asarray(offset)
            if weight.shape[0] == 1 and layer.out_features == 2:
                # scikit-learn keeps one logit for two classes: logits (0, z) give the same softmax as its sigmoid(z).
                weight, offset = np.concatenate([np.zeros_like(weight), weight]), np.concatenate([np.zeros_like(offset), offset])
            layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            layer.bias.copy_(torch.as_tensor(offset, dtype=torch.float32))
    return classifier, config, record.ref


class ClassifyTrainJob(TrainingJob):
    """``classify train`` in the shared job shape: a MONAI network in the loop, or a scikit-learn head on a stored encoder."""

    kind, section, plugin = "classify", "classify", "counterfactual"

    def prepare(self, start: JobStart, skipped: SkippedRecords | None) -> None:
        """Labelled records of the train and held-out splits and the class names.

        Raises:
            ConfigError: no training records.
        """
        settings = self.settings
        records, self.classes = labelled_records(settings.data, self.builders, Path(settings.run.output_root), skipped)
        self.train_records = pick_split(records, settings.data.train_split, settings.data.max_train)
        self.eval_records = pick_split(records, settings.data.eval_split, settings.data.max_eval)
        if not self.train_records:
            raise ConfigError(f"data.train_split {settings.data.train_split}: no records in {settings.data.root or settings.data.source}")

    def trains_in_loop(self) -> bool:
        """A head on a stored encoder is fitted in closed form in :meth:`build_model`; MONAI networks train in the loop."""
        return self.settings.model.network != "classifier-encoder-head"

    def build_model(self, start: JobStart) -> nn.Module:
        """The network from the registry (or the fitted encoder head), and its stored config."""
        settings, network, skipped = self.settings, self.settings.model.network, start.skipped
        if not self.trains_in_loop():
            plain = labelled_dataset(self.train_records, settings.data, augment=False, skipped=skipped, cache="none")
            model, self.config, self.parent = _fit_head(settings, self.classes, plain, start.context.device)
            return model
        self.config = {"in_channels": settings.data.channels, "num_classes": len(self.classes), "dropout": settings.model.dropout}
        if not settings.model.max_pool:
            if network in ("classifier-densenet121", "classifier-small-cnn"):
                raise ConfigError(f"model.max_pool: false is a ResNet option; {network} has no such switch")
            self.config["max_pool"] = False
        if network == "classifier-small-cnn":
            self.config.update(image_size=settings.data.image_size, channels=list(settings.model.channels))
        self.parent = None
        self.weights = (class_weights([record["label"] for record in self.train_records], len(self.classes)).to(start.context.device)
                        if settings.model.balanced else None)
        return create_model(network, **self.config)

    def loader(self, start: JobStart) -> Any:
        """Augmented training images, sharded across ranks under DDP."""
        settings, context = self.settings, start.context
        train_set = labelled_dataset(self.train_records, settings.data, augment=True, skipped=start.skipped, cache_dir=start.run.path / "cache")
        return build_loader(train_set, batch_size=settings.train.batch_size, shuffle=True, seed=settings.run.seed,
                            num_workers=settings.train.num_workers, distributed=context.enabled, rank=context.rank, world_size=context.world_size)

    def step(self, module: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy (class-weighted when ``model.balanced``) and the batch accuracy."""
        logits = module(batch["image"])
        labels = batch["label"].long()
        loss = nn.functional.cross_entropy(logits.float(), labels, weight=self.weights)
        return {"loss": loss, "accuracy": (logits.argmax(dim=1) == labels).float().mean()}

    def evaluate(self, model: nn.Module, start: JobStart, result: Any) -> dict[str, Any]:
        """Batch-norm statistics recomputed on un-augmented training images (loop-trained networks), then held-out metrics."""
        settings, skipped, device = self.settings, start.skipped, start.context.device
        if self.trains_in_loop():
            plain = labelled_dataset(self.train_records, settings.data, augment=False, skipped=skipped, cache="none")
            recalibrate_batch_norm(model, plain, device, settings.train.batch_size)
        self.eval_set = labelled_dataset(self.eval_records, settings.data, augment=False, skipped=skipped, cache="none")
        self.ids, labels, self.probabilities = predict(model, self.eval_set, device)
        return dict(classification_metrics(labels, self.probabilities, self.classes), train_images=len(self.train_records))

    def store_request(self, model: nn.Module, metrics: Mapping[str, Any], start: JobStart) -> StoreRequest | None:
        """The classifier with its classes, Grad-CAM layer and data source in the record."""
        settings = self.settings
        if not settings.save.name:
            return None
        return StoreRequest(open_store(settings.save.store), model, settings.model.network, TASK, self.config,
                            classifier_preprocessing(settings, self.classes),
                            metrics={key: metrics[key] for key in ("accuracy", "auroc", "n")}, parent=self.parent,
                            aliases=("best",) if settings.save.alias_best else (),
                            extra={"classes": self.classes, "gradcam_layer": getattr(model, "gradcam_layer", None), "run": start.run.path.name,
                                   "data": {"source": settings.data.source, "finding": settings.data.finding}})

    def write_pages(self, start: JobStart, metrics: Mapping[str, Any], result: Any, outcome: TrainOutcome) -> None:
        """The classifier page: metrics, confusion, example predictions, the training curve."""
        outcome.details["classes"] = self.classes
        write_classifier_page(start.run, f"Classifier ({self.settings.model.network}, {' vs '.join(self.classes)})", dict(metrics),
                              self.eval_set, self.ids, self.probabilities, self.settings.examples, result.history)


def run_classify_train(settings: ClassifyTrainSettings, builders: Any, *, resume: Path | None = None,
                       after_optimizer_step: Callable[[int], None] | None = None, progress: bool = True) -> TrainOutcome:
    """Train a classifier, evaluate it on the held-out split, store it, and write the run folder (:class:`ClassifyTrainJob`).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog (for the phantoms).
        resume: a run folder to continue from its latest checkpoint.
        after_optimizer_step: an extra ``fn(step)`` after each optimizer step (tests kill here).
        progress: show the progress bar.

    Returns:
        The :class:`~workbench.jobs.TrainOutcome`; ``details["classes"]`` holds the class names in label order.

    Raises:
        ConfigError: no training records, one class only, or a bad encoder reference.
    """
    job = ClassifyTrainJob(settings, builders, progress=progress, after_optimizer_step=after_optimizer_step)
    return run_training_job(job, resume=resume)
