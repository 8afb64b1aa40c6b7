"""Pieces every training job shares: its run folder and its records from a dataset builder.

A job (``workbench pretrain``, ``workbench vessels train``, ...) opens a run
folder once on rank 0 and tells the other ranks its path; it refuses to start
afresh in a named run folder that already holds checkpoints (that is what
``--resume`` is for). Its records come from a registered dataset builder,
split by each record's ``split`` value.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from workbench.checkpoints import latest_checkpoint
from workbench.config import RunSettings
from workbench.data.skipped import SkippedRecords
from workbench.devices import choose_precision
from workbench.distributed import DistributedContext, barrier, broadcast_text, init_distributed
from workbench.errors import ConfigError
from workbench.report import RunFolder

LoadedT = TypeVar("LoadedT")

logger = logging.getLogger("workbench.jobs")


@dataclass
class TrainOutcome:
    """What a training job produced: its run folder, held-out metrics, the stored model's reference, steps, history.

    Attributes:
        run: the run folder.
        metrics: held-out metrics (the job's own keys).
        stored: ``name:vN`` of the version saved in the model store, or ``None``.
        steps: optimizer steps taken in total.
        history: the logged training scalars, one dict per log step.
        model: the trained module (eval mode, unwrapped; rank 0), for callers that go on with it.
        details: what a job hands its caller besides (its evaluation object, vocabulary...), by name.
    """

    run: RunFolder
    metrics: dict[str, Any] = field(default_factory=dict)
    stored: str | None = None
    steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    model: Any = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobStart:
    """What every training job has once it has started.

    Attributes:
        context: the distributed context (device, rank, world size).
        run: the run folder (the same path on every rank).
        skipped: the run's bad-record list (written by rank 0 to ``skipped.csv``).
    """

    context: DistributedContext
    run: RunFolder
    skipped: SkippedRecords


def start_job(settings: Any, job: str, resume: Path | None = None, run: RunFolder | None = None) -> JobStart:
    """Join the process group, open the run folder, log to it and save the resolved config (new runs).

    Rank 0 also writes the ``precision`` entry of ``metrics.json`` (``{"name", "reason"}``,
    the choice :class:`~workbench.train.Trainer` makes for ``settings.run.precision``),
    so every training job says which precision it ran in and why.

    Args:
        settings: the job's settings (with a ``run`` section).
        job: the job's name, the run folder's prefix.
        resume: a run folder to continue, or ``None``.
        run: a run folder given by the caller (the demo's): no log file or config is added to it.

    Returns:
        The :class:`JobStart`.
    """
    context = init_distributed(settings.run.device)
    own_run = run is None
    run = run or open_run_folder(settings.run, context, resume, job)
    if context.is_main and own_run:
        run.attach_log()
        if resume is None:
            run.save_settings(settings)
    if context.is_main:
        precision = choose_precision(context.device, settings.run.precision)
        logger.info("%s on %s, precision %s: %s", job, context.device, precision.name, precision.reason)
        run.write_metrics({"precision": precision.as_dict()})
    return JobStart(context, run, SkippedRecords(run.skipped_csv if context.is_main else None))


def load_on_main_first(load: Callable[[SkippedRecords | None], LoadedT], start: JobStart) -> LoadedT:
    """Run ``load`` on rank 0 first (a builder may write files once, e.g. phantoms), then on the other ranks.

    Args:
        load: ``fn(skipped)``: rank 0 gets the run's bad-record list, the others ``None``.
        start: the job's start.

    Returns:
        What ``load`` returned on this rank.
    """
    if start.context.is_main:
        loaded = load(start.skipped)
    barrier(start.context)
    if not start.context.is_main:
        loaded = load(None)
    return loaded


def open_run_folder(run: RunSettings, context: DistributedContext, resume: Path | None, job: str) -> RunFolder:
    """The job's run folder: ``resume`` itself, or a new ``<output_root>/<job>-<name or time>`` made by rank 0.

    Args:
        run: the job's run settings (``output_root``, ``name``).
        context: the distributed context (rank 0 creates, the others receive the path).
        resume: a run folder to continue, or ``None`` for a new run.
        job: the job's name, the folder's prefix.

    Returns:
        The :class:`~workbench.report.RunFolder` (same path on every rank).

    Raises:
        ConfigError: ``resume`` is not a run folder, or a named run folder already holds checkpoints.
    """
    if resume is not None:
        if not (Path(resume) / "config.yaml").exists():
            raise ConfigError(f"--resume {resume}: not a run folder (no config.yaml)")
        return RunFolder(resume)
    if run.name and context.is_main:
        existing = Path(run.output_root) / f"{job}-{run.name}"
        if latest_checkpoint(existing / "checkpoints") is not None:
            raise ConfigError(f"run folder {existing} already holds checkpoints; continue it with --resume {existing} "
                              "or choose another run.name")
    path = str(RunFolder.create(job, run.output_root, run.name).path) if context.is_main else None
    return RunFolder(broadcast_text(path, context))


def build_records(dataset: str, root: Path | None, options: dict[str, Any], builders: Any, output_root: Path,
                  skipped: SkippedRecords | None = None) -> list[dict]:
    """Call a registered dataset builder and return its records.

    Args:
        dataset: the builder's name (``phantom-cxr``, ``drive``, ``chase-db1``, ...).
        root: the dataset folder (``None``: ``<output_root>/data/<dataset>``).
        options: keyword arguments for the builder.
        builders: the host's builder catalog (``host.datasets.builders``).
        output_root: the jobs' output root (for the default ``root``).
        skipped: where builders that take one list the rows they drop.

    Returns:
        The builder's records (dicts with at least ``image``).

    Raises:
        ConfigError: an unknown builder.
    """
    if dataset not in builders:
        raise ConfigError(f"data.dataset: unknown dataset builder {dataset!r}; installed: {', '.join(builders.names())}")
    builder = builders.get(dataset)
    options = dict(options)
    if skipped is not None and "skipped" in inspect.signature(builder).parameters:
        options["skipped"] = skipped
    return builder(Path(root or (output_root / "data" / dataset)), **options)


def train_and_held_out(data: Any, builders: Any, output_root: Path, skipped: SkippedRecords | None = None) -> tuple[list[dict], list[dict]]:
    """A job's (training, held-out) records from its ``data`` settings, capped by ``max_train`` / ``max_eval``.

    Args:
        data: settings with ``dataset``, ``root``, ``options``, ``train_split``, ``eval_split``, ``max_train``, ``max_eval``.
        builders: the host's builder catalog.
        output_root: the jobs' output root (for the default ``root``).
        skipped: where builders that take one list the rows they drop.

    Returns:
        ``(train, held_out)``; a record without ``split`` counts as training.

    Raises:
        ConfigError: an unknown builder.
    """
    records = build_records(data.dataset, data.root, data.options, builders, output_root, skipped)
    train = split_records(records, data.train_split, default="train")[: data.max_train or None]
    held_out = split_records(records, data.eval_split)[: data.max_eval or None]
    return train, held_out


def split_records(records: Sequence[dict], wanted: Sequence[str], default: str | None = None) -> list[dict]:
    """The records whose ``split`` (``default`` when absent) is one of ``wanted``, in their order."""
    return [record for record in records if record.get("split", default) in wanted]
