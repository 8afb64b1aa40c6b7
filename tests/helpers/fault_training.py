"""A tiny in-process training job for the fault tests: linear regression through the real :class:`Trainer`.

Records carry ids (``r00``...), so a skipped step can name them; a record's ``x``
can be made NaN to poison the batch it lands in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from workbench.checkpoints import seed_everything
from workbench.data.loaders import build_loader
from workbench.distributed import DistributedContext
from workbench.train import StepFunction, Trainer, TrainResult, TrainSettings


class RegressionRecords(torch.utils.data.Dataset):
    """48 records ``{"id", "x" (5,), "y"}`` of y = x @ w + noise; ``nan_ids`` get a NaN in ``x``."""

    def __init__(self, nan_ids: tuple[str, ...] = ()) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(48, 5, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0]) + 0.1 * torch.randn(48, generator=generator)
        self.nan_ids = set(nan_ids)

    def __len__(self) -> int:
        return 48

    def __getitem__(self, index: int) -> dict[str, Any]:
        record_id = f"r{index:02d}"
        x = self.x[index].clone()
        if record_id in self.nan_ids:
            x[2] = float("nan")
        return {"id": record_id, "x": x, "y": self.y[index]}


def mse_step(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """Mean squared error of the model's ``(B, 1)`` output against ``y``."""
    return {"loss": nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])}


def train(
    run_dir: Path | None,
    *,
    steps: int = 9,
    checkpoint_every: int = 3,
    keep_checkpoints: int = 3,
    step_fn: StepFunction = mse_step,
    nan_ids: tuple[str, ...] = (),
    hook: Callable[[int], None] | None = None,
    **settings: Any,
) -> tuple[nn.Module, TrainResult]:
    """Train a dropout MLP with shuffled batches of 8; returns the model and the result.

    Args:
        run_dir: checkpoints go to ``run_dir / "checkpoints"`` (``None``: none written).
        steps: optimizer steps.
        checkpoint_every: steps between checkpoints.
        keep_checkpoints: checkpoints kept.
        step_fn: the step function.
        nan_ids: records whose ``x`` holds a NaN.
        hook: ``after_optimizer_step``.
        settings: more ``TrainSettings`` fields.
    """
    seed_everything(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    settings = {"log_every": 1, **settings}
    train_settings = TrainSettings(steps=steps, batch_size=8, lr=0.05, weight_decay=0.0, checkpoint_every=checkpoint_every,
                                   keep_checkpoints=keep_checkpoints, **settings)
    loader = build_loader(RegressionRecords(nan_ids), batch_size=8, shuffle=True, seed=1)
    trainer = Trainer(model, step_fn, loader, train_settings, DistributedContext(), precision="fp32", progress=False,
                      checkpoint_dir=run_dir / "checkpoints" if run_dir is not None else None, after_optimizer_step=hook)
    return model, trainer.fit()


class Stop(Exception):
    """Raised by :func:`stop_at` to end a run abruptly (what a kill does, minus the process)."""


def stop_at(stop_step: int) -> Callable[[int], None]:
    """An ``after_optimizer_step`` hook that raises :class:`Stop` after step ``stop_step``."""

    def maybe_stop(step: int) -> None:
        if step == stop_step:
            raise Stop(f"stopped after step {step}")

    return maybe_stop
