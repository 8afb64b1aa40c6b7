"""The training loop every plugin shares: seeded, resumable, distributed, observable.

A plugin supplies a module, a loader and a step function ``step(model, batch)
-> {"loss": tensor, ...}``; :class:`Trainer` does the rest: device and precision
(from :mod:`workbench.devices`), gradient accumulation, clipping, the learning-rate
schedule, rich progress, TensorBoard scalars, atomic checkpoints (model,
optimizer, scheduler, scaler, per-rank random states and the data position) and
resume, and DDP under ``torchrun`` (:mod:`workbench.distributed`).

Why resume gives the same result: the loader's order and augmentation random
states are a function of ``(seed, epoch)`` alone (:class:`~workbench.data.loaders.EpochDataLoader`);
on resume the loop re-enters the saved epoch and replays the batches already
consumed (augmentation only, the decoded images are cached) so every random
transform is back where it was, then restores the saved global random states.

Faults a long run meets: a damaged newest checkpoint is reported and the run
resumes from the newest intact one (:func:`~workbench.checkpoints.resumable_checkpoint`);
a full disk stops the run with one line and leaves the earlier checkpoints
(:class:`~workbench.fsutil.DiskFullError`); an optimizer step whose loss or
gradient is NaN/Inf is skipped, logged with the batch's record ids, and
``train.max_bad_steps`` such steps in a row stop the run with
:class:`NonFiniteLossError`, the last good checkpoint kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import torch
from pydantic import Field, model_validator
from torch import nn

from workbench.checkpoints import restore_rng_state, resumable_checkpoint, rng_state_bytes, save_checkpoint, seed_everything
from workbench.config import StrictModel
from workbench.devices import autocast, choose_precision, needs_grad_scaler
from workbench.distributed import DistributedContext, all_ranks_true, gather_bytes, unwrap
from workbench.errors import ConfigError, IntegrityError, WorkbenchError
from workbench.progress import StopRequest, TrainingProgress

__all__ = [
    "TrainSettings", "Trainer", "TrainResult", "NonFiniteLossError", "build_optimizer", "build_scheduler",
    "move_to_device", "StepFunction",
]

logger = logging.getLogger("workbench.train")

StepFunction = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]


class NonFiniteLossError(WorkbenchError, FloatingPointError):
    """``train.max_bad_steps`` optimizer steps in a row had a NaN/Inf loss or gradient."""


class TrainSettings(StrictModel):
    """The ``train:`` section of a job config.

    Attributes:
        steps: optimizer steps to take in total.
        batch_size: samples per micro-batch on each rank.
        grad_accum: micro-batches per optimizer step.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW decay, not applied to biases, norms and scalars.
        warmup_steps: linear warm-up steps before the schedule.
        schedule: ``cosine`` (to zero at ``steps``) or ``constant``.
        max_grad_norm: clip the global gradient norm (``null``: no clipping).
        checkpoint_every: write a checkpoint every this many optimizer steps (and at the end).
        keep_checkpoints: newest checkpoints kept on disk.
        log_every: steps between TensorBoard scalars and log lines.
        num_workers: data-loader worker processes.
        max_bad_steps: stop after this many optimizer steps in a row whose loss or
            gradient was NaN/Inf (each such step is skipped: no update).
        final_checkpoint: what the checkpoint at the last step holds: ``full`` (weights and the
            optimizer, scheduler and scaler state: the run can later be extended with more steps) or
            ``weights`` (weights and position only: resuming the finished run still works, extending
            it does not; the optimizer's moments are two thirds of a checkpoint, so short runs such as
            the demo keep a third of the bytes).
        store_steps: also store the model as it was at these optimizer steps (each a multiple of
            ``checkpoint_every`` below ``steps``): their checkpoints are kept on disk whatever
            ``keep_checkpoints`` says, and at the end each is evaluated and stored as its own version
            before the final model (so ``latest`` stays the final one). A benchmark picks among them
            on validation data; ``metrics.json`` lists them under ``stored_steps``.
    """

    steps: int = Field(100, gt=0)
    batch_size: int = Field(32, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    max_grad_norm: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(50, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0)
    num_workers: int = Field(0, ge=0)
    max_bad_steps: int = Field(5, gt=0)
    final_checkpoint: Literal["full", "weights"] = "full"
    store_steps: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _store_steps_are_checkpoints(self) -> "TrainSettings":
        wrong = [step for step in self.store_steps if step <= 0 or step >= self.steps or step % self.checkpoint_every]
        if wrong:
            raise ValueError(f"train.store_steps {wrong}: each must be a multiple of checkpoint_every ({self.checkpoint_every}) "
                             f"between 0 and steps ({self.steps}), so a checkpoint is written there")
        return self


def build_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; biases, norm weights and scalars get no weight decay.

    Returns:
        The optimizer with two parameter groups (decayed, not decayed).
    """
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") or "logit_" in name
        (plain if no_decay else decayed).append(parameter)
    groups = [{"params": decayed, "weight_decay": settings.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    # The fused kernel does the same update in one pass over each tensor (60M parameters on this CPU: 33 ms a step
    # instead of 97 ms for the default multi-tensor loop); it runs on CPU and CUDA tensors only.
    fused = all(parameter.device.type in ("cpu", "cuda") for parameter in decayed + plain)
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=settings.lr, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero (or constant), stepped once per optimizer step."""
    warmup, total, cosine = settings.warmup_steps, settings.steps, settings.schedule == "cosine"

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested dict/list) batch to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        step: optimizer steps taken in total (including those before a resume).
        resumed_from: the step of the checkpoint resumed from, or ``None``.
        history: one dict per logged step: ``step``, ``lr`` and the step function's scalars (means).
        skipped_batches: micro-batches skipped because every sample in them was bad.
        checkpoint: the last checkpoint written (rank 0), or ``None``.
        bad_steps: optimizer steps skipped because their loss or gradient was NaN/Inf.
        damaged_checkpoints: newer checkpoints passed over on resume, one line each (file and problem).
    """

    step: int
    resumed_from: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_batches: int = 0
    checkpoint: Path | None = None
    bad_steps: int = 0
    damaged_checkpoints: list[str] = field(default_factory=list)


class _PendingStep:
    """One optimizer step's micro-batch outputs, held until the step is known to be finite."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.loss_finite = torch.ones((), dtype=torch.bool)
        self.last_loss: torch.Tensor | None = None
        self.record_ids: list[str] = []

    def add(self, outputs: Mapping[str, torch.Tensor], batch: Any) -> None:
        """Add a micro-batch's outputs (no host sync) and its record ids when the batch carries them."""
        loss = outputs["loss"].detach()
        self.loss_finite = self.loss_finite.to(loss.device) & torch.isfinite(loss).all()
        self.last_loss = loss
        for key, value in outputs.items():
            self.sums[key] = self.sums.get(key, torch.zeros((), device=value.device)) + value.detach().float()
        self.count += 1
        ids = batch.get("id") if isinstance(batch, Mapping) else None
        if isinstance(ids, (list, tuple)):
            self.record_ids.extend(str(item) for item in ids)

    def merge_into(self, sums: dict[str, torch.Tensor]) -> int:
        """Add this step's sums to the logging sums; returns the micro-batches added."""
        for key, value in self.sums.items():
            sums[key] = sums.get(key, torch.zeros((), device=value.device)) + value
        return self.count

    def loss_text(self) -> str:
        return "unknown" if self.last_loss is None else f"{float(self.last_loss.float().mean()):.4g}"


@dataclass
class _Position:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


class Trainer:
    """Train ``model`` with ``step_fn`` on ``loader``.

    Args:
        model: the module to train, on ``context.device`` (wrap it yourself with
            :func:`~workbench.distributed.wrap_ddp` under torchrun, or pass it bare).
        step_fn: ``(model, batch) -> {"loss": scalar tensor, other scalars...}``; the
            batch is already on the device and the call runs under autocast.
        loader: an :class:`~workbench.data.loaders.EpochDataLoader` (``set_epoch`` is called).
        settings: the ``train:`` settings.
        context: the distributed context (device included).
        seed: the run seed.
        precision: ``auto|fp32|bf16|fp16`` (resolved for the device).
        checkpoint_dir: where checkpoints go (rank 0 writes); ``None`` disables them.
        tensorboard_dir: where scalars go (rank 0 writes); ``None`` disables them.
        optimizer: defaults to :func:`build_optimizer`.
        scheduler: defaults to :func:`build_scheduler`.
        after_optimizer_step: called as ``fn(step)`` after each optimizer step
            (EMA teachers, logit-scale clamps, test hooks).
        progress: show a rich progress bar on rank 0.

    Stopping: Ctrl-C (SIGINT) or SIGTERM finishes the step under way, writes a
    checkpoint and raises ``KeyboardInterrupt``; the same command resumes. A
    second Ctrl-C stops at once (the last periodic checkpoint stays valid).
    """

    def __init__(
        self,
        model: nn.Module,
        step_fn: StepFunction,
        loader: Any,
        settings: TrainSettings,
        context: DistributedContext,
        *,
        seed: int = 0,
        precision: str = "auto",
        checkpoint_dir: str | Path | None = None,
        tensorboard_dir: str | Path | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        after_optimizer_step: Callable[[int], None] | None = None,
        progress: bool = True,
    ):
        self.model, self.step_fn, self.loader, self.settings, self.context = model, step_fn, loader, settings, context
        self.seed = seed
        self.precision_choice = choose_precision(context.device, precision)
        self.precision = self.precision_choice.name
        if context.is_main:
            logger.info("precision %s: %s", self.precision, self.precision_choice.reason)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.optimizer = optimizer if optimizer is not None else build_optimizer(unwrap(model), settings)
        self.scheduler = scheduler if scheduler is not None else build_scheduler(self.optimizer, settings)
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=needs_grad_scaler(context.device, self.precision))
        self.after_optimizer_step = after_optimizer_step
        self.show_progress = progress and context.is_main
        self.position = _Position()

    # ----------------------------------------------------------------- checkpoints
    def _training_state(self, position: _Position) -> dict[str, Any]:
        state: dict[str, Any] = {"step": position.step, "epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch,
                                 "world_size": self.context.world_size}
        if position.step < self.settings.steps or self.settings.final_checkpoint == "full":
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict())
        return state

    def save(self, position: _Position) -> Path | None:
        """Write a checkpoint at ``position`` (every rank must call; rank 0 writes)."""
        if self.checkpoint_dir is None:
            return None
        gathered = gather_bytes(rng_state_bytes(), self.context)
        written, failure = None, None
        if self.context.is_main:
            try:
                written = save_checkpoint(self.checkpoint_dir, unwrap(self.model), self._training_state(position), gathered or [], self.settings.keep_checkpoints,
                                          protected=self.settings.store_steps)
                logger.info("checkpoint written: %s", written)
            except Exception as error:  # every rank must leave this collective, or the others wait forever
                failure = error
        if not all_ranks_true(failure is None, self.context):
            if failure is not None:
                raise failure
            raise WorkbenchError(f"rank 0 could not write the checkpoint at step {position.step} (its error says why); stopping")
        return written

    def _resume(self) -> tuple[int | None, dict[str, torch.Tensor] | None, list[str]]:
        """Load the newest intact checkpoint into model/optimizer/scheduler.

        Returns:
            ``(step, rng state to restore later, damaged checkpoints passed over)``.

        Raises:
            IntegrityError: there are checkpoints but none is intact.
        """
        if self.checkpoint_dir is None:
            return None, None, []
        checkpoint, damaged = resumable_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            if damaged:
                raise IntegrityError(f"{self.checkpoint_dir}: no intact checkpoint to resume from ({'; '.join(damaged)}); "
                                     "move the checkpoints folder away to start the run over")
            return None, None, []
        found = checkpoint.path
        checkpoint.load_model(unwrap(self.model))
        state = checkpoint.state
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        elif int(state["step"]) < self.settings.steps:
            raise IntegrityError(f"{found} holds the weights only (train.final_checkpoint: weights, written when the run finished at "
                                 f"step {state['step']}): it cannot be trained on to {self.settings.steps} steps; start a new run")
        self.position = _Position(int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"]))
        if int(state.get("world_size", 1)) != self.context.world_size:
            logger.warning("%s was written by %s ranks, resuming on %s: the data order differs from an uninterrupted run",
                           found, state.get("world_size"), self.context.world_size)
        rng = checkpoint.rng_state(self.context.rank) or checkpoint.rng_state(0)
        logger.info("resuming from %s (step %d)", found, checkpoint.step)
        return checkpoint.step, rng, damaged

    # ----------------------------------------------------------------- the loop
    def _batches(self, rng_after_replay: dict[str, torch.Tensor] | None) -> Iterator[tuple[int, int, Any]]:
        """Yield ``(epoch, batch_in_epoch after this batch, batch)`` forever, starting at the saved position."""
        epoch, skip = self.position.epoch, self.position.batch_in_epoch
        while True:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            iterator = iter(self.loader)
            for _ in range(skip):  # replay: advances the transforms' random states exactly as before the stop
                next(iterator, None)
            if rng_after_replay is not None:
                restore_rng_state(rng_after_replay)
                rng_after_replay = None
            index = skip
            for batch in iterator:
                index += 1
                yield epoch, index, batch
            epoch, skip = epoch + 1, 0

    def fit(self) -> TrainResult:
        """Train to ``settings.steps`` optimizer steps, resuming from the latest checkpoint when there is one.

        Returns:
            A :class:`TrainResult`.

        Raises:
            ConfigError: the loader yields no usable batch at all in a whole epoch.
        """
        seed_everything(self.seed + self.context.rank)
        resumed_from, rng, damaged = self._resume()
        result = TrainResult(step=self.position.step, resumed_from=resumed_from, damaged_checkpoints=damaged)
        if self.position.step >= self.settings.steps:
            return result
        writer = self._tensorboard()
        sums: dict[str, torch.Tensor] = {}
        pending = _PendingStep()
        micro, summed, empty_run, bad_run = 0, 0, 0, 0
        self.model.train()
        with TrainingProgress(self.settings.steps, self.position.step, enabled=self.show_progress) as bar, StopRequest() as stop:
            for epoch, index, batch in self._batches(rng):
                if not all_ranks_true(batch is not None, self.context):  # keeps ranks in step when one has nothing
                    result.skipped_batches += 1
                    empty_run += 1
                    if empty_run > max(1, len(self.loader)):
                        raise ConfigError("no usable batch in a whole epoch: every record was skipped (see skipped.csv)")
                    continue
                empty_run = 0
                micro += 1
                last_micro = micro == self.settings.grad_accum
                pending.add(self._forward_backward(batch, sync=last_micro), batch)
                if not last_micro:
                    continue
                micro = 0
                if not self._optimizer_step(pending.loss_finite):
                    bad_run += 1
                    result.bad_steps += 1
                    self._report_bad_step(pending, bad_run, result.checkpoint)
                    self.position = _Position(self.position.step, epoch, index)
                    pending = _PendingStep()
                    continue
                bad_run = 0
                summed += pending.merge_into(sums)
                pending = _PendingStep()
                self.position = _Position(self.position.step + 1, epoch, index)
                step = self.position.step
                if self.after_optimizer_step is not None:
                    self.after_optimizer_step(step)
                if step % self.settings.log_every == 0 or step == self.settings.steps:
                    record = self._log(step, sums, summed, writer)
                    result.history.append(record)
                    bar.update(step, record.get("loss"))
                    sums, summed = {}, 0
                else:
                    bar.update(step, None)
                stopping = not all_ranks_true(not stop.requested, self.context)
                if stopping or step % self.settings.checkpoint_every == 0 or step == self.settings.steps:
                    if self.checkpoint_dir is not None:
                        self._check_weights(step, result.checkpoint)
                    result.checkpoint = self.save(self.position) or result.checkpoint
                if stopping:
                    if writer is not None:
                        writer.close()
                    raise KeyboardInterrupt(f"stopped at step {step}; run the same command again to resume from {result.checkpoint}")
                if step >= self.settings.steps:
                    break
        if writer is not None:
            writer.close()
        result.step = self.position.step
        return result

    def _forward_backward(self, batch: Any, sync: bool) -> Mapping[str, torch.Tensor]:
        batch = move_to_device(batch, self.context.device)
        no_sync = getattr(self.model, "no_sync", None)
        sync_context = no_sync() if (not sync and no_sync is not None) else contextlib.nullcontext()
        with sync_context:
            with autocast(self.context.device, self.precision):
                outputs = self.step_fn(self.model, batch)
            loss = outputs["loss"]
            self.scaler.scale(loss / self.settings.grad_accum).backward()
        return outputs

    def _optimizer_step(self, loss_finite: torch.Tensor) -> bool:
        """Clip, check and take one optimizer step; ``False`` (and no update) when the loss or gradient is NaN/Inf.

        One host sync per step: the loss flag (and, when clipping, the gradient
        norm clipping computes anyway) are combined on the device and read once.
        Without clipping the gradient is not read again (a norm costs about half
        an AdamW step on the CPU); a NaN gradient under a finite loss then shows
        as NaN losses from the next step, and :meth:`_check_weights` keeps it out
        of checkpoints. Under fp16 the grad scaler owns overflowing gradients (it
        skips those steps and lowers its scale), so only the loss counts there.
        """
        grad_norm = None
        if self.settings.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        scaled = self.scaler.is_enabled()
        finite = loss_finite if (grad_norm is None or scaled) else loss_finite & torch.isfinite(grad_norm)
        if not all_ranks_true(bool(finite.item()), self.context):
            self.optimizer.zero_grad(set_to_none=True)
            if scaled and self.settings.max_grad_norm is not None:
                self.scaler.update()  # closes this step's unscale_ (and lowers the scale on overflow)
            return False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return True

    def _check_weights(self, step: int, last_checkpoint: Path | None) -> None:
        """Refuse to checkpoint NaN/Inf weights (one host sync per checkpoint)."""
        tensors = [parameter.detach() for parameter in self.model.parameters()]
        if not tensors or bool(torch.stack([torch.isfinite(tensor).all() for tensor in tensors]).all().item()):
            return
        raise NonFiniteLossError(
            f"training stopped at step {step}: the weights hold NaN/Inf (a non-finite gradient under a finite loss); "
            f"{self._kept(last_checkpoint)}; set train.max_grad_norm to catch such gradients at their step, "
            "then run the same command again to resume")

    def _kept(self, last_checkpoint: Path | None) -> str:
        if last_checkpoint is None and self.checkpoint_dir is not None:
            found = resumable_checkpoint(self.checkpoint_dir)[0]
            last_checkpoint = found.path if found is not None else None
        return f"the last good checkpoint {last_checkpoint} is kept" if last_checkpoint else "no checkpoint was written yet"

    def _report_bad_step(self, pending: _PendingStep, bad_run: int, last_checkpoint: Path | None) -> None:
        """Log a skipped step with its records; raise once ``max_bad_steps`` came in a row."""
        step = self.position.step + 1
        records = f"; records {', '.join(pending.record_ids[:20])}" if pending.record_ids else ""
        logger.warning("step %d: non-finite loss or gradient (loss %s); update skipped (%d in a row, stop at %d)%s",
                       step, pending.loss_text(), bad_run, self.settings.max_bad_steps, records)
        if bad_run >= self.settings.max_bad_steps:
            raise NonFiniteLossError(
                f"training stopped at step {step}: {bad_run} optimizer steps in a row had a NaN/Inf loss or gradient "
                f"(last loss {pending.loss_text()}{records}); {self._kept(last_checkpoint)}; lower train.lr, set train.max_grad_norm "
                "or check those records, then run the same command again to resume")

    def _tensorboard(self) -> Any:
        if self.tensorboard_dir is None or not self.context.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=self.position.step + 1)

    def _log(self, step: int, sums: Mapping[str, torch.Tensor], count: int, writer: Any) -> dict[str, float]:
        count = max(1, count)
        record = {"step": float(step), "lr": float(self.optimizer.param_groups[0]["lr"])}
        record.update({key: float(value.item()) / count for key, value in sums.items()})
        if writer is not None:
            for key, value in record.items():
                if key != "step":
                    writer.add_scalar(f"train/{key}", value, step)
        logger.info("step %d: %s", step, ", ".join(f"{key}={value:.4g}" for key, value in record.items() if key != "step"))
        return record

