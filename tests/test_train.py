"""The shared training loop: resume equality after SIGKILL and Ctrl-C, DDP, accumulation, checkpoints."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers.kill_resume import REPO_ROOT, assert_same_tensors, run_worker
from workbench.checkpoints import capture_rng_state, latest_checkpoint, load_checkpoint, restore_rng_state, seed_everything
from workbench.data.loaders import build_loader
from workbench.distributed import DistributedContext
from workbench.errors import ConfigError, IntegrityError
from workbench.train import Trainer, TrainSettings, build_optimizer

WORKER = REPO_ROOT / "tests" / "helpers" / "train_worker.py"



def _worker(tmp_path: Path, run: str, out: str, *extra: str):
    completed = run_worker(WORKER, ["--data-dir", tmp_path / "data", "--run-dir", tmp_path / run, "--out", tmp_path / out, *extra])
    return completed


def test_sigkill_then_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = _worker(tmp_path, "straight", "straight.safetensors")
    assert straight.returncode == 0, straight.stderr
    killed = _worker(tmp_path, "killed", "killed.safetensors", "--kill-at", "8")
    assert killed.returncode == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step-00000006"
    assert not (tmp_path / "killed.safetensors").exists()
    resumed = _worker(tmp_path, "killed", "killed.safetensors")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "killed" / "result.json").read_text()) == {"step": 12, "resumed_from": 6}
    assert_same_tensors(load_file(tmp_path / "straight.safetensors"), load_file(tmp_path / "killed.safetensors"))
    # The corrupt PNG was listed once in each run, and training went on.
    assert (tmp_path / "killed" / "skipped.csv").read_text().count("corrupt.png") == 1


def test_two_gloo_ranks_see_disjoint_samples_keep_identical_weights_and_only_rank0_writes(tmp_path):
    command = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(WORKER),
               "--data-dir", tmp_path / "data", "--run-dir", tmp_path / "run", "--out", tmp_path / "final.safetensors",
               "--rank-dir", tmp_path / "ranks", "--steps", "6", "--images", "23"]
    completed = run_worker(command[0], command[1:])
    assert completed.returncode == 0, completed.stderr[-3000:]
    seen = [json.loads((tmp_path / "ranks" / f"seen-rank{rank}.json").read_text()) for rank in (0, 1)]
    # 24 records (one corrupt) split 12 + 12 per epoch: epoch 0 is each rank's first 3 batches of 4.
    first_epoch = [{sample for batch in batches[:3] for sample in batch} for batches in seen]
    assert not first_epoch[0] & first_epoch[1]
    assert len(first_epoch[0] | first_epoch[1]) == 23
    weights = [load_file(tmp_path / "ranks" / f"weights-rank{rank}.safetensors") for rank in (0, 1)]
    assert_same_tensors(weights[0], weights[1])
    events = list((tmp_path / "run" / "tensorboard").iterdir())
    assert len(events) == 1, events  # one writer: rank 0
    checkpoint = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert sorted(path.name for path in checkpoint.iterdir()) == ["checksums.json", "model.safetensors", "rng-rank0.safetensors", "rng-rank1.safetensors", "state.pt"]
    assert_same_tensors(load_file(checkpoint / "model.safetensors"), weights[0])
    assert (tmp_path / "run" / "skipped.csv").read_text().count("corrupt.png") == 1


class _Regression(torch.utils.data.Dataset):
    """64 samples of y = x @ w + noise, x (5,), as dicts."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 5, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0]) + 0.1 * torch.randn(64, generator=generator)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "y": self.y[index]}


def _mse_step(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    return {"loss": nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])}


def _train(tmp_path: Path | None, *, steps: int, batch_size: int, grad_accum: int = 1, dropout: float = 0.0, hook=None, shuffle=False) -> nn.Module:
    seed_everything(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(dropout), nn.Linear(8, 1))
    settings = TrainSettings(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=0.05, weight_decay=0.0, checkpoint_every=100, log_every=1)
    loader = build_loader(_Regression(), batch_size=batch_size, shuffle=shuffle, seed=1)
    Trainer(model, _mse_step, loader, settings, DistributedContext(), precision="fp32", progress=False,
            checkpoint_dir=tmp_path / "checkpoints" if tmp_path else None, after_optimizer_step=hook).fit()
    return model


def test_gradient_accumulation_matches_the_larger_batch():
    whole = _train(None, steps=6, batch_size=16)
    accumulated = _train(None, steps=6, batch_size=8, grad_accum=2)
    for first, second in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(first, second, rtol=0, atol=1e-6)
    assert not torch.equal(next(whole.parameters()), next(_train(None, steps=6, batch_size=8).parameters()))


def test_optimizer_is_fused_adamw_without_decay_on_biases_and_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    reference = [parameter.detach().clone() for parameter in model.parameters()]
    optimizer = build_optimizer(model, TrainSettings(lr=0.1, weight_decay=0.5))
    assert optimizer.defaults["fused"] is True
    decays = {id(parameter): group["weight_decay"] for group in optimizer.param_groups for parameter in group["params"]}
    assert [decays[id(parameter)] for parameter in model.parameters()] == [0.5, 0.0, 0.0, 0.0, 0.5, 0.0]
    # One step on the same gradients as torch's default (multi-tensor) AdamW, which the fused kernel must match.
    plain = [nn.Parameter(value.clone()) for value in reference]
    groups = [{"params": [plain[i] for i in (0, 4)], "weight_decay": 0.5}, {"params": [plain[i] for i in (1, 2, 3, 5)], "weight_decay": 0.0}]
    default = torch.optim.AdamW(groups, lr=0.1)
    for parameter, twin in zip(model.parameters(), plain):
        parameter.grad = torch.full_like(parameter, 0.3)
        twin.grad = torch.full_like(twin, 0.3)
    optimizer.step()
    default.step()
    for parameter, twin in zip(model.parameters(), plain):
        torch.testing.assert_close(parameter, twin, rtol=0, atol=1e-6)


def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_resume_matches(tmp_path):
    straight = _train(tmp_path / "a", steps=10, batch_size=8, dropout=0.3, shuffle=True)

    def interrupt(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="stopped at step 4"):
        _train(tmp_path / "b", steps=10, batch_size=8, dropout=0.3, shuffle=True, hook=interrupt)
    assert load_checkpoint(latest_checkpoint(tmp_path / "b" / "checkpoints")).step == 4
    resumed = _train(tmp_path / "b", steps=10, batch_size=8, dropout=0.3, shuffle=True)
    assert_same_tensors(straight.state_dict(), resumed.state_dict())


def test_a_changed_or_foreign_checkpoint_is_refused_naming_the_file(tmp_path):
    _train(tmp_path, steps=3, batch_size=8)
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    weights = checkpoint / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(IntegrityError, match=r"model\.safetensors: sha256 does not match"):
        load_checkpoint(checkpoint)
    weights.write_bytes(original)
    # A state.pt holding an arbitrary Python object (what an attacker's pickle would be) is not loaded.
    torch.save({"step": 3, "payload": Path("x")}, checkpoint / "state.pt")
    from workbench.fsutil import atomic_write_json, sha256_of_file

    atomic_write_json(checkpoint / "checksums.json", {item.name: sha256_of_file(item) for item in checkpoint.iterdir() if item.name != "checksums.json"})
    with pytest.raises(IntegrityError, match=r"state\.pt: cannot be read as plain training state"):
        load_checkpoint(checkpoint)


def test_random_states_round_trip_for_python_numpy_and_torch():
    seed_everything(3)
    random.random(), np.random.rand(), torch.rand(1)
    state = capture_rng_state()
    first = (random.random(), random.gauss(0, 1), float(np.random.randn()), torch.rand(3))
    seed_everything(99)
    restore_rng_state(state)
    second = (random.random(), random.gauss(0, 1), float(np.random.randn()), torch.rand(3))
    assert first[:3] == second[:3] and torch.equal(first[3], second[3])


def test_a_non_finite_loss_stops_with_a_message():
    model = nn.Linear(5, 1)
    loader = build_loader(_Regression(), batch_size=8, shuffle=False)

    def nan_step(network: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"loss": network(batch["x"]).sum() * float("nan")}

    with pytest.raises(FloatingPointError, match="training stopped at step 1: 5 optimizer steps in a row had a NaN/Inf loss"):
        Trainer(model, nan_step, loader, TrainSettings(steps=2), DistributedContext(), progress=False).fit()


def test_a_dataset_where_every_record_is_bad_is_an_error_not_a_hang():
    class AllBad(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int) -> None:
            return None  # what SafeDataset gives for a skipped record

    loader = build_loader(AllBad(), batch_size=4, shuffle=False)
    with pytest.raises(ConfigError, match="every record was skipped"):
        Trainer(nn.Linear(5, 1), _mse_step, loader, TrainSettings(steps=2), DistributedContext(), progress=False).fit()


def test_a_weights_only_final_checkpoint_resumes_the_finished_run_but_refuses_to_extend_it(tmp_path):
    def trainer(steps: int, final: str) -> tuple[nn.Module, Trainer]:
        seed_everything(0)
        model = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 1))
        settings = TrainSettings(steps=steps, batch_size=8, lr=0.05, weight_decay=0.0, checkpoint_every=2, log_every=1,
                                 keep_checkpoints=3, final_checkpoint=final)
        loader = build_loader(_Regression(), batch_size=8, shuffle=False, seed=1)
        return model, Trainer(model, _mse_step, loader, settings, DistributedContext(), precision="fp32", progress=False,
                              checkpoint_dir=tmp_path / final / "checkpoints")

    for final in ("full", "weights"):
        model, run = trainer(4, final)
        run.fit()
        states = {int(path.name.split("-")[-1]): load_checkpoint(path).state for path in (tmp_path / final / "checkpoints").glob("step-*")}
        assert sorted(states) == [2, 4] and "optimizer" in states[2]  # only the last one may leave the optimizer out
        assert ("optimizer" in states[4]) == (final == "full")
        finished = [parameter.detach().clone() for parameter in model.parameters()]
        again, rerun = trainer(4, final)
        assert rerun.fit().step == 4  # resuming the finished run: its weights, no step taken
        assert all(torch.equal(a, b) for a, b in zip(finished, again.parameters()))
    _, longer = trainer(6, "full")
    assert longer.fit().step == 6  # a full final checkpoint can be trained on
    _, longer = trainer(6, "weights")
    with pytest.raises(IntegrityError, match="weights only"):
        longer.fit()
