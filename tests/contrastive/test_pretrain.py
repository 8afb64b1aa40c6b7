"""``workbench pretrain`` and ``workbench eval`` end to end on chest phantoms, bad records included."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.helpers.kill_resume import REPO_ROOT, assert_same_tensors, run_worker
from workbench.checkpoints import latest_checkpoint
from workbench.cli import build_cli
from workbench.data.manifests import read_manifest, write_manifest
from workbench.data.phantoms import write_cxr_phantoms
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore

WORKER = REPO_ROOT / "tests" / "contrastive" / "pretrain_worker.py"
BAD_IDS = {"bad-missing", "bad-empty", "bad-placeholders", "bad-nan", "bad-corrupt"}


@pytest.fixture(scope="module")
def pair_manifest(tmp_path_factory) -> Path:
    """96 chest phantoms plus five bad records: a missing image, an empty report, a placeholder-only report,
    a NaN image and a corrupt PNG."""
    folder = tmp_path_factory.mktemp("pairs")
    records = read_manifest(write_cxr_phantoms(folder / "phantoms", 96, seed=3, size=128))
    good = records[0]
    nan_pixels = np.ones((64, 64), dtype=np.float32)
    nan_pixels[5, 5] = np.nan
    nib.save(nib.Nifti1Image(nan_pixels, np.eye(4)), folder / "nan.nii.gz")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    bad = [
        {"id": "bad-missing", "image": str(folder / "nowhere.png"), "report": good["report"], "split": "train"},
        {"id": "bad-empty", "image": good["image"], "report": "   ", "split": "train"},
        {"id": "bad-placeholders", "image": good["image"], "report": "FINDINGS: ___. IMPRESSION: ___", "split": "train"},
        {"id": "bad-nan", "image": str(folder / "nan.nii.gz"), "report": good["report"], "split": "train"},
        {"id": "bad-corrupt", "image": str(folder / "corrupt.png"), "report": good["report"], "split": "train"},
    ]
    keep = ("id", "image", "report", "labels", "split")
    return write_manifest([{key: record[key] for key in keep if key in record} for record in records] + bad, folder / "pairs.jsonl")


def tiny_config(folder: Path, manifest: Path, **changes) -> dict:
    config = {
        "run": {"output_root": str(folder / "runs"), "seed": 0, "device": "cpu"},
        "data": {"dataset": "report-manifest", "root": str(manifest), "train_split": ["train", "val"], "eval_split": ["test"], "cache": "memory"},
        "model": {"preset": "dual-vit-tiny-minilm", "options": {"image_size": 32, "context_length": 32}, "text_unlocked_layers": 0},
        "objective": {"name": "clip"},
        "train": {"steps": 6, "batch_size": 8, "lr": 0.001, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 2},
        "eval": {"probe_fractions": [1.0], "examples": 2, "batch_size": 32},
        "save": {"name": "tiny-contrastive", "store": str(folder / "store")},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return config


@pytest.fixture(scope="module")
def pretrained_run(pair_manifest, tmp_path_factory):
    """One finished pretraining run through the CLI: (run folder, config)."""
    folder = tmp_path_factory.mktemp("pretrain")
    config = tiny_config(folder, pair_manifest)
    host = create_plugin_manager()
    result = CliRunner().invoke(build_cli(host), ["pretrain", "--config", str(folder / "config.yaml")], obj=host, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    index = Path(result.output.strip().splitlines()[-1])
    return index.parent, config


def test_pretrain_writes_metrics_pages_checkpoints_and_lists_bad_records(pretrained_run):
    run, _ = pretrained_run
    metrics = json.loads((run / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 6 and metrics["objective"] == "clip"
    assert 0 < metrics["pairs"] <= 96
    for key in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@10", "chance_R@10"):
        assert 0.0 <= metrics["retrieval"][key] <= 1.0
    assert metrics["retrieval"]["i2t_R@10"] >= metrics["retrieval"]["i2t_R@1"]
    assert set(metrics["zeroshot"]) == {"cardiomegaly", "consolidation", "nodule", "pleural_effusion", "pneumothorax", "mean"}
    assert "100%" in metrics["linear_probe"]
    with open(run / "skipped.csv", newline="") as handle:
        skipped = {row["id"]: row["reason"] for row in csv.DictReader(handle)}
    # The manifest reader drops the empty report by its line (the id is not parsed from a rejected line).
    empty_line = [key for key, reason in skipped.items() if "'report': required but missing or empty" in reason]
    assert set(skipped) == BAD_IDS - {"bad-empty"} | set(empty_line) and len(empty_line) == 1, skipped
    assert "placeholder" in skipped["bad-placeholders"] and "NaN" in skipped["bad-nan"]
    assert "missing" in skipped["bad-missing"] and "corrupt.png" in skipped["bad-corrupt"]
    assert metrics["skipped_records"] == len(BAD_IDS)
    page = (run / "index.html").read_text()
    assert "Retrieval examples" in page and page.count("retrieval/") >= 2
    assert latest_checkpoint(run / "checkpoints").name == "step-00000006"
    assert list((run / "tensorboard").iterdir())


def test_the_stored_encoder_comes_back_with_its_preprocessing_and_weights(pretrained_run):
    run, config = pretrained_run
    store = ModelStore(config["save"]["store"])
    encoder, record = store.load("tiny-contrastive")
    assert record.task == "contrastive" and record.preprocessing.image_size == 32 and record.preprocessing.context_length == 32
    assert record.preprocessing.mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    trained = load_file(latest_checkpoint(run / "checkpoints") / "model.safetensors")
    stored = encoder.state_dict()
    assert torch.equal(stored["clip.visual.conv1.weight"], trained["encoder.clip.visual.conv1.weight"])
    assert record.metrics["retrieval.i2t_R@10"] == json.loads((run / "metrics.json").read_text())["pretrain"]["retrieval"]["i2t_R@10"]


def test_eval_command_scores_the_stored_encoder_and_a_random_floor(pretrained_run, pair_manifest, tmp_path):
    run, config = pretrained_run
    host = create_plugin_manager()
    cli = build_cli(host)
    eval_config = tmp_path / "eval.yaml"
    eval_config.write_text(yaml.safe_dump({"run": config["run"], "data": config["data"], "model": "tiny-contrastive:latest",
                                           "store": config["save"]["store"], "eval": {"probe_fractions": [1.0], "examples": 1}}))
    outputs = {}
    for name, extra in (("stored", []), ("random", ["random=true", "model=dual-vit-tiny-minilm", "model_options={image_size: 32, context_length: 32}"])):
        result = CliRunner().invoke(cli, ["eval", "retrieval", "--config", str(eval_config), f"run.output_root={tmp_path / name}", *extra],
                                    obj=host, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[name] = json.loads((Path(result.output.strip().splitlines()[-1]).parent / "metrics.json").read_text())["eval"]
    stored = json.loads((run / "metrics.json").read_text())["pretrain"]["retrieval"]
    assert outputs["stored"]["retrieval"]["i2t_R@10"] == pytest.approx(stored["i2t_R@10"], abs=1e-6)
    assert "zeroshot" not in outputs["stored"] and "linear_probe" not in outputs["stored"]
    assert outputs["random"]["model"].startswith("dual-vit-tiny-minilm")


def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(pair_manifest, tmp_path):
    for name in ("straight", "killed"):
        (tmp_path / name).mkdir()
        tiny_config(tmp_path / name, pair_manifest, train__steps=5, save__name=None, eval__linear_probe=False)
    straight = run_worker(WORKER, [tmp_path / "straight" / "config.yaml", tmp_path / "straight" / "run"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_worker(WORKER, [tmp_path / "killed" / "config.yaml", tmp_path / "killed" / "run", "--kill-at", "3"])
    assert killed.returncode == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "killed" / "run" / "checkpoints").name == "step-00000002"
    resumed = run_worker(WORKER, [tmp_path / "killed" / "config.yaml", tmp_path / "killed" / "run", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = [load_file(latest_checkpoint(tmp_path / name / "run" / "checkpoints") / "model.safetensors") for name in ("straight", "killed")]
    assert_same_tensors(final[0], final[1])


@pytest.mark.parametrize("objective", ["siglip", "convirt", "flair", "cosmos"])
def test_every_objective_trains_through_the_job(objective, pair_manifest, tmp_path):
    from workbench_plugins.contrastive.jobs.pretrain import run_pretrain
    from workbench_plugins.contrastive.settings import PretrainSettings
    from workbench.config import load_settings

    config = tiny_config(tmp_path, pair_manifest, objective__name=objective, train__steps=2, save__name=None,
                         eval__linear_probe=False, eval__zeroshot=False, eval__examples=0)
    settings = load_settings(PretrainSettings, tmp_path / "config.yaml")
    outcome = run_pretrain(settings, create_plugin_manager().datasets.builders, progress=False)
    assert outcome.steps == 2 and np.isfinite(outcome.history[-1]["loss"])
    assert outcome.metrics["objective"] == objective and "retrieval" in outcome.metrics
    assert config["objective"]["name"] == objective


def test_a_named_run_with_checkpoints_is_not_silently_continued(pretrained_run):
    from workbench.errors import ConfigError
    from workbench_plugins.contrastive.jobs.pretrain import run_pretrain
    from workbench_plugins.contrastive.settings import PretrainSettings
    from workbench.config import load_settings

    run, _ = pretrained_run
    settings = load_settings(PretrainSettings, run / "config.yaml", [f"run.output_root={run.parent}", f"run.name={run.name.removeprefix('pretrain-')}"])
    with pytest.raises(ConfigError, match="already holds checkpoints; continue it with --resume"):
        run_pretrain(settings, create_plugin_manager().datasets.builders, progress=False)


def test_torchrun_two_ranks_run_the_same_config_and_only_rank0_writes(pair_manifest, tmp_path):
    tiny_config(tmp_path, pair_manifest, train__steps=2, eval__linear_probe=False, eval__examples=1)
    completed = run_worker("-m", ["torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "workbench.cli",
                                  "pretrain", "--config", tmp_path / "config.yaml", "run.name=ddp"])
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert [path.name for path in runs] == ["pretrain-ddp"]  # both ranks used rank 0's folder
    run = runs[0]
    assert len(list((run / "tensorboard").iterdir())) == 1
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert {"rng-rank0.safetensors", "rng-rank1.safetensors"} <= {path.name for path in checkpoint.iterdir()}
    metrics = json.loads((run / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 2 and metrics["stored_model"] == "tiny-contrastive:v1"
