"""The one shape of a training job, and the one function that runs it.

Every plugin's training job (``report train``, ``ground train``, ...) is the
same skeleton: start the run (rank 0 opens the run folder, the others learn
its path), load the records on the main rank first, build the model, wrap it
for DDP, fit it in the shared :class:`~workbench.train.Trainer`, then on rank 0
evaluate it, store it in the registry (once: a run resumed after its last step
stores nothing new), write ``metrics.json`` and the pages. A plugin writes only
what differs, as a :class:`TrainingJob` subclass; :func:`run_training_job`
holds the rules, so they live once.

Example (the whole of a tiny job)::

    class LinearJob(TrainingJob):
        kind, section, plugin = "linear-train", "linear", "my-plugin"

        def prepare(self, start, skipped):
            self.records = build_records(...)

        def build_model(self, start):
            return torch.nn.Linear(4, 2)

        def loader(self, start):
            return build_loader(dataset, batch_size=self.settings.train.batch_size, shuffle=True, seed=self.settings.run.seed)

        def step(self, model, batch):
            return {"loss": F.cross_entropy(model(batch["x"]), batch["y"])}

        def evaluate(self, model, start, result):
            return {"accuracy": ...}

    outcome = run_training_job(LinearJob(settings, builders))
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from workbench.checkpoints import checkpoints_by_step, load_checkpoint, seed_everything
from workbench.distributed import barrier, unwrap, wrap_ddp
from workbench.errors import ConfigError
from workbench.jobs import JobStart, TrainOutcome, load_on_main_first, start_job
from workbench.model_store import ModelStore
from workbench.report import RunFolder, closes_run_logs
from workbench.train import Trainer, TrainResult


@dataclass
class StoreRequest:
    """What a job asks the registry to keep of its trained model.

    Attributes:
        store: the model store to save into.
        model: the trained module (eval mode, unwrapped).
        factory: the registered factory name that rebuilds it from ``config``.
        task: the model's task (``grounding``, ``reporting``, ...).
        config: the factory's keyword arguments.
        preprocessing: the preprocessing its inputs need, stored with it (a
            :class:`~workbench.model_records.Preprocessing` or its dict).
        metrics: the few held-out figures kept in the record.
        parent: ``name:vN`` of the model it stands on, when in the same store.
        extra: other record fields (the encoder's reference, the run's name...).
        aliases: aliases to move onto the new version (``("best",)``).
    """

    store: ModelStore
    model: nn.Module
    factory: str
    task: str
    config: dict[str, Any]
    preprocessing: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


class TrainingJob(ABC):
    """One training job's own parts; :func:`run_training_job` calls them in order.

    Class attributes:
        kind: the run folder's prefix (``report-train``).
        section: the key of the job's metrics in ``metrics.json`` (``reporting``).
        plugin: the plugin that owns the stored model.
        distributed: whether the job may run under ``torchrun`` (DDP).
        find_unused_parameters: DDP must be told when a step leaves some parameters without gradient.

    Args:
        settings: the job's settings (with ``run``, ``train`` and, when it stores, ``save`` sections).
        builders: the host's dataset-builder catalog.
        progress: show progress bars.
        after_optimizer_step: an extra ``fn(step)`` after each optimizer step (tests kill a run there).

    Between the calls a job keeps what it needs on ``self`` (records, frozen
    features, the encoder it stands on).
    """

    kind: ClassVar[str]
    section: ClassVar[str]
    plugin: ClassVar[str]
    distributed: ClassVar[bool] = True
    find_unused_parameters: ClassVar[bool] = False

    def __init__(self, settings: Any, builders: Any, *, progress: bool = True,
                 after_optimizer_step: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.builders = builders
        self.progress = progress
        self.extra_after_optimizer_step = after_optimizer_step

    @abstractmethod
    def prepare(self, start: JobStart, skipped: Any) -> None:
        """Load records (and anything computed once from them); runs on rank 0 first, then on the other ranks.

        Args:
            start: the job's start (context, run folder).
            skipped: the run's bad-record list on rank 0, ``None`` on the others.
        """

    @abstractmethod
    def build_model(self, start: JobStart) -> nn.Module:
        """The module to train (the run's seed is set just before), on any device: it is moved to the job's."""

    @abstractmethod
    def loader(self, start: JobStart) -> Any:
        """The training data loader (a :func:`workbench.data.loaders.build_loader`, so resume replays its order)."""

    @abstractmethod
    def step(self, model: nn.Module, batch: Any) -> Mapping[str, torch.Tensor]:
        """One micro-batch: ``{"loss": scalar tensor, ...}`` (other scalars are logged)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, start: JobStart, result: TrainResult) -> dict[str, Any]:
        """Held-out metrics of the trained ``model`` (eval mode, unwrapped); rank 0 only."""

    def store_request(self, model: nn.Module, metrics: Mapping[str, Any], start: JobStart) -> StoreRequest | None:
        """What to save in the registry, or ``None`` to save nothing (the default)."""
        return None

    def write_pages(self, start: JobStart, metrics: Mapping[str, Any], result: TrainResult, outcome: TrainOutcome) -> None:
        """Write the run's ``index.html`` (the default writes none); rank 0 only."""

    def write_metrics(self, run: RunFolder, metrics: Mapping[str, Any], result: TrainResult) -> None:
        """Write ``metrics.json`` (default: ``{section: metrics, "history": [...]}``); rank 0 only."""
        run.write_metrics({self.section: dict(metrics), "history": result.history})

    def after_optimizer_step(self, step: int) -> None:
        """Called after each optimizer step with its number (EMA teachers, clamps); a subclass that overrides it calls ``super()``."""
        if self.extra_after_optimizer_step is not None:
            self.extra_after_optimizer_step(step)

    def trains_in_loop(self) -> bool:
        """Whether :meth:`build_model`'s module trains in the shared loop (a closed-form fit in ``build_model`` returns False)."""
        return True

    def optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any] | None:
        """``(optimizer, scheduler)`` when the job needs its own (a GAN's two groups); ``None``: the Trainer's AdamW and schedule."""
        return None

    def precision(self, start: JobStart) -> str:
        """The precision the loop runs at (default ``run.precision``, resolved for the device by the Trainer)."""
        return self.settings.run.precision


def stored_by_finished_run(run: RunFolder, section: str, resumed_from: int | None, steps: int) -> str | None:
    """The model a run already stored when it is resumed after its last step (so resuming stores no duplicate).

    Args:
        run: the run folder.
        section: the job's key in ``metrics.json``.
        resumed_from: the step of the checkpoint the fit resumed from (``None``: a fresh run).
        steps: the job's total steps.

    Returns:
        ``name:vN`` recorded by the earlier finish, or ``None``.
    """
    metrics_file = run.path / "metrics.json"
    if resumed_from is None or resumed_from < steps or not metrics_file.exists():
        return None
    return json.loads(metrics_file.read_text(encoding="utf-8")).get(section, {}).get("stored_model")


def save_requested(job: TrainingJob, request: StoreRequest, extra: Mapping[str, Any] | None = None) -> Any:
    """Store ``request`` under the job's ``save.name`` (``extra`` added to the record's extra); returns the new record."""
    return request.store.save(request.model, name=job.settings.save.name, factory=request.factory, task=request.task,
                              config=request.config, preprocessing=request.preprocessing, plugin=job.plugin,
                              metrics=request.metrics, parent=request.parent, extra={**request.extra, **(extra or {})},
                              aliases=request.aliases)


def store_earlier_steps(job: TrainingJob, model: nn.Module, start: JobStart, result: TrainResult) -> dict[int, str]:
    """Evaluate and store ``model`` as it was at each of ``train.store_steps``, then put its final weights back.

    Args:
        job: the finished job (its ``evaluate`` and ``store_request`` are used as for the final model).
        model: the trained, unwrapped model (its weights are swapped in place and restored).
        start: the job's start (the run folder holding the checkpoints).
        result: the fit's result.

    Returns:
        ``{step: "name:vN"}`` in step order (``{}`` when the job stores nothing).

    Raises:
        ConfigError: a step's checkpoint is not on disk (named, with the steps that are).
    """
    steps = sorted(set(job.settings.train.store_steps))
    on_disk = checkpoints_by_step(start.run.checkpoint_dir)
    missing = [step for step in steps if step not in on_disk]
    if missing:
        raise ConfigError(f"train.store_steps {missing}: no checkpoint for these steps in {start.run.checkpoint_dir} "
                          f"(on disk: {sorted(on_disk)})")
    final_weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
    stored: dict[int, str] = {}
    for step in steps:
        load_checkpoint(on_disk[step]).load_model(model)
        request = job.store_request(model, dict(job.evaluate(model.eval(), start, result), steps=step), start)
        if request is None:
            break
        stored[step] = save_requested(job, request, {"step": step}).ref
    model.load_state_dict(final_weights)
    return stored


@closes_run_logs
def run_training_job(job: TrainingJob, *, resume: Path | None = None, run: RunFolder | None = None) -> TrainOutcome:
    """Run ``job`` end to end: start, prepare, build, fit, then on rank 0 evaluate, store, write metrics and pages.

    Args:
        job: the job's parts.
        resume: a run folder to continue from its newest checkpoint.
        run: a run folder given by the caller (the demo's), used as it is.

    Returns:
        The :class:`~workbench.jobs.TrainOutcome` (``metrics`` and ``stored`` filled on rank 0).

    Raises:
        ConfigError: the job cannot run distributed and was started under ``torchrun``.
    """
    settings = job.settings
    start = start_job(settings, job.kind, resume, run)
    context = start.context
    if context.world_size > 1 and not job.distributed:
        raise ConfigError(f"{job.kind} runs in one process; start it without torchrun")
    load_on_main_first(lambda skipped: job.prepare(start, skipped), start)
    seed_everything(settings.run.seed)
    model = job.build_model(start).to(context.device)
    trained = model
    if job.trains_in_loop():
        trained = wrap_ddp(model, context, find_unused_parameters=job.find_unused_parameters)
        optimizer, scheduler = job.optimizer(model) or (None, None)
        trainer = Trainer(trained, job.step, job.loader(start), settings.train, context, seed=settings.run.seed,
                          precision=job.precision(start), checkpoint_dir=start.run.checkpoint_dir,
                          tensorboard_dir=start.run.tensorboard_dir, optimizer=optimizer, scheduler=scheduler,
                          after_optimizer_step=job.after_optimizer_step, progress=job.progress)
        result = trainer.fit()
    else:
        result = TrainResult(step=0)
    outcome = TrainOutcome(run=start.run, steps=result.step, history=result.history)
    if context.is_main:
        model = unwrap(trained).eval()
        outcome.model = model
        metrics = dict(job.evaluate(model, start, result), steps=result.step, skipped_records=len(start.skipped))
        already = stored_by_finished_run(start.run, job.section, result.resumed_from, settings.train.steps)
        if not already and getattr(settings.train, "store_steps", None):
            # Before the final model, so the final one is the newest version; evaluate() is run again for it below.
            stored_steps = store_earlier_steps(job, model, start, result)
            metrics["stored_steps"] = {str(step): reference for step, reference in stored_steps.items()}
            metrics.update(job.evaluate(model, start, result))
        request = None if already else job.store_request(model, metrics, start)
        if already:
            outcome.stored = already
        elif request is not None:
            outcome.stored = save_requested(job, request).ref
        if outcome.stored:
            metrics["stored_model"] = outcome.stored
        outcome.metrics = metrics
        job.write_metrics(start.run, metrics, result)
        job.write_pages(start, metrics, result, outcome)
    barrier(context)
    return outcome
