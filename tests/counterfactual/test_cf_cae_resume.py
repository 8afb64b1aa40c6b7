"""Kill ``workbench cae train`` with SIGKILL mid-run, resume it, and get bit-identical weights."""

from __future__ import annotations

import signal
from pathlib import Path

import yaml
from safetensors.torch import load_file

from tests.counterfactual.cf_images import write_blob_folder
from tests.helpers.kill_resume import REPO_ROOT, assert_same_tensors, run_worker
from workbench.checkpoints import latest_checkpoint

WORKER = REPO_ROOT / "tests" / "counterfactual" / "cae_worker.py"


def write_config(folder: Path, data_root: Path, name: str) -> Path:
    config = {
        "run": {"output_root": str(folder / "runs"), "name": name, "device": "cpu", "seed": 4},
        "data": {"source": "folder", "root": str(data_root), "image_size": 32, "augment": True, "eval_split": ["test"]},
        "model": {"class_dim": 8, "dim": 4, "n_downsample": 2, "n_res": 1, "mlp_dim": 16, "disc_dim": 4, "disc_layers": 3},
        "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 2, "log_every": 2},
        "save": {"name": None},
        "examples": 0,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_kill_and_resume_gives_the_same_weights(tmp_path):
    data_root = write_blob_folder(tmp_path / "blobs", per_class=10, size=32, seed=5)
    straight = run_worker(WORKER, [write_config(tmp_path, data_root, "straight"), tmp_path / "straight.safetensors"])
    assert straight.returncode == 0, straight.stderr[-3000:]

    config = write_config(tmp_path, data_root, "killed")
    killed = run_worker(WORKER, [config, tmp_path / "killed.safetensors", "--kill-at", 3])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "cae-killed"
    assert latest_checkpoint(run_dir / "checkpoints").name == "step-00000002"
    resumed = run_worker(WORKER, [config, tmp_path / "killed.safetensors", "--resume", run_dir])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in (run_dir / "run.log").read_text()
    assert_same_tensors(load_file(str(tmp_path / "straight.safetensors")), load_file(str(tmp_path / "killed.safetensors")))
