"""``workbench report train`` (explainer and editor: stored, resumable, pages) and ``workbench report`` on images, with bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tests.reporting.reporting_helpers import save_tiny_encoder
from workbench.checkpoints import latest_checkpoint
from workbench.cli import build_cli
from workbench.data.phantoms import write_cxr_phantoms
from workbench.errors import EXIT_SOME_INPUTS_FAILED, DataError, ImageReadError
from workbench.host import create_plugin_manager
from workbench.model_store import ModelStore
from workbench_plugins.reporting.features import ReportingEncoder

def _invoke(arguments: list[str]):
    host = create_plugin_manager()
    return CliRunner().invoke(build_cli(host), arguments, obj=host, catch_exceptions=False)


def _config(tmp_path: Path, reference: str, model: str, name: str) -> Path:
    config = {
        "model": model,
        "run": {"output_root": str(tmp_path / "runs"), "device": "cpu", "name": model},
        "data": {"dataset": "phantom-cxr", "root": str(tmp_path / "phantoms"), "options": {"n": 16, "size": 128, "seed": 2},
                 "image_key": "image_png", "train_split": ["train", "val"], "eval_split": ["test"]},
        "encoder": {"name": reference, "store": str(tmp_path / "store")},
        "decoder": {"width": 32, "layers": 1, "heads": 2, "ffn": 2, "max_length": 128, "draft_layers": 1},
        "edit": {"variants": 2, "changed_weight": 5.0, "kind_weights": {"invent": 0.5}},
        "train": {"steps": 12, "batch_size": 8, "lr": 0.003, "warmup_steps": 2, "checkpoint_every": 6, "log_every": 3},
        "generation": {"max_new_tokens": 24},
        "examples": 2,
        "save": {"name": name},
    }
    path = tmp_path / f"{model}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_store_resume_and_report_on_images(tmp_path):
    reference = save_tiny_encoder(tmp_path / "store")
    write_cxr_phantoms(tmp_path / "phantoms", 16, seed=2, size=128, formats=("png",))
    (tmp_path / "phantoms" / "phantom_options.json").write_text(json.dumps({"n": 16, "seed": 2, "size": 128}))
    outcomes = {}
    for model, name in (("explainer", "tiny-explainer"), ("editor", "tiny-editor")):
        result = _invoke(["report", "train", "--config", str(_config(tmp_path, reference, model, name))])
        assert result.exit_code == 0, result.output
        run = Path(result.output.strip().splitlines()[-1]).parent
        saved = json.loads((run / "metrics.json").read_text())["reporting"]
        assert saved["steps"] == 12 and saved["stored_model"] == f"{name}:v1" and saved["encoder"] == reference
        assert latest_checkpoint(run / "checkpoints").name == "step-00000012"
        assert "Held-out metrics" in (run / "index.html").read_text()
        outcomes[model] = (run, saved)
    explainer_metrics = outcomes["explainer"][1]
    assert 0.0 <= explainer_metrics["answer_accuracy"] <= 1.0 and explainer_metrics["questions"] > 0
    assert explainer_metrics["faithfulness_source"] == "finding masks"
    editor_metrics = outcomes["editor"][1]
    assert 0.0 <= editor_metrics["edit_damage_rate"] <= 1.0 and editor_metrics["injected_errors"] > 0
    assert "<del>" in (outcomes["editor"][0] / "index.html").read_text() or "<ins>" in (outcomes["editor"][0] / "index.html").read_text()

    store = ModelStore(tmp_path / "store")
    record = store.resolve("tiny-editor")
    assert record.task == "reporting" and record.extra["kind"] == "editor" and record.parent == reference
    resumed = _invoke(["report", "train", "--resume", str(outcomes["explainer"][0])])
    assert resumed.exit_code == 0, resumed.output
    assert store.resolve("tiny-explainer").version == 1  # a finished run resumed stores no duplicate

    image = tmp_path / "phantoms" / "png" / "cxr-00003.png"
    empty, long_draft = tmp_path / "empty.txt", tmp_path / "long.txt"
    empty.write_text("")
    long_draft.write_text("FINDINGS: " + "There is a small left pneumothorax. " * 40)
    common = ["--store", str(tmp_path / "store"), "--output-root", str(tmp_path / "runs"), "--device", "cpu"]
    result = _invoke(["report", "--image", str(image), "--model", "tiny-explainer", "--model", "tiny-editor", "--draft", str(empty),
                      "--question", "Is there a pneumothorax?", *common])
    assert result.exit_code == 0, result.output
    page = Path(result.output.strip().splitlines()[-1])
    written = json.loads((page.parent / "metrics.json").read_text())["results"][0]
    assert [a["question"] for a in written["answers"]] == ["Is there a pneumothorax?"]
    assert written["edit"]["from_scratch"] and "written from scratch" in page.read_text()
    result = _invoke(["report", "--image", str(image), "--model", "tiny-editor", "--draft", str(long_draft), *common])
    written = json.loads((Path(result.output.strip().splitlines()[-1]).parent / "metrics.json").read_text())
    assert written["truncated_drafts"] == 1 and written["results"][0]["edit"]["truncated_tokens"] > 200

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        _invoke(["report", "--image", str(broken), "--model", "tiny-explainer", *common])
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in [{"image": str(image), "question": "Is there cardiomegaly?"},
                                                              {"image": str(broken)}]))
    result = _invoke(["report", "--manifest", str(manifest), "--model", "tiny-explainer", *common])
    assert result.exit_code == EXIT_SOME_INPUTS_FAILED, result.output  # one of the two images skipped
    batch = json.loads((Path(result.output.strip().splitlines()[-1]).parent / "metrics.json").read_text())
    assert batch["skipped"] == 1 and len(batch["results"]) == 1

    encoder = ReportingEncoder.from_store(reference, store, device="cpu")
    with pytest.raises(DataError, match="2 channels.*takes 3"):
        encoder.prepare(np.zeros((2, 40, 40), dtype=np.float32), "two-channel.tif")
