"""Non-finite loss or gradient: the step is skipped and logged with its records; N in a row stop the run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers.fault_training import RegressionRecords, mse_step, train
from tests.helpers.kill_resume import assert_same_tensors
from workbench.checkpoints import latest_checkpoint, load_checkpoint
from workbench.data.loaders import build_loader
from workbench.train import NonFiniteLossError


def _batch_numbers_holding(record_id: str, batches: int) -> list[int]:
    """The (1-based) numbers of the batches, in the helper's shuffled order, that hold ``record_id``."""
    loader = build_loader(RegressionRecords(), batch_size=8, shuffle=True, seed=1)
    found, number, epoch = [], 0, 0
    while number < batches:
        loader.set_epoch(epoch)
        for batch in loader:
            number += 1
            if record_id in batch["id"] and number <= batches:
                found.append(number)
        epoch += 1
    return found


def test_a_record_with_nan_is_skipped_logged_by_id_and_training_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    assert _batch_numbers_holding("r13", 10) == [6]  # 9 steps take 10 batches when one is skipped
    with caplog.at_level(logging.WARNING, logger="workbench.train"):
        model, result = train(None, nan_ids=("r13",))
    assert result.step == 9 and result.bad_steps == 1
    warning = [record.getMessage() for record in caplog.records if "update skipped" in record.getMessage()]
    assert len(warning) == 1 and warning[0].startswith("step 6: non-finite loss or gradient (loss nan); update skipped (1 in a row, stop at 5); records ")
    assert "r13" in warning[0].split("records ")[1].split(", ")
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    logged = [record["loss"] for record in result.history]
    assert [record["step"] for record in result.history] == list(range(1, 10)) and torch.isfinite(torch.tensor(logged)).all()


def test_five_bad_steps_in_a_row_stop_with_the_last_good_checkpoint_kept(tmp_path: Path) -> None:
    straight, _ = train(tmp_path / "straight")
    state = {"poisoned": True}

    def diverges_after_four(network: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        loss = mse_step(network, batch)["loss"]
        if trainer_step[0] >= 4 and state["poisoned"]:
            loss = loss * float("inf")
        return {"loss": loss}

    trainer_step = [0]

    def count(step: int) -> None:
        trainer_step[0] = step

    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(NonFiniteLossError) as stopped:
        train(tmp_path / "run", step_fn=diverges_after_four, hook=count)
    message = str(stopped.value)
    assert message.startswith("training stopped at step 5: 5 optimizer steps in a row had a NaN/Inf loss or gradient (last loss")
    assert f"the last good checkpoint {checkpoints / 'step-00000003'} is kept" in message
    assert "lower train.lr, set train.max_grad_norm or check those records" in message and "\n" not in message
    assert load_checkpoint(latest_checkpoint(checkpoints)).step == 3

    state["poisoned"] = False  # e.g. the data was fixed
    resumed, result = train(tmp_path / "run", step_fn=diverges_after_four, hook=count)
    assert result.resumed_from == 3 and result.bad_steps == 0
    assert_same_tensors(straight.state_dict(), resumed.state_dict())


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with a poisoned gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.full_like(grad, float("nan"))


def _nan_gradient_step(network: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    return {"loss": nn.functional.mse_loss(_NanGradient.apply(network(batch["x"])).squeeze(-1), batch["y"])}


def test_a_nan_gradient_under_a_finite_loss_is_skipped_at_its_step_when_clipping(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match=r"training stopped at step 1: 3 optimizer steps in a row .*\(last loss \d"):
        train(tmp_path / "run", step_fn=_nan_gradient_step, max_bad_steps=3, max_grad_norm=1.0, checkpoint_every=1)
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").glob("step-*"))


def test_without_clipping_nan_weights_are_never_checkpointed(tmp_path: Path) -> None:
    # Step 1 applies the NaN gradient (nothing reads it), the checkpoint after it refuses the NaN weights.
    with pytest.raises(NonFiniteLossError, match="training stopped at step 1: the weights hold NaN/Inf .* no checkpoint was written yet"):
        train(tmp_path / "run", step_fn=_nan_gradient_step, checkpoint_every=1)
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))
    # Between checkpoints, the NaN weights make the next losses NaN: those steps are skipped, then the run stops.
    with pytest.raises(NonFiniteLossError, match=r"training stopped at step 2: 3 optimizer steps in a row"):
        train(None, step_fn=_nan_gradient_step, max_bad_steps=3)


def test_one_host_sync_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_item = torch.Tensor.item

    def counted_item(tensor: torch.Tensor):
        calls.append(tensor.dtype)
        return real_item(tensor)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    train(None, steps=4, log_every=100)
    assert calls.count(torch.bool) == 4  # the finite check, once a step (no checkpoints here: none before them)
