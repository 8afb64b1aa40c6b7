"""``workbench pretrain``: report-paired contrastive pretraining as one job.

Records come from a registered builder (the chest phantoms by default), pairs
go through the cached MONAI pipeline (``data.pair_dataset``), the encoder and
objective train in the shared :class:`~workbench.train.Trainer` (resume, DDP,
progress, TensorBoard), then rank 0 evaluates on the held-out split, stores
the encoder with its preprocessing in the model registry and writes the run
folder's ``metrics.json`` and ``index.html``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from workbench.data.skipped import SkippedRecords
from workbench.errors import ConfigError, DataError
from workbench.jobs import JobStart, TrainOutcome, train_and_held_out
from workbench.model_store import open_store
from workbench.registry import create_model
from workbench.report import HtmlReport, RunFolder, fmt
from workbench.training_job import StoreRequest, TrainingJob, run_training_job
from workbench_plugins.contrastive.batches import PairBatchPreparer, build_pair_loader
from workbench_plugins.contrastive.data import pair_dataset
from workbench_plugins.contrastive.evaluate import encode_pairs, evaluate_encoder, write_evaluation_pages
from workbench_plugins.contrastive.losses import EncoderWithObjective, build_objective, objective_class, sigmoid_logit_init
from workbench_plugins.contrastive.models import ReportImageDualEncoder, dual_encoder_preprocessing
from workbench_plugins.contrastive.settings import PairDataSettings, PretrainSettings
from workbench_plugins.contrastive.text import TruncationCounter, usable_report

logger = logging.getLogger("workbench.contrastive")


class PretrainModule(EncoderWithObjective):
    """The encoder, its objective and the batch preparer as one module (what DDP wraps and checkpoints hold).

    Args:
        encoder: the dual encoder being trained.
        objective: the loss module (may own trainable parts and an EMA teacher).
        preparer: turns a collated batch into the objective's inputs (no state).
    """

    def __init__(self, encoder: ReportImageDualEncoder, objective: nn.Module, preparer: PairBatchPreparer):
        super().__init__(encoder, objective)
        self.preparer = preparer

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The objective's outputs (``loss`` and its named parts) for one collated batch."""
        return self.objective(self.encoder, self.preparer(batch, self.encoder))


def load_pair_records(data: PairDataSettings, builders: Any, output_root: Path, skipped: SkippedRecords | None = None) -> tuple[list[dict], list[dict]]:
    """Build the dataset's records and split them into (train, held-out).

    Args:
        data: the data settings.
        builders: the host's builder catalog (``host.datasets.builders``).
        output_root: where a default ``root`` goes (``<output_root>/data/<dataset>``).
        skipped: where builders that take one list the rows they drop.

    Returns:
        ``(train records, evaluation records)``, each capped by ``max_train`` / ``max_eval``.

    Raises:
        ConfigError: an unknown builder, or a split with no records.
    """
    train, held_out = train_and_held_out(data, builders, output_root, skipped)
    if not train:
        raise ConfigError(f"data.train_split {data.train_split}: no records of {data.dataset} at {data.root or output_root} have these splits")
    return train, held_out


def count_truncated(encoder: ReportImageDualEncoder, records: Sequence[dict]) -> tuple[int, int]:
    """``(truncated, total)``: usable reports longer than the text tower's context."""
    counter = TruncationCounter(encoder.tokenizer, encoder.context_length)
    texts = []
    for record in records:
        try:
            texts.append(usable_report(str(record.get("report") or "")))
        except DataError:
            continue
    for start in range(0, len(texts), 256):
        counter.update(texts[start:start + 256])
    return counter.truncated, counter.total


def build_encoder(settings: PretrainSettings, world_size: int = 1) -> ReportImageDualEncoder:
    """The dual encoder the settings ask for.

    Sigmoid objectives get a logit bias, and their scale and bias start where
    :func:`~workbench_plugins.contrastive.losses.sigmoid_logit_init` puts them for the global
    batch (``train.batch_size * world_size``) unless ``model.options`` sets
    ``init_logit_scale`` / ``init_logit_bias`` (e.g. the SigLIP paper's ``2.302585`` / ``-10``).
    """
    options = dict(settings.model.options)
    if objective_class(settings.objective.name).NEEDS_LOGIT_BIAS:
        for key, value in sigmoid_logit_init(settings.train.batch_size * world_size).items():
            options.setdefault(key, value)
    encoder = create_model(settings.model.preset, **options)
    if not isinstance(encoder, ReportImageDualEncoder):
        raise ConfigError(f"model.preset {settings.model.preset!r} is not a dual encoder (got {type(encoder).__name__})")
    if settings.model.text_unlocked_layers is not None:
        encoder.lock_text_tower(settings.model.text_unlocked_layers)
        if settings.model.text_unlocked_layers == 0 and encoder.text_tower_name == "minilm":
            encoder.enable_frozen_text_cache()
    if settings.model.channels_last:
        encoder.clip.visual.to(memory_format=torch.channels_last)
    return encoder


class PretrainJob(TrainingJob):
    """``pretrain`` in the shared job shape: the encoder and its objective train as one module; the encoder is evaluated and stored."""

    kind, section, plugin = "pretrain", "pretrain", "contrastive"

    def __init__(self, settings: PretrainSettings, builders: Any, *, report: HtmlReport | None = None, progress: bool = True,
                 after_optimizer_step: Callable[[int], None] | None = None) -> None:
        super().__init__(settings, builders, progress=progress, after_optimizer_step=after_optimizer_step)
        self.report = report
        self.find_unused_parameters = objective_needs_unused(settings.objective.name)

    def prepare(self, start: JobStart, skipped: SkippedRecords | None) -> None:
        """Training and held-out pair records."""
        self.train_records, self.eval_records = load_pair_records(self.settings.data, self.builders, Path(self.settings.run.output_root), skipped)

    def build_model(self, start: JobStart) -> nn.Module:
        """The encoder, its cached training pairs, its objective and the batch preparer as one :class:`PretrainModule`."""
        settings, device = self.settings, start.context.device
        self.encoder = build_encoder(settings, start.context.world_size).to(device)
        self.preprocessing = dual_encoder_preprocessing(self.encoder)
        self.truncated, self.reports = count_truncated(self.encoder, self.train_records)
        logger.info("%d of %d training reports truncated to %d tokens", self.truncated, self.reports, self.encoder.context_length)
        self.train_set = pair_dataset(self.train_records, self.preprocessing, augment=True, cache=settings.data.cache, skipped=start.skipped,
                                      cache_dir=start.run.path / "cache")
        objective = build_objective(settings.objective.name, self.encoder, **settings.objective.options).to(device)
        preparer = PairBatchPreparer(objective, max_sentences=settings.objective.max_sentences, local_crops=settings.objective.local_crops)
        self.module = PretrainModule(self.encoder, objective, preparer)
        if settings.model.compile:
            self.encoder.clip.visual = torch.compile(self.encoder.clip.visual)
        return self.module

    def loader(self, start: JobStart) -> Any:
        """Batches of (image, report) pairs, sharded across ranks under DDP."""
        return build_pair_loader(self.train_set, self.settings.train, self.settings.run.seed, start.context)

    def step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The objective's loss and parts for one batch (the module prepares the batch itself)."""
        return model(batch)

    def after_optimizer_step(self, step: int) -> None:
        """The objective's own per-step work (EMA teacher, logit-scale clamp), then the caller's."""
        self.module.after_optimizer_step(step)
        super().after_optimizer_step(step)

    def evaluate(self, model: nn.Module, start: JobStart, result: Any) -> dict[str, Any]:
        """Retrieval, zero-shot and linear-probe figures of the encoder on the held-out pairs."""
        settings, device, skipped = self.settings, start.context.device, start.skipped
        encoder = model.encoder
        eval_set = pair_dataset(self.eval_records, self.preprocessing, augment=False, cache="none", skipped=skipped)
        plain_train = (pair_dataset(train_set_records(self.train_set), self.preprocessing, augment=False, cache="none", skipped=skipped)
                       if settings.eval.linear_probe else None)
        self.held_out = encode_pairs(encoder, eval_set, device, settings.eval.batch_size, keep_images=settings.eval.examples)
        train_pairs = encode_pairs(encoder, plain_train, device, settings.eval.batch_size, keep_images=0) if plain_train is not None else None
        metrics = evaluate_encoder(encoder, self.held_out, train_pairs, settings.eval, device, settings.data.findings, settings.run.seed)
        return dict(metrics, truncated_reports=self.truncated, reports=self.reports, objective=settings.objective.name)

    def store_request(self, model: nn.Module, metrics: Mapping[str, Any], start: JobStart) -> StoreRequest | None:
        """The encoder alone (not its objective), with the preprocessing it was trained with."""
        settings = self.settings
        if not settings.save.name:
            return None
        return StoreRequest(open_store(settings.save.store), model.encoder, settings.model.preset, "contrastive", _factory_config(settings),
                            self.preprocessing, metrics=_flat_metrics(dict(metrics)), aliases=("best",) if settings.save.alias_best else (),
                            extra={"run": start.run.path.name, "objective": settings.objective.name})

    def write_pages(self, start: JobStart, metrics: Mapping[str, Any], result: Any, outcome: TrainOutcome) -> None:
        """The pretraining section (or the run's own page): figures, retrieval pictures, the training curve."""
        settings, run = self.settings, start.run
        page = self.report or HtmlReport(f"Pretraining ({settings.objective.name}, {settings.model.preset})", run.path)
        page.section("Pretraining", lead=f"How the {settings.model.preset} image-text encoder learned to pair each radiograph with "
                     f"its report ({settings.objective.name} objective): the training run and its loss curve.")
        page.text(f"{fmt(result.step)} optimizer steps of {settings.objective.name} on {fmt(len(self.train_set))} training pairs; "
                  f"{fmt(metrics['skipped_records'])} records skipped (see skipped.csv); {fmt(self.truncated)} of {fmt(self.reports)} reports "
                  f"truncated to {fmt(self.encoder.context_length)} tokens." + (f" Stored as {outcome.stored}." if outcome.stored else ""))
        if result.history:
            last = result.history[-1]
            page.history([dict(row) for row in result.history], name="pretraining-curves",
                         caption=f"Each logged training scalar per step, learning rate last (final loss {fmt(last.get('loss'))} "
                                 f"at step {fmt(last.get('step'))}).")
        write_evaluation_pages(page, run, dict(metrics), self.held_out, self.preprocessing.mean, self.preprocessing.std, settings.eval.examples)
        if self.report is None:
            page.section("Config", lead="The resolved settings this run used (config.yaml), to repeat it exactly.").preformatted((run.path / "config.yaml").read_text(encoding="utf-8") if (run.path / "config.yaml").exists() else "")
            page.write()


def run_pretrain(
    settings: PretrainSettings,
    builders: Any,
    *,
    resume: Path | None = None,
    after_optimizer_step: Callable[[int], None] | None = None,
    report: HtmlReport | None = None,
    run: RunFolder | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Run the pretraining job (:class:`PretrainJob`).

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        resume: a run folder to continue from its latest checkpoint.
        after_optimizer_step: an extra ``fn(step)`` after each optimizer step.
        report: add sections to this page instead of writing the run's own ``index.html`` (the demo).
        run: use this run folder (the demo's) instead of making one.
        progress: show the progress bar.

    Returns:
        The :class:`~workbench.jobs.TrainOutcome` (``metrics`` on rank 0 only).
    """
    job = PretrainJob(settings, builders, report=report, progress=progress, after_optimizer_step=after_optimizer_step)
    return run_training_job(job, resume=resume, run=run)


def objective_needs_unused(name: str) -> bool:
    """True for objectives whose step leaves some parameters without gradient (DDP must be told)."""
    return name in ("convirt", "cosmos")


def train_set_records(dataset: Any) -> list[dict]:
    """The records behind a :class:`SafeDataset` (MONAI datasets keep them in ``.data``)."""
    return list(getattr(dataset.dataset, "data", []))


def _factory_config(settings: PretrainSettings) -> dict[str, Any]:
    """Constructor arguments that rebuild the stored encoder (no pretrained paths: the weights are stored)."""
    options = {key: value for key, value in settings.model.options.items() if key not in ("pretrained_image",)}
    options["pretrained_text"] = None
    if objective_class(settings.objective.name).NEEDS_LOGIT_BIAS:
        options.setdefault("init_logit_bias", -10.0)  # creates the parameter; its trained value is stored with the weights
    return options


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers kept with the stored version."""
    flat: dict[str, Any] = {}
    for key, value in (metrics.get("retrieval") or {}).items():
        flat[f"retrieval.{key}"] = value
    if metrics.get("zeroshot"):
        flat["zeroshot.mean_auroc"] = metrics["zeroshot"].get("mean")
    return flat
