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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from workbench.checkpoints import seed_everything
from workbench.data.skipped import SkippedRecords
from workbench.distributed import DistributedContext, barrier, unwrap, wrap_ddp
from workbench.errors import ConfigError, DataError
from workbench.jobs import build_records, load_on_main_first, split_records, start_job
from workbench.model_store import open_store
from workbench.registry import create_model
from workbench.report import HtmlReport, RunFolder
from workbench.train import Trainer
from workbench_plugins.contrastive.batches import PairBatchPreparer, build_pair_loader
from workbench_plugins.contrastive.data import pair_dataset
from workbench_plugins.contrastive.evaluate import encode_pairs, evaluate_encoder, write_evaluation_pages
from workbench_plugins.contrastive.losses import EncoderWithObjective, build_objective, objective_class
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


@dataclass
class PretrainOutcome:
    """What a pretraining run produced.

    Attributes:
        run: the run folder.
        metrics: evaluation metrics (rank 0; empty on other ranks).
        stored: ``name:vN`` of the stored encoder, or ``None``.
        steps: optimizer steps taken.
        skipped: records skipped as bad.
        history: the logged training scalars.
    """

    run: RunFolder
    metrics: dict[str, Any] = field(default_factory=dict)
    stored: str | None = None
    steps: int = 0
    skipped: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


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
    records = build_records(data.dataset, data.root, data.options, builders, output_root, skipped)
    train = split_records(records, data.train_split, default="train")[: data.max_train or None]
    held_out = split_records(records, data.eval_split)[: data.max_eval or None]
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


def build_encoder(settings: PretrainSettings) -> ReportImageDualEncoder:
    """The dual encoder the settings ask for (sigmoid objectives get the logit bias they need)."""
    options = dict(settings.model.options)
    if objective_class(settings.objective.name).NEEDS_LOGIT_BIAS:
        options.setdefault("init_logit_bias", -10.0)
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


def run_pretrain(
    settings: PretrainSettings,
    builders: Any,
    *,
    resume: Path | None = None,
    after_optimizer_step: Callable[[int], None] | None = None,
    report: HtmlReport | None = None,
    run: RunFolder | None = None,
    progress: bool = True,
) -> PretrainOutcome:
    """Run the pretraining job.

    Args:
        settings: the job's settings.
        builders: the host's dataset-builder catalog.
        resume: a run folder to continue from its latest checkpoint.
        after_optimizer_step: an extra ``fn(step)`` after each optimizer step.
        report: add sections to this page instead of writing the run's own ``index.html`` (the demo).
        run: use this run folder (the demo's) instead of making one.
        progress: show the progress bar.

    Returns:
        The :class:`PretrainOutcome`.
    """
    start = start_job(settings, "pretrain", resume, run)
    context, run, skipped = start.context, start.run, start.skipped
    train_records, eval_records = load_on_main_first(
        lambda listed: load_pair_records(settings.data, builders, Path(settings.run.output_root), listed), start)

    seed_everything(settings.run.seed)
    encoder = build_encoder(settings).to(context.device)
    preprocessing = dual_encoder_preprocessing(encoder)
    truncated, total = count_truncated(encoder, train_records)
    logger.info("%d of %d training reports truncated to %d tokens", truncated, total, encoder.context_length)
    train_set = pair_dataset(train_records, preprocessing, augment=True, cache=settings.data.cache, skipped=skipped,
                             cache_dir=run.path / "cache")
    objective = build_objective(settings.objective.name, encoder, **settings.objective.options).to(context.device)
    preparer = PairBatchPreparer(objective, max_sentences=settings.objective.max_sentences, local_crops=settings.objective.local_crops)
    module = PretrainModule(encoder, objective, preparer).to(context.device)
    loader = build_pair_loader(train_set, settings.train, settings.run.seed, context)
    trained = wrap_ddp(module, context, find_unused_parameters=objective_needs_unused(settings.objective.name))
    if settings.model.compile:
        encoder.clip.visual = torch.compile(encoder.clip.visual)

    def after_step(step: int) -> None:
        module.after_optimizer_step(step)
        if after_optimizer_step is not None:
            after_optimizer_step(step)

    trainer = Trainer(trained, lambda model, batch: model(batch), loader, settings.train, context, seed=settings.run.seed,
                      precision=settings.run.precision, checkpoint_dir=run.checkpoint_dir, tensorboard_dir=run.tensorboard_dir,
                      after_optimizer_step=after_step, progress=progress)
    result = trainer.fit()
    outcome = PretrainOutcome(run=run, steps=result.step, skipped=len(skipped), history=result.history)
    if context.is_main:
        _finish(settings, outcome, unwrap(trained).encoder, train_set, eval_records, preprocessing, skipped, context, report,
                {"truncated_reports": truncated, "reports": total, "objective": settings.objective.name})
    barrier(context)
    return outcome


def objective_needs_unused(name: str) -> bool:
    """True for objectives whose step leaves some parameters without gradient (DDP must be told)."""
    return name in ("convirt", "cosmos")


def _finish(settings: PretrainSettings, outcome: PretrainOutcome, encoder: ReportImageDualEncoder, train_set: Any,
            eval_records: list[dict], preprocessing: Any, skipped: SkippedRecords, context: DistributedContext,
            report: HtmlReport | None, extra: dict[str, Any]) -> None:
    """Rank 0 after training: evaluate, store the encoder, write metrics and pages."""
    run = outcome.run
    device = context.device
    eval_set = pair_dataset(eval_records, preprocessing, augment=False, cache="none", skipped=skipped)
    plain_train = pair_dataset(train_set_records(train_set), preprocessing, augment=False, cache="none", skipped=skipped) if settings.eval.linear_probe else None
    held_out = encode_pairs(encoder, eval_set, device, settings.eval.batch_size, keep_images=settings.eval.examples)
    train_pairs = encode_pairs(encoder, plain_train, device, settings.eval.batch_size, keep_images=0) if plain_train is not None else None
    metrics = evaluate_encoder(encoder, held_out, train_pairs, settings.eval, device, settings.data.findings, settings.run.seed)
    metrics.update(extra, steps=outcome.steps, skipped_records=len(skipped))
    outcome.metrics = metrics
    if settings.save.name:
        store = open_store(settings.save.store)
        record = store.save(encoder, name=settings.save.name, factory=settings.model.preset, task="contrastive",
                            config=_factory_config(settings), preprocessing=preprocessing, metrics=_flat_metrics(metrics),
                            aliases=("best",) if settings.save.alias_best else (), plugin="contrastive",
                            extra={"run": run.path.name, "objective": settings.objective.name})
        outcome.stored = f"{record.name}:v{record.version}"
        metrics["stored_model"] = outcome.stored
    run.write_metrics({"pretrain": metrics, "history": outcome.history})
    page = report or HtmlReport(f"Pretraining ({settings.objective.name}, {settings.model.preset})", run.path)
    page.section("Pretraining")
    page.text(f"{outcome.steps} optimizer steps of {settings.objective.name} on {len(train_set)} training pairs; "
              f"{len(skipped)} records skipped (see skipped.csv); {extra['truncated_reports']} of {extra['reports']} reports "
              f"truncated to {encoder.context_length} tokens." + (f" Stored as {outcome.stored}." if outcome.stored else ""))
    if outcome.history:
        page.table([{key: value for key, value in row.items()} for row in outcome.history[-5:]])
    write_evaluation_pages(page, run, metrics, held_out, preprocessing.mean, preprocessing.std, settings.eval.examples)
    if report is None:
        page.section("Config").preformatted((run.path / "config.yaml").read_text(encoding="utf-8") if (run.path / "config.yaml").exists() else "")
        page.write()


def train_set_records(dataset: Any) -> list[dict]:
    """The records behind a :class:`SafeDataset` (MONAI datasets keep them in ``.data``)."""
    return list(getattr(dataset.dataset, "data", []))


def _factory_config(settings: PretrainSettings) -> dict[str, Any]:
    """Constructor arguments that rebuild the stored encoder (no pretrained paths: the weights are stored)."""
    options = {key: value for key, value in settings.model.options.items() if key not in ("pretrained_image",)}
    options["pretrained_text"] = None
    if objective_class(settings.objective.name).NEEDS_LOGIT_BIAS:
        options.setdefault("init_logit_bias", -10.0)
    return options


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers kept with the stored version."""
    flat: dict[str, Any] = {}
    for key, value in (metrics.get("retrieval") or {}).items():
        flat[f"retrieval.{key}"] = value
    if metrics.get("zeroshot"):
        flat["zeroshot.mean_auroc"] = metrics["zeroshot"].get("mean")
    return flat
