"""The example plugin of docs/plugins.md, installed from the page as a third party would and run end to end."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from workbench.cli import build_cli
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def example_source() -> str:
    match = re.search(r"<!-- example-plugin -->\n```python\n(.*?)```\n<!-- /example-plugin -->", DOCS.read_text(encoding="utf-8"), re.S)
    assert match, "docs/plugins.md lost its example plugin block"
    return match.group(1)


@pytest.fixture()
def installed_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    (site / "wb_blob_example-1.0.dist-info").mkdir(parents=True)
    (site / "wb_blob_example.py").write_text(example_source())
    (site / "wb_blob_example-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: wb-blob-example\nVersion: 1.0\n")
    (site / "wb_blob_example-1.0.dist-info" / "entry_points.txt").write_text("[workbench.plugins]\nblob = wb_blob_example\n")
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("wb_blob_example", None)
    monkeypatch.delenv("WORKBENCH_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path


def test_the_documented_plugin_is_short():
    assert len(example_source().splitlines()) <= 75


def test_the_documented_plugin_trains_scores_and_stores(installed_example: Path):
    host = create_plugin_manager()
    assert host.plugins["blob"].ok and host.models.entry("blob-linear").plugin == "blob"
    runs = installed_example / "runs"
    arguments = ["blob-train", f"run.output_root={runs}", "run.device=cpu", "run.name=first"]
    cli = build_cli(host)
    result = CliRunner().invoke(cli, arguments, obj=host, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    accuracy = float(re.search(r"accuracy ([0-9.]+)", result.output).group(1))
    assert accuracy >= 0.95  # two blobs 4 standard deviations apart
    metrics = json.loads((runs / "blob-train-first" / "metrics.json").read_text())
    assert metrics["blob"]["steps"] == 60 and metrics["blob"]["stored_model"] == "blob-linear:v1" and len(metrics["history"]) == 6
    [record] = ModelStore().list("blob-linear")
    assert record.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-3) and record.plugin == "blob"
    assert (runs / "blob-train-first" / "checkpoints").is_dir() and (runs / "blob-train-first" / "config.yaml").is_file()
    again = CliRunner().invoke(cli, arguments[:-1] + ["run.name=second"], obj=host, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    first_log, second_log = (runs / "blob-train-first" / "run.log").read_text(), (runs / "blob-train-second" / "run.log").read_text()
    assert "blob-train on cpu" in first_log and "blob-train on cpu" in second_log
    assert "blob-train-second" not in first_log  # the second run's lines go to its own log only


def test_resuming_a_finished_run_stores_no_second_version(installed_example: Path):
    host = create_plugin_manager()
    runs = installed_example / "runs"
    cli = build_cli(host)
    first = CliRunner().invoke(cli, ["blob-train", f"run.output_root={runs}", "run.device=cpu", "run.name=once"], obj=host)
    assert first.exit_code == 0, first.output
    from workbench.training_job import run_training_job

    module = sys.modules["wb_blob_example"]
    settings = module.BlobSettings(run={"output_root": runs, "device": "cpu", "name": "once"})
    outcome = run_training_job(module.BlobJob(settings, builders=None), resume=runs / "blob-train-once")
    assert outcome.stored == "blob-linear:v1" and [r.version for r in ModelStore().list("blob-linear")] == [1]


def test_store_steps_keep_and_store_earlier_checkpoints_before_the_final_model(installed_example: Path):
    from safetensors.torch import load_file

    from workbench.training_job import run_training_job

    create_plugin_manager()
    module = sys.modules["wb_blob_example"]
    runs = installed_example / "runs"
    settings = module.BlobSettings(run={"output_root": runs, "device": "cpu", "name": "steps"},
                                   train=dict(module.BlobSettings().train.model_dump(), steps=90, keep_checkpoints=1, store_steps=[30]))
    outcome = run_training_job(module.BlobJob(settings, builders=None))
    checkpoints = sorted(path.name for path in (runs / "blob-train-steps" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-00000030", "step-00000090"]  # step 60 pruned by keep_checkpoints=1, step 30 kept
    store = ModelStore()
    earlier, final = store.list("blob-linear")
    assert outcome.stored == "blob-linear:v2" == final.ref and earlier.extra["step"] == 30 and "step" not in final.extra
    assert outcome.metrics["stored_steps"] == {"30": "blob-linear:v1"} and store.resolve("blob-linear").version == 2
    checkpoint_weights = load_file(str(runs / "blob-train-steps" / "checkpoints" / "step-00000030" / "model.safetensors"))
    stored_weights = load_file(str(store.weights_path("blob-linear", earlier.version)))
    assert all(torch.equal(checkpoint_weights[key], stored_weights[key]) for key in checkpoint_weights)
    final_weights = load_file(str(store.weights_path("blob-linear", final.version)))
    assert not torch.equal(final_weights["weight"], stored_weights["weight"])  # the final model was put back


def test_store_steps_must_be_checkpoint_steps():
    from pydantic import ValidationError

    from workbench.train import TrainSettings

    with pytest.raises(ValidationError, match="multiple of checkpoint_every"):
        TrainSettings(steps=100, checkpoint_every=30, store_steps=[45])
    with pytest.raises(ValidationError, match="store_steps"):
        TrainSettings(steps=60, checkpoint_every=30, store_steps=[60])
